//! `vcb datastore`: add, list and remove datastores.

use crate::cmd::host::RootArg;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `vcb datastore ...`.
#[derive(Args, Debug)]
pub struct DatastoreArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(subcommand)]
    cmd: DatastoreCmd,
}

#[derive(Subcommand, Debug)]
enum DatastoreCmd {
    /// Make an existing folder a datastore called NAME.
    Add {
        /// The name used in datastore paths (`[NAME] vm/vm.vmx`).
        name: String,
        /// The folder.
        path: PathBuf,
    },
    /// List the datastores: name and folder.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a datastore (its files stay); refused while VMs are registered on it.
    Remove {
        /// The name.
        name: String,
    },
}

/// Runs `vcb datastore ...`.
pub fn run(a: DatastoreArgs) -> Result<()> {
    let mut h = a.root.open()?;
    match a.cmd {
        DatastoreCmd::Add { name, path } => {
            let ds = h.add_datastore(&name, &path)?;
            println!("Added datastore {}\t{}", ds.name, ds.path.display());
        }
        DatastoreCmd::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&h.datastores())?);
            } else {
                for ds in h.datastores() {
                    println!("{}\t{}", ds.name, ds.path.display());
                }
            }
        }
        DatastoreCmd::Remove { name } => {
            h.remove_datastore(&name)?;
            println!("Removed datastore {name}");
        }
    }
    Ok(())
}
