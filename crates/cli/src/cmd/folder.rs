//! `vcb folder` and `vcb pool`: VM folders and resource pools.

use crate::cmd::host::RootArg;
use anyhow::Result;
use clap::{Args, Subcommand};
use host::ContainerKind;

/// `vcb folder ...` or `vcb pool ...`.
#[derive(Args, Debug)]
pub struct ContainerArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(subcommand)]
    cmd: ContainerCmd,
}

#[derive(Subcommand, Debug)]
enum ContainerCmd {
    /// Create PATH (and missing parents): `/Production/Web`, or the full inventory path
    /// (`/ha-datacenter/vm/Production/Web`, `/ha-datacenter/host/HOST/Resources/Gold`).
    Create {
        /// The path.
        path: String,
    },
    /// List them as full inventory paths, the root first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `vcb folder ...` (`kind` Folder) or `vcb pool ...` (`kind` Pool).
pub fn run(kind: ContainerKind, a: ContainerArgs) -> Result<()> {
    let mut h = a.root.open()?;
    match a.cmd {
        ContainerCmd::Create { path } => {
            let created = h.create_container(kind, &path)?;
            println!(
                "Created {} {}",
                kind.what(),
                h.config().display_container(kind, &created)
            );
        }
        ContainerCmd::List { json } => {
            let paths: Vec<String> = h
                .containers(kind)
                .iter()
                .map(|p| h.config().display_container(kind, p))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&paths)?);
            } else {
                paths.iter().for_each(|p| println!("{p}"));
            }
        }
    }
    Ok(())
}
