//! Reaching a repository: its location, SSH and S3 settings, and the passphrase.
//!
//! The passphrase comes from `--password-file`, else `$VCB_PASSWORD_FILE`, else a prompt
//! on the terminal (echo off). Without a file and without a terminal the command fails
//! at once: a backup run from cron must never wait for input nobody will give.

use crate::cmd::backup::RemoteArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// How to reach and open a repository (every command and tool that takes one).
#[derive(Args, Debug, Clone, Default)]
pub struct RepoAccessArgs {
    /// File holding the repository's passphrase (default: $VCB_PASSWORD_FILE, else a
    /// prompt on the terminal).
    #[arg(long, value_name = "FILE", env = "VCB_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Open the repository with a paper key (`vcb repo key paper`) instead of a
    /// passphrase.
    #[arg(long, value_name = "FILE")]
    pub paper_key: Option<PathBuf>,
    /// S3 endpoint for s3:// repositories (default: $AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: $AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
}

/// Where a repository is and how to open it.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    /// The repository (path or URL).
    pub spec: String,
    /// Opening settings.
    pub args: RepoAccessArgs,
    /// SSH settings for sftp:// repositories.
    pub remote: backup::RemoteOptions,
}

impl RepoAccess {
    /// Access to `spec` with `remote`'s SSH key, host-key policy and repository options.
    pub fn new(spec: &str, remote: &RemoteArgs) -> RepoAccess {
        RepoAccess {
            spec: spec.to_owned(),
            args: remote.repo.clone(),
            remote: backup::RemoteOptions {
                identity_file: remote.identity.clone(),
                accept_new_host_key: remote.accept_new_host_key,
                tempdir: None,
            },
        }
    }

    fn backend(&self) -> Result<Box<dyn repo::Backend>> {
        let opts = repo::BackendOptions {
            ssh: Some(self.remote.connect_options()),
            s3: repo::backend::S3Options {
                endpoint: self.args.s3_endpoint.clone(),
                region: self.args.s3_region.clone(),
                ..Default::default()
            },
        };
        Ok(repo::backend::open(&self.spec, &opts)?)
    }

    /// Open the repository, asking for its passphrase when it is encrypted.
    pub fn open(&self) -> Result<repo::Repository> {
        let backend = self.backend()?;
        let unlock = if !repo::Repository::is_encrypted(&*backend)? {
            repo::Unlock::None
        } else if let Some(paper) = &self.args.paper_key {
            let text = std::fs::read_to_string(paper)
                .with_context(|| format!("{}: read paper key", paper.display()))?;
            repo::Unlock::PaperKey(text)
        } else {
            repo::Unlock::Passphrase(passphrase(
                self.args.password_file.as_deref(),
                &format!("Passphrase for {}: ", self.spec),
                false,
            )?)
        };
        Ok(repo::Repository::open(backend, &unlock)?)
    }

    /// Create a repository here.
    pub fn init(&self, mut opts: repo::InitOptions, encrypted: bool) -> Result<repo::Repository> {
        let backend = self.backend()?;
        if encrypted {
            opts.passphrase = Some(passphrase(
                self.args.password_file.as_deref(),
                &format!("New passphrase for {}: ", self.spec),
                true,
            )?);
        }
        Ok(repo::Repository::init(backend, &opts)?)
    }
}

/// A passphrase from `file`, else from the terminal (twice when `confirm`).
pub fn passphrase(file: Option<&std::path::Path>, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = file {
        let text = std::fs::read(f).with_context(|| format!("{}: read passphrase", f.display()))?;
        let text = text
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(&text);
        if text.is_empty() {
            bail!("{}: the passphrase file is empty", f.display());
        }
        return Ok(text.to_vec());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: give --password-file or set VCB_PASSWORD_FILE (there is no terminal to ask on)");
    }
    let first = prompt_hidden(prompt)?;
    if first.is_empty() {
        bail!("empty passphrase refused");
    }
    if confirm && prompt_hidden("Repeat it: ")? != first {
        bail!("the passphrases differ");
    }
    Ok(first)
}

/// Reads a line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("open the terminal")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    if unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
        bail!("the terminal cannot turn echo off");
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: valid descriptor and pointer.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut out = &tty;
    let _ = out.write_all(prompt.as_bytes());
    let _ = out.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    read.context("read the passphrase")?;
    Ok(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
}
