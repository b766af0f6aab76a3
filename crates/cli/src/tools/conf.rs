//! `backuptools.conf`: the tools' configuration file, a Bourne shell script.
//!
//! The file is evaluated by `/bin/sh`, exactly as VCB did, so comments, quoting,
//! backslash escapes, `$VAR` and command substitution all work. It is evaluated safely:
//!
//! ```text
//! /bin/sh -c '. "$1" >&2 </dev/null; printf "%s\0" "VCHOST=${VCHOST-}" ... "@END"' sh /abs/path
//! ```
//!
//! The file's path is passed as a positional argument (never spliced into the script),
//! whatever the file prints goes to stderr, and the values come back NUL-separated and
//! are used as plain strings: nothing a value holds is ever evaluated again or handed to
//! a shell. Command-line options (`-h`, `-u`, `-p`, `-c`) override the file; `TEMPDIR`
//! cannot be overridden. A PASSWORD in a file others can read draws a warning; a file
//! (or a folder above it) that others can write, or owned by someone other than root
//! or the invoking user, is refused, as sshd's StrictModes refuses its configuration.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The default location of the configuration file.
pub const DEFAULT_CONF: &str = "/etc/vmware/backuptools.conf";

/// The keys read from the file, in the order they are printed back.
const KEYS: [&str; 5] = ["VCHOST", "USERNAME", "PASSWORD", "VMNAMECACHE", "TEMPDIR"];

/// End-of-output sentinel: its absence means the file stopped the shell (`exit`, error).
const END: &str = "@END";

/// Settings from backuptools.conf and the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolConf {
    /// Host or management server (`localhost` = this standalone host).
    pub vchost: Option<String>,
    /// User name for VCHOST.
    pub username: Option<String>,
    /// Password for VCHOST.
    pub password: Option<String>,
    /// The VM name cache file.
    pub vmnamecache: Option<PathBuf>,
    /// Staging space for remote destinations.
    pub tempdir: Option<PathBuf>,
    /// The file the settings came from, if any.
    pub source: Option<PathBuf>,
    /// Warnings to show the user (e.g. a readable PASSWORD).
    pub warnings: Vec<String>,
}

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `-h`.
    pub host: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-p`.
    pub password: Option<String>,
    /// `-c`.
    pub cache: Option<PathBuf>,
}

impl ToolConf {
    /// Load the configuration: `explicit` (`--config`), else `$VCB_CONF`, else
    /// [`DEFAULT_CONF`] when it exists; then apply `overrides`.
    ///
    /// # Errors
    /// An explicit file that is missing or fails to evaluate.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<ToolConf> {
        let from_env = std::env::var_os("VCB_CONF")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let mut conf = match explicit.map(Path::to_path_buf).or(from_env) {
            Some(p) => evaluate(&p)?,
            None if Path::new(DEFAULT_CONF).exists() => evaluate(Path::new(DEFAULT_CONF))?,
            None => ToolConf::default(),
        };
        conf.apply(overrides);
        Ok(conf)
    }

    /// Apply command-line overrides (TEMPDIR has none, as in VCB).
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(h) = &o.host {
            self.vchost = Some(h.clone());
        }
        if let Some(u) = &o.user {
            self.username = Some(u.clone());
        }
        if let Some(p) = &o.password {
            self.password = Some(p.clone());
        }
        if let Some(c) = &o.cache {
            self.vmnamecache = Some(c.clone());
        }
    }

    /// Fail unless VCHOST names this standalone host (unset, empty or `localhost`).
    ///
    /// # Errors
    /// For a remote host: the tools reach it through its agent (see [`Self::remote_host`]).
    pub fn require_local_host(&self) -> Result<()> {
        match self.remote_host() {
            None => Ok(()),
            Some(h) => bail!("VCHOST {h:?}: this command runs on the host itself; it cannot use a host agent yet"),
        }
    }

    /// The host agent's URL when VCHOST names another host (`None`: this machine).
    pub fn remote_host(&self) -> Option<&str> {
        match self.vchost.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(h) if is_local(h) => None,
            Some(h) => Some(h),
        }
    }
}

/// `localhost` (any spelling without a port) is this machine's host root; an address with
/// a port (`https://127.0.0.1:8443`) is an agent, even on this machine.
fn is_local(host: &str) -> bool {
    let h = host.strip_prefix("https://").unwrap_or(host);
    let h = h.trim_end_matches('/');
    matches!(
        h.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1" | "[::1]"
    )
}

