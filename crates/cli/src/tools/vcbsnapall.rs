//! `vcbSnapAll`: back up every VM a group specifier finds, one subfolder each.
//!
//! ```text
//! vcbSnapAll -a <group specifier> -r <destination root> [-M 0|1] [-h -u -p -c -L]
//! ```

use crate::cmd::backup::{backup_options, render::Render};
use crate::cmd::backup::{QuiesceArgs, RemoteArgs};
use crate::tools::conf::ToolArgs;
use anyhow::{bail, Result};
use backup::ExportFormat;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// vcbSnapAll: back up a group of VMs into <root>/<display name>.
#[derive(Parser, Debug)]
#[command(name = "vcbSnapAll", version, disable_help_flag = true)]
struct Args {
    /// The VMs: powerstate:on|off|suspended, any:, none:, or any single-VM specifier.
    #[arg(short = 'a', value_name = "SPEC")]
    spec: String,
    /// The folder that receives one backup folder per VM (must exist): a path,
    /// file:///path or scp://[user@]host[:port]:/path; or repo:REPO (one point per VM).
    #[arg(short = 'r', value_name = "ROOT")]
    dest_root: String,
    /// Disk layout: 0 = 2 GB extents (default), 1 = monolithic.
    #[arg(short = 'M', value_name = "0|1", default_value = "0", value_parser = ["0", "1"])]
    monolithic: String,
    /// VM name cache file (overrides VMNAMECACHE).
    #[arg(short = 'c', value_name = "CACHE")]
    cache: Option<PathBuf>,
    /// Back up VMs with a physical-compatibility RDM, leaving that disk out.
    #[arg(long)]
    skip_physical_rdm: bool,
    /// Quiescing of running guests (--no-quiesce, --quiesce-timeout SECS).
    #[command(flatten)]
    quiesce: QuiesceArgs,
    #[command(flatten)]
    tool: ToolArgs,
    /// SSH key (-i KEY, $VCB_SSH_KEY) and host-key policy for scp:// destinations.
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Entry point of the `vcbSnapAll` binary.
pub fn main() -> ExitCode {
    crate::output::exit_with(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    crate::logging::init(a.tool.level);
    let format = if a.monolithic == "1" {
        ExportFormat::Monolithic
    } else {
        ExportFormat::Split2Gb
    };
    let mut render = Render::new(a.tool.level);
    let overrides = a.tool.overrides(a.cache.clone());
    let (target, conf) = match crate::cmd::agent::tool_target(&a.tool, &overrides)? {
        crate::cmd::agent::Target::Local(host, conf) => (Ok(host), conf),
        crate::cmd::agent::Target::Remote(agent, conf) => (Err(agent), conf),
    };
    let mut opts = backup_options(format, a.skip_physical_rdm, &conf);
    a.quiesce.apply(&mut opts);
    let remote = a.remote.options(&conf);
    let items = match target {
        Ok(host) => local_group(&a, &host, &opts, &remote, &mut render)?,
        Err(agent) => proxy_group(&a, agent, &opts, &remote, &mut render)?,
    };
    summary(&a.spec, &items, &mut render)
}

fn local_group(
    a: &Args,
    host: &host::Host,
    opts: &backup::BackupOptions,
    remote: &backup::RemoteOptions,
    render: &mut Render,
) -> Result<Vec<backup::GroupItem>> {
    Ok(match crate::cmd::backup::repo_spec(&a.dest_root) {
        Some(spec) => {
            let repo = crate::cmd::repo::access::RepoAccess::new(spec, &a.remote).open()?;
            backup::backup_group_to_repo(host, &a.spec, &repo, opts, render)?
        }
        None => backup::backup_group_to(host, &a.spec, &a.dest_root, remote, opts, render)?,
    })
}

/// The group from a backup proxy: the agent finds the VMs, each is backed up through
/// its own session.
fn proxy_group(
    a: &Args,
    agent: std::sync::Arc<agent::client::Agent>,
    opts: &backup::BackupOptions,
    remote: &backup::RemoteOptions,
    render: &mut Render,
) -> Result<Vec<backup::GroupItem>> {
    host::Specifier::parse(&a.spec)?;
    let list = agent.vms(&a.spec)?;
    let mut found = Vec::new();
    for vm in list.vms {
        let moref: u32 = vm
            .moref
            .parse()
            .map_err(|_| anyhow::anyhow!("the agent sent a bad moref {:?}", vm.moref))?;
        found.push((host::VmRef(moref), vm.name));
    }
    let transport = a.tool.certs.transport;
    let repo = match crate::cmd::backup::repo_spec(&a.dest_root) {
        Some(spec) => Some(crate::cmd::repo::access::RepoAccess::new(spec, &a.remote).open()?),
        None => None,
    };
    let repo = repo.as_ref();
    let mut one = |m: &backup::Member,
                   d: &mut dyn backup::Destination,
                   obs: &mut dyn backup::GroupObserver| {
        let req = crate::cmd::backup::proxy_request(&format!("moref:{}", m.moref), opts);
        let mut session =
            agent::client::RemoteBackup::start(std::sync::Arc::clone(&agent), &req, transport, obs)
                .map_err(|e| backup::Error::Agent(e.to_string()))?;
        match repo {
            Some(repo) => backup::backup_from_proxy_to_repo(&mut session, repo, opts, obs),
            None => backup::backup_from_proxy(&mut session, d, opts, obs),
        }
    };
    let members = backup::remote_members(found);
    if repo.is_none() {
        return Ok(backup::backup_members_to(
            || Ok(members),
            &a.dest_root,
            remote,
            render,
            &mut one,
        )?);
    }
    // A repository groups points by VM: every member goes to the same place.
    let dest = std::path::PathBuf::from(&a.dest_root);
    let mut items = Vec::new();
    for m in &members {
        backup::GroupObserver::vm_started(render, &m.name, &dest);
        let result = one(m, &mut backup::LocalDir::new(&dest), render);
        let item = backup::GroupItem {
            vm: m.name.clone(),
            dest: dest.clone(),
            result,
        };
        backup::GroupObserver::vm_finished(render, &item);
        items.push(item);
    }
    Ok(items)
}

fn summary(spec: &str, items: &[backup::GroupItem], render: &mut Render) -> Result<()> {
    let failed: Vec<_> = items.iter().filter(|i| i.result.is_err()).collect();
    if items.is_empty() {
        render.line(format!("No VM matches {spec}"));
        return Ok(());
    }
    render.line(format!(
        "Summary: {} of {} VMs backed up",
        items.len() - failed.len(),
        items.len()
    ));
    for i in &failed {
        if let Err(e) = &i.result {
            render.line(format!("  FAILED {}: {e}", i.vm));
        }
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|i| i.vm.as_str()).collect();
        bail!(
            "{} of {} VMs failed: {}",
            failed.len(),
            items.len(),
            names.join(", ")
        );
    }
    Ok(())
}
