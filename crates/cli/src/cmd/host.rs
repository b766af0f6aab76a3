//! `vcb host`: create a host root, show it, back up and restore its configuration.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `--root DIR`, accepted before or after the subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct RootArg {
    /// The host's root folder (default: $VCB_ROOT, else /var/lib/vcb for root, else
    /// ~/.local/share/vcb).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl RootArg {
    /// The root folder to use.
    pub fn path(&self) -> PathBuf {
        crate::cmd::backup::resolve_root(self.root.as_deref())
    }

    /// Opens the host in the root folder.
    ///
    /// # Errors
    /// The host library's error (not initialised, bad configuration...).
    pub fn open(&self) -> Result<host::Host> {
        let root = self.path();
        host::Host::open(&root).with_context(|| format!("open host {}", root.display()))
    }
}

/// `vcb host ...`.
#[derive(Args, Debug)]
pub struct HostArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(subcommand)]
    cmd: HostCmd,
}

#[derive(Subcommand, Debug)]
enum HostCmd {
    /// Create a new host root with the datastore `datastore1`.
    Init {
        /// The host's name (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the host: name, root, datastores, folders, pools, VM count.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Save the host's configuration (host.toml, inventory, datastores, folders, pools,
    /// backuptools.conf) to one file.
    ConfigBackup {
        /// The file to write (replaced if it exists).
        file: PathBuf,
    },
    /// Check a configuration backup and, if it is sound, bring it back.
    ConfigRestore {
        /// The file written by config-backup.
        file: PathBuf,
    },
    /// Show the host agent's certificate thumbprint (creating the certificate if missing).
    Cert {
        /// Make a new certificate (clients refuse it until they accept it again).
        #[arg(long)]
        replace: bool,
    },
    /// The host agent's users.
    #[command(subcommand)]
    User(crate::cmd::agent::UserCmd),
}

/// Runs `vcb host ...`.
pub fn run(a: HostArgs) -> Result<()> {
    let root = a.root.path();
    match a.cmd {
        HostCmd::Init { name } => {
            let name = name.unwrap_or_else(host::system_hostname);
            let h = host::Host::init(&root, &name)
                .with_context(|| format!("init host {}", root.display()))?;
            println!("Created host {} in {}", h.name(), h.root().display());
            for ds in h.datastores() {
                println!("  datastore {}\t{}", ds.name, ds.path.display());
            }
            crate::cmd::agent::cert(h.root(), h.name(), false)?;
        }
        HostCmd::Show { json } => show(&a.root.open()?, json)?,
        HostCmd::Cert { replace } => {
            let h = a.root.open()?;
            crate::cmd::agent::cert(h.root(), h.name(), replace)?;
        }
        HostCmd::User(cmd) => crate::cmd::agent::user(a.root.open()?.root(), cmd)?,
        HostCmd::ConfigBackup { file } => {
            let r = host::backup_config(&root, &file)?;
            println!(
                "Saved the configuration of host {} to {} ({})",
                r.host,
                file.display(),
                r.files.join(", ")
            );
        }
        HostCmd::ConfigRestore { file } => {
            let r = host::restore_config(&root, &file)?;
            println!(
                "Restored the configuration of host {} into {} ({})",
                r.host,
                root.display(),
                r.files.join(", ")
            );
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(())
}

fn show(h: &host::Host, json: bool) -> Result<()> {
    use host::ContainerKind::{Folder, Pool};
    let folders: Vec<String> = h
        .containers(Folder)
        .iter()
        .map(|f| h.config().display_container(Folder, f))
        .collect();
    let pools: Vec<String> = h
        .containers(Pool)
        .iter()
        .map(|p| h.config().display_container(Pool, p))
        .collect();
    if json {
        let v = serde_json::json!({
            "name": h.name(),
            "root": h.root(),
            "datastores": h.datastores(),
            "folders": folders,
            "pools": pools,
            "vms": h.entries().len(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("name:       {}", h.name());
    println!("root:       {}", h.root().display());
    println!("vms:        {}", h.entries().len());
    println!("datastores:");
    for ds in h.datastores() {
        println!("  {}\t{}", ds.name, ds.path.display());
    }
    println!("folders:");
    folders.iter().for_each(|f| println!("  {f}"));
    println!("pools:");
    pools.iter().for_each(|p| println!("  {p}"));
    Ok(())
}
