//! `vcb repo`: the deduplicating repository (init, list, show, verify, check, prune, gc,
//! copy, export, keys). Backups into it are `vcb backup VM --repo REPO` and
//! `vcbMounter -r repo:REPO`; restores `vcb restore repo:REPO#POINT`.

pub mod access;
pub(crate) mod show;

use crate::cmd::backup::RemoteArgs;
use access::RepoAccess;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `vcb repo ...`.
#[derive(Args, Debug)]
pub struct RepoArgs {
    #[command(subcommand)]
    cmd: RepoCmd,
}

/// Options every repository command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Passphrase, paper key, S3 settings, SSH key and host-key policy.
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    fn open(&self, repo: &str) -> Result<repo::Repository> {
        RepoAccess::new(repo, &self.remote).open()
    }

    /// The same options with another passphrase file (when given).
    fn with_password_file(&self, file: Option<PathBuf>) -> RemoteArgs {
        let mut remote = self.remote.clone();
        if file.is_some() {
            remote.repo.password_file = file;
        }
        remote
    }
}

#[derive(Subcommand, Debug)]
enum RepoCmd {
    /// Create a repository (a path, sftp://user@host[:port]/path, s3://bucket/prefix).
    Init {
        repo: String,
        /// `aes-256-gcm` (default) or `none`.
        #[arg(long, default_value = "aes-256-gcm")]
        encryption: String,
        /// Chunk size in bytes (a power of two, 64 KiB to 16 MiB).
        #[arg(long, default_value_t = repo::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// zstd level of new chunks (1-19).
        #[arg(long, default_value_t = repo::DEFAULT_ZSTD_LEVEL)]
        zstd_level: i32,
        /// Share the master key of this repository (a copy target: chunks then travel
        /// between the two without being re-identified).
        #[arg(long, value_name = "REPO")]
        from: Option<String>,
        /// Passphrase file of the --from repository.
        #[arg(long, value_name = "FILE")]
        from_password_file: Option<PathBuf>,
        /// argon2id memory of the key, MiB.
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// argon2id passes.
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
        #[command(flatten)]
        common: Common,
    },
    /// List backup points (all, or one VM's by name or uuid).
    List {
        repo: String,
        vm: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Show one point: VM, time, files, disks, what it stored.
    Show {
        repo: String,
        /// A point id (or unique prefix), a VM name (its latest point) or VM@N.
        point: String,
        #[command(flatten)]
        common: Common,
    },
    /// Read and authenticate the chunks points use; report damage and what it breaks.
    Verify {
        repo: String,
        /// Points to verify (default: all).
        points: Vec<String>,
        /// Read only this share of the chunks, drawn at random (`10%`).
        #[arg(long, value_name = "N%")]
        read_data_subset: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Check the repository's structure without reading chunk data.
    Check {
        repo: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove points by a retention policy (per VM).
    Prune {
        repo: String,
        /// Only this VM's points.
        vm: Option<String>,
        #[command(flatten)]
        keep: KeepArgs,
        /// Show what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Remove chunks and indexes no point uses.
    Gc {
        repo: String,
        /// Never remove objects younger than this (`30m`, `1h`, `0s`).
        #[arg(long, default_value = "1h")]
        grace: String,
        /// Show what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Copy points into another repository (only missing chunks travel).
    Copy {
        src: String,
        dst: String,
        /// Only this VM's points.
        #[arg(long)]
        vm: Option<String>,
        /// Passphrase file of the destination (default: $VCB_DEST_PASSWORD_FILE).
        #[arg(long, value_name = "FILE", env = "VCB_DEST_PASSWORD_FILE")]
        dest_password_file: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Write a point out as a classic backup folder (catalog + VMDKs).
    Export {
        repo: String,
        point: String,
        /// The folder to create.
        dir: String,
        /// One monolithic sparse file per disk instead of 2 GB extents.
        #[arg(long)]
        monolithic: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Keys: add, list, remove, print the paper key.
    #[command(subcommand)]
    Key(KeyCmd),
}

/// `--keep-*`.
#[derive(Args, Debug, Clone, Default)]
pub struct KeepArgs {
    /// Keep the newest N points.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest point of each of the last N hours.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// ... days.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// ... ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// ... months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// ... years.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Add a passphrase (the new one from --new-password-file or the terminal).
    Add {
        repo: String,
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        /// A note shown by `key list`.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        common: Common,
    },
    /// List the keys.
    List {
        repo: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove a key (not the last one).
    Remove {
        repo: String,
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print the master key for paper (keep it in a safe: it opens the repository).
    Paper {
        repo: String,
        #[command(flatten)]
        common: Common,
    },
}

/// `vcb repo`.
pub fn run(a: RepoArgs) -> Result<()> {
    match a.cmd {
        RepoCmd::Init {
            repo,
            encryption,
            chunk_size,
            zstd_level,
            from,
            from_password_file,
            kdf_memory_mib,
            kdf_iterations,
            common,
        } => {
            let encrypted = match encryption.as_str() {
                "aes-256-gcm" => true,
                "none" => false,
                other => bail!("--encryption {other:?}: aes-256-gcm or none"),
            };
            let master_key = match &from {
                Some(src) => {
                    let remote = common.with_password_file(from_password_file.clone());
                    let r = RepoAccess::new(src, &remote).open()?;
                    match r.crypto().master_key() {
                        Some(k) => Some(k.clone()),
                        None => bail!("--from {src}: that repository is not encrypted"),
                    }
                }
                None => None,
            };
            let opts = repo::InitOptions {
                passphrase: None,
                kdf: repo::KdfParams {
                    memory_kib: kdf_memory_mib.saturating_mul(1024),
                    iterations: kdf_iterations,
                    parallelism: 1,
                },
                chunk_size,
                zstd_level,
                master_key,
            };
            let r = RepoAccess::new(&repo, &common.remote).init(opts, encrypted)?;
            show::initialized(&r, common.json)
        }
        RepoCmd::List { repo, vm, common } => {
            show::list(&common.open(&repo)?, vm.as_deref(), common.json)
        }
        RepoCmd::Show {
            repo,
            point,
            common,
        } => show::point(&common.open(&repo)?, &point, common.json),
        RepoCmd::Verify {
            repo,
            points,
            read_data_subset,
            common,
        } => {
            let percent = match read_data_subset.as_deref() {
                None => 100,
                Some(s) => parse_percent(s)?,
            };
            show::verify(&common.open(&repo)?, &points, percent, common.json)
        }
        RepoCmd::Check { repo, common } => show::check(&common.open(&repo)?, common.json),
        RepoCmd::Prune {
            repo,
            vm,
            keep,
            dry_run,
            common,
        } => {
            let policy = repo::prune::KeepPolicy {
                last: keep.keep_last,
                hourly: keep.keep_hourly,
                daily: keep.keep_daily,
                weekly: keep.keep_weekly,
                monthly: keep.keep_monthly,
                yearly: keep.keep_yearly,
            };
            show::prune(
                &common.open(&repo)?,
                vm.as_deref(),
                &policy,
                dry_run,
                common.json,
            )
        }
        RepoCmd::Gc {
            repo,
            grace,
            dry_run,
            common,
        } => {
            let grace = parse_duration(&grace)?;
            show::gc(&common.open(&repo)?, grace, dry_run, common.json)
        }
        RepoCmd::Copy {
            src,
            dst,
            vm,
            dest_password_file,
            common,
        } => {
            let s = common.open(&src)?;
            let d = RepoAccess::new(&dst, &common.with_password_file(dest_password_file)).open()?;
            show::copy(&s, &d, vm.as_deref(), common.json)
        }
        RepoCmd::Export {
            repo,
            point,
            dir,
            monolithic,
            common,
        } => {
            let r = common.open(&repo)?;
            show::export(&r, &point, &dir, monolithic, &common)
        }
        RepoCmd::Key(k) => key(k),
    }
}

fn key(k: KeyCmd) -> Result<()> {
    match k {
        KeyCmd::Add {
            repo,
            new_password_file,
            label,
            common,
        } => {
            let r = common.open(&repo)?;
            let pass = access::passphrase(new_password_file.as_deref(), "New passphrase: ", true)?;
            let kf = r.add_key(&pass, repo::KdfParams::default(), &label)?;
            show::key_added(&kf, common.json)
        }
        KeyCmd::List { repo, common } => show::keys(&common.open(&repo)?, common.json),
        KeyCmd::Remove { repo, id, common } => {
            let removed = common.open(&repo)?.remove_key(&id)?;
            println!("Removed key {}", removed.id);
            Ok(())
        }
        KeyCmd::Paper { repo, common } => {
            print!("{}", common.open(&repo)?.paper_key()?);
            Ok(())
        }
    }
}

/// `10%` or `10` → 10 (1 to 100).
fn parse_percent(s: &str) -> Result<u32> {
    let n: u32 = s.trim_end_matches('%').parse().map_err(|_| {
        anyhow::anyhow!("--read-data-subset {s:?}: expected a percentage such as 10%")
    })?;
    if !(1..=100).contains(&n) {
        bail!("--read-data-subset {s:?}: between 1% and 100%");
    }
    Ok(n)
}

/// `90s`, `30m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: expected a duration such as 30m, 1h, 0s"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => bail!("{s:?}: unknown unit (s, m, h, d)"),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_percentages_parse() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_percent("10%").unwrap(), 10);
        assert!(parse_percent("0%").is_err());
        assert!(parse_percent("101").is_err());
    }
}
