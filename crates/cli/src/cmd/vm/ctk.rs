//! `vcb vm ctk enable|disable|status VM`: changed-block tracking (`ctkEnabled`).

use super::lock_mode;
use anyhow::Result;
use clap::{Args, ValueEnum};
use host::Host;

/// What to do with the VM's change tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Turn tracking on (each disk starts a new tracking epoch).
    Enable,
    /// Turn tracking off and remove the tracking files.
    Disable,
    /// Show each disk's tracking: its change ID, or why it was lost.
    Status,
}

/// `vcb vm ctk`.
#[derive(Args, Debug)]
pub struct CtkArgs {
    /// enable, disable or status.
    action: Action,
    /// The VM: a display name or a specifier (name:, uuid:, moref:, ipaddr:).
    vm: String,
    /// Wait for the VM's lock instead of failing when it is busy (a backup holds it).
    #[arg(long)]
    wait: bool,
}

/// Runs `vcb vm ctk`.
pub fn run(h: &Host, a: CtkArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.wait))?;
    match a.action {
        Action::Enable | Action::Disable => {
            let on = a.action == Action::Enable;
            locked.set_change_tracking(on)?;
            let word = if on { "on" } else { "off" };
            println!("Changed-block tracking of {} is {word}", vm.name());
        }
        Action::Status => {
            for (node, text) in locked.tracking_status()? {
                println!("{node}: {text}");
            }
        }
    }
    Ok(())
}