/// Evaluate the file at `path` with `/bin/sh` and read the settings back.
///
/// # Errors
/// The file is missing or unreadable, the shell fails, or the file stops the shell.
pub fn evaluate(path: &Path) -> Result<ToolConf> {
    let abs =
        std::path::absolute(path).with_context(|| format!("{}: resolve path", path.display()))?;
    let meta = std::fs::metadata(&abs)
        .with_context(|| format!("{}: cannot read configuration file", abs.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: configuration file is not a regular file",
            abs.display()
        );
    }
    // The file is run by a shell as the invoking user (often root): whoever could
    // change it could run anything.
    fsio::check_private(&abs).context("backuptools.conf")?;
    // `.` of a name without a slash would search $PATH: the path is absolute.
    let printed: Vec<String> = KEYS.iter().map(|k| format!("\"{k}=${{{k}-}}\"")).collect();
    let script = format!(
        ". \"$1\" >&2 </dev/null; printf '%s\\0' {} \"{END}\"",
        printed.join(" ")
    );
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .arg("sh")
        .arg(&abs)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .with_context(|| "run /bin/sh to evaluate the configuration file".to_string())?;
    let fields: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
    let complete = fields.len() == KEYS.len() + 2 && fields[KEYS.len()] == END.as_bytes();
    if !out.status.success() || !complete {
        let err = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " ");
        bail!(
            "{}: evaluating the configuration file failed ({}){}",
            abs.display(),
            out.status,
            if err.is_empty() {
                String::new()
            } else {
                format!(": {err}")
            }
        );
    }
    let mut conf = ToolConf {
        source: Some(abs.clone()),
        ..Default::default()
    };
    for (key, raw) in KEYS.iter().zip(&fields) {
        let text = String::from_utf8_lossy(raw);
        let value = text
            .strip_prefix(&format!("{key}="))
            .unwrap_or_default()
            .to_string();
        let value = (!value.is_empty()).then_some(value);
        match *key {
            "VCHOST" => conf.vchost = value,
            "USERNAME" => conf.username = value,
            "PASSWORD" => conf.password = value,
            "VMNAMECACHE" => conf.vmnamecache = value.map(PathBuf::from),
            _ => conf.tempdir = value.map(PathBuf::from),
        }
    }
    if conf.password.is_some() && meta.permissions().mode() & 0o044 != 0 {
        conf.warnings.push(format!(
            "{} holds a PASSWORD and is readable by other users (chmod 600 it)",
            abs.display()
        ));
    }
    Ok(conf)
}

/// Options every backup tool takes: the VCB connection options (`-h`, `-u`, `-p`),
/// the log level, and where the host and configuration file are.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ToolArgs {
    /// Host: localhost (this machine's host root) or a host agent, https://HOST[:PORT]
    /// (overrides VCHOST).
    #[arg(short = 'h', value_name = "HOST")]
    pub host: Option<String>,
    /// User name (overrides USERNAME).
    #[arg(short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Password (overrides PASSWORD).
    #[arg(short = 'p', value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Log level 0 (errors only) .. 6 (everything).
    #[arg(short = 'L', value_name = "LEVEL", default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=6))]
    pub level: u8,
    /// Host root and configuration file.
    #[command(flatten)]
    pub host_args: crate::cmd::backup::HostArgs,
    /// How a remote host agent's certificate is trusted, and the password file.
    #[command(flatten)]
    pub certs: crate::cmd::agent::CertArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl ToolArgs {
    /// The command-line overrides of backuptools.conf (`cache` is vcbMounter's `-c`).
    pub fn overrides(&self, cache: Option<PathBuf>) -> Overrides {
        Overrides {
            host: self.host.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            cache,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("backuptools.conf");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn shell_syntax_works() {
        let t = tempfile::tempdir().unwrap();
        let p = conf_file(
            t.path(),
            "# comment\nVCHOST=\"localhost\"\nUSERNAME='ad''min'\nPASSWORD=\"p\\$ss word\"\nBASE=/var/cache\nVMNAMECACHE=\"$BASE/names\"\nTEMPDIR=$(echo /tmp/stage)\necho noise\n",
            0o600,
        );
        let c = evaluate(&p).unwrap();
        assert_eq!(c.vchost.as_deref(), Some("localhost"));
        assert_eq!(c.username.as_deref(), Some("admin"));
        assert_eq!(c.password.as_deref(), Some("p$ss word"));
        assert_eq!(
            c.vmnamecache.as_deref(),
            Some(Path::new("/var/cache/names"))
        );
        assert_eq!(c.tempdir.as_deref(), Some(Path::new("/tmp/stage")));
        assert!(c.warnings.is_empty());
        c.require_local_host().unwrap();
    }

    #[test]
    fn values_are_never_evaluated_again() {
        let t = tempfile::tempdir().unwrap();
        let pwned = t.path().join("pwned");
        let text = format!(
            "VCHOST='localhost; touch {0}'\nUSERNAME='$(touch {0})'\nPASSWORD='`touch {0}`'\nVMNAMECACHE='a\nb'\n",
            pwned.display()
        );
        let c = evaluate(&conf_file(t.path(), &text, 0o644)).unwrap();
        assert!(!pwned.exists());
        assert_eq!(
            c.username.as_deref(),
            Some(format!("$(touch {})", pwned.display()).as_str())
        );
        assert_eq!(c.vmnamecache.as_deref(), Some(Path::new("a\nb")));
        assert!(c
            .require_local_host()
            .unwrap_err()
            .to_string()
            .contains("this command runs on the host itself"));
        assert_eq!(c.warnings.len(), 1, "readable password warns");
    }

    #[test]
    fn exit_in_file_and_overrides() {
        let t = tempfile::tempdir().unwrap();
        let p = conf_file(t.path(), "VCHOST=esx1\nexit 0\n", 0o600);
        assert!(evaluate(&p)
            .unwrap_err()
            .to_string()
            .contains("evaluating the configuration file failed"));
        let p = conf_file(t.path(), "VCHOST=esx1\nTEMPDIR=/t\n", 0o600);
        let mut c = evaluate(&p).unwrap();
        c.apply(&Overrides {
            host: Some("localhost".into()),
            cache: Some("/c".into()),
            ..Default::default()
        });
        assert_eq!(c.vchost.as_deref(), Some("localhost"));
        assert_eq!(c.vmnamecache.as_deref(), Some(Path::new("/c")));
        assert_eq!(c.tempdir.as_deref(), Some(Path::new("/t")));
        assert!(evaluate(&t.path().join("missing")).is_err());
    }

    #[test]
    fn issue_10_a_file_others_can_change_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        for mode in [0o666, 0o620] {
            let p = conf_file(t.path(), "VCHOST=localhost\n", mode);
            let e = evaluate(&p).unwrap_err();
            assert!(format!("{e:#}").contains("StrictModes"), "{e:#}");
        }
    }
}
