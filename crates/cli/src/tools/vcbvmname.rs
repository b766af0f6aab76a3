//! `vcbVmName`: find VMs by specifier and print their identifiers.
//!
//! ```text
//! vcbVmName -s <specifier> [-h host] [-u user] [-p password] [-c cache] [-L level]
//! ```
//! For each VM found:
//! ```text
//! Found VM:
//! moref:192
//! name:Virtual Machine 37
//! uuid:564d78a1-8c1c-59b4-fa02-be14138797be
//! ipaddr:10.17.5.31
//! ```
//! `none:` prints nothing and succeeds; so does a group specifier (`powerstate:`, `any:`)
//! that finds nothing. A single-VM specifier that finds nothing fails.

use crate::tools::conf::ToolArgs;
use anyhow::{bail, Result};
use clap::Parser;
use host::{Specifier, Vm};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// vcbVmName: print the moref, name, BIOS UUID and IP address of the VMs a specifier finds.
#[derive(Parser, Debug)]
#[command(name = "vcbVmName", version, about, disable_help_flag = true)]
struct Args {
    /// ipaddr:<name or IP>, uuid:<BIOS UUID>, moref:<id or .vmx path>, name:<display
    /// name>, powerstate:on|off|suspended, any:, none:.
    #[arg(short = 's', value_name = "SPEC")]
    spec: String,
    /// VM name cache file (overrides VMNAMECACHE).
    #[arg(short = 'c', value_name = "CACHE")]
    cache: Option<PathBuf>,
    #[command(flatten)]
    tool: ToolArgs,
}

/// Entry point of the `vcbVmName` binary.
pub fn main() -> ExitCode {
    crate::output::exit_with(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    crate::logging::init(a.tool.level);
    let spec = Specifier::parse(&a.spec)?;
    let overrides = a.tool.overrides(a.cache.clone());
    let host = match crate::cmd::agent::tool_target(&a.tool, &overrides)? {
        crate::cmd::agent::Target::Local(host, _) => host,
        crate::cmd::agent::Target::Remote(agent, _) => return remote(&agent, &a.spec),
    };
    let found = spec.find(&host)?;
    if found.is_empty() && !spec.is_group() {
        bail!("no virtual machine matches {}", a.spec);
    }
    let cache = host::namecache::load(host.name_cache_path())?;
    let mut out = std::io::stdout().lock();
    for moref in found {
        let vm = host.vm(moref)?;
        out.write_all(block(&host, &vm, &cache).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The `Found VM:` block of one VM. The address is the running guest's (from its agent),
/// else the .vmx's `guestinfo.ip`, else the name cache's latest for the VM's UUID, else
/// empty.
fn block(host: &host::Host, vm: &Vm, cache: &host::namecache::NameCache) -> String {
    let uuid = vm.uuid();
    let ip = vm
        .guest_ips(host)
        .into_iter()
        .next()
        .or_else(|| uuid.and_then(|u| cache.by_uuid(&u)).map(|e| e.ip.clone()))
        .unwrap_or_default();
    format!(
        "Found VM:\nmoref:{}\nname:{}\nuuid:{}\nipaddr:{}\n",
        vm.moref,
        vm.name(),
        uuid.map(|u| u.to_string()).unwrap_or_default(),
        ip
    )
}

/// The same blocks, from a host agent.
fn remote(agent: &agent::client::Agent, spec: &str) -> Result<()> {
    let list = agent.vms(spec)?;
    if list.vms.is_empty() && !list.group {
        bail!("no virtual machine matches {spec}");
    }
    let mut out = std::io::stdout().lock();
    for vm in &list.vms {
        let text = format!(
            "Found VM:\nmoref:{}\nname:{}\nuuid:{}\nipaddr:{}\n",
            vm.moref, vm.name, vm.uuid, vm.ipaddr
        );
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
