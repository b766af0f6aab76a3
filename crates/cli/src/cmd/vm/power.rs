//! `vcb vm power-on|power-off|shutdown|reset|suspend|resume`: power operations on a VM
//! run by the QEMU runtime, each under the VM's folder lock (`--wait` waits for it), each
//! printing one line with how long it took.

use super::lock_mode;
use anyhow::Result;
use clap::Args;
use host::Host;
use std::time::{Duration, Instant};

/// A VM and the lock policy (every power command).
#[derive(Args, Debug)]
pub struct PowerArgs {
    /// The VM: a display name or a specifier (name:, uuid:, moref:, ipaddr:).
    vm: String,
    /// Wait for the VM's lock instead of failing when it is busy (a backup holds it).
    #[arg(long)]
    wait: bool,
}

/// `vcb vm shutdown`.
#[derive(Args, Debug)]
pub struct ShutdownArgs {
    #[command(flatten)]
    target: PowerArgs,
    /// Seconds the guest may take to power off after the ACPI power button; when they
    /// pass the VM keeps running (use power-off to force).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
}

/// Which power operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Start QEMU (a suspended VM is resumed).
    PowerOn,
    /// Hard power-off.
    PowerOff,
    /// Reset.
    Reset,
    /// Suspend to the .vmss.
    Suspend,
    /// Resume from the .vmss.
    Resume,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs `op` on `a.vm` under its lock and prints one line.
pub fn power(h: &Host, op: Op, a: PowerArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let name = vm.name();
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.wait))?;
    let started = Instant::now();
    let line = match op {
        Op::PowerOn | Op::Resume => {
            let suspended = locked.power_state() == host::PowerState::Suspended;
            let opts = runtime::PowerOnOptions::default();
            let r = if op == Op::Resume {
                locked.resume(&opts)?
            } else {
                locked.power_on(&opts)?
            };
            for w in &r.command.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(why) = &r.kvm_fallback {
                eprintln!("warning: KVM unusable ({why}); running under TCG");
            }
            let verb = if suspended { "Resumed" } else { "Powered on" };
            format!(
                "{verb} {name} in {} (QEMU pid {}, {})",
                secs(r.elapsed),
                r.pid,
                r.command.accel.as_str()
            )
        }
        Op::PowerOff => {
            locked.power_off()?;
            format!("Powered off {name} in {}", secs(started.elapsed()))
        }
        Op::Reset => {
            locked.reset()?;
            format!("Reset {name} in {}", secs(started.elapsed()))
        }
        Op::Suspend => {
            let r = locked.suspend()?;
            format!(
                "Suspended {name} to {} ({}) in {}",
                r.vmss.display(),
                crate::output::human_bytes(r.size_bytes),
                secs(r.elapsed)
            )
        }
    };
    println!("{line}");
    Ok(())
}

/// `vcb vm shutdown`: the ACPI power button, then wait for the guest to power off.
pub fn shutdown(h: &Host, a: ShutdownArgs) -> Result<()> {
    let vm = h.find_vm(&a.target.vm)?;
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.target.wait))?;
    let took = locked.shutdown(Duration::from_secs(a.timeout))?;
    println!("Shut down {} in {}", vm.name(), secs(took));
    Ok(())
}
