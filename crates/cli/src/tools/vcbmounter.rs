//! `vcbMounter`: back up one VM (`-t fullvm`, over `vcb backup`'s code), or mount its
//! guest file systems read-only (`-t file`, undone by `-U`; see [`super::filemount`]).
//!
//! ```text
//! vcbMounter -a <vm identifier> -r <destination> [-t fullvm|file] [-M 0|1]
//!            [--incremental-from PREVDIR | --differential-from FULLDIR]
//!            [-i key] [--accept-new-host-key] [-h host] [-u user] [-p password] [-c cache] [-L level]
//! vcbMounter -U <mount point>
//! ```
//! `-h` is the host, as in VCB: help is `--help` only.

use crate::cmd::agent::{tool_target, Target};
use crate::cmd::backup::{backup_options, open_host, render::Render, run_backup};
use crate::cmd::backup::{QuiesceArgs, RemoteArgs};
use crate::tools::conf::ToolArgs;
use crate::tools::{filemount, filemount_proxy};
use anyhow::{bail, Result};
use backup::ExportFormat;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// vcbMounter: back up a whole VM into a folder while it keeps running.
#[derive(Parser, Debug)]
#[command(name = "vcbMounter", version, disable_help_flag = true)]
struct Args {
    /// The VM: ipaddr:, uuid:, moref:, name: (see vcbVmName).
    #[arg(short = 'a', value_name = "SPEC")]
    vm: Option<String>,
    /// Backup destination: a path, file:///path or scp://[user@]host[:port]:/path (created;
    /// its parent must exist), or repo:REPO (a deduplicating repository).
    #[arg(short = 'r', value_name = "DEST")]
    dest: Option<String>,
    /// Backup type: fullvm (default) or file.
    #[arg(short = 't', value_name = "TYPE", default_value = "fullvm")]
    kind: String,
    /// Disk layout: 0 = 2 GB extents (default), 1 = monolithic.
    #[arg(short = 'M', value_name = "0|1", default_value = "0", value_parser = ["0", "1"])]
    monolithic: String,
    /// VM name cache file (overrides VMNAMECACHE).
    #[arg(short = 'c', value_name = "CACHE")]
    cache: Option<PathBuf>,
    /// Undo a file-level mount.
    #[arg(short = 'U', value_name = "MOUNTPOINT")]
    unmount: Option<PathBuf>,
    /// The mount server of `-t file` (started by vcbMounter itself).
    #[arg(long, value_name = "RECORD", hide = true)]
    serve_file_mount: Option<PathBuf>,
    /// The mount server of `-t file` from a backup proxy.
    #[arg(long, value_name = "RECORD", hide = true)]
    serve_proxy_mount: Option<PathBuf>,
    /// Back up a VM with a physical-compatibility RDM, leaving that disk out.
    #[arg(long)]
    skip_physical_rdm: bool,
    /// Write each disk as a child of PREVDIR's disk holding only what changed since that
    /// backup (changed-block tracking; PREVDIR lies beside DEST).
    #[arg(long, value_name = "PREVDIR", conflicts_with = "differential_from")]
    incremental_from: Option<PathBuf>,
    /// Write each disk as a child of FULLDIR's disk holding what changed since that full
    /// backup (FULLDIR lies beside DEST).
    #[arg(long, value_name = "FULLDIR")]
    differential_from: Option<PathBuf>,
    /// Quiescing of running guests (--no-quiesce, --quiesce-timeout SECS).
    #[command(flatten)]
    quiesce: QuiesceArgs,
    #[command(flatten)]
    tool: ToolArgs,
    /// SSH key (-i KEY, $VCB_SSH_KEY) and host-key policy for scp:// destinations.
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Entry point of the `vcbMounter` binary.
pub fn main() -> ExitCode {
    crate::output::exit_with(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    crate::logging::init(a.tool.level);
    if !matches!(a.kind.as_str(), "fullvm" | "file") {
        bail!("-t {:?}: expected fullvm or file", a.kind);
    }
    if let Some(record) = &a.serve_file_mount {
        let (host, _) = open_host(&a.tool.host_args, &a.tool.overrides(a.cache.clone()))?;
        return filemount::serve(&host, record);
    }
    if let Some(record) = &a.serve_proxy_mount {
        return filemount_proxy::serve(record);
    }
    if let Some(dir) = &a.unmount {
        if filemount_proxy::unmount_vm(dir)? {
            return Ok(());
        }
        let (host, _) = open_host(&a.tool.host_args, &a.tool.overrides(a.cache.clone()))?;
        return filemount::unmount_vm(&host, dir, &mut Render::new(a.tool.level));
    }
    let (Some(vm), Some(dest)) = (a.vm.as_deref(), a.dest.as_deref()) else {
        bail!("-a <vm identifier> and -r <destination> are required (see --help)");
    };
    let overrides = a.tool.overrides(a.cache.clone());
    let (host, conf) = match tool_target(&a.tool, &overrides)? {
        Target::Local(host, conf) => (host, conf),
        Target::Remote(agent, conf) => return proxy(&a, agent, &conf, vm, dest),
    };
    let mut opts = backup_options(format_of(&a.monolithic), a.skip_physical_rdm, &conf);
    a.quiesce.apply(&mut opts);
    opts.base_backup = a.incremental_from.or(a.differential_from);
    if a.kind == "file" {
        return filemount::mount_vm(&host, vm, dest, &opts, &mut Render::new(a.tool.level));
    }
    let remote = a.remote.options(&conf);
    run_backup(
        &host,
        vm,
        dest,
        &a.remote,
        &remote,
        &opts,
        &mut Render::new(a.tool.level),
    )
}

fn format_of(monolithic: &str) -> ExportFormat {
    if monolithic == "1" {
        ExportFormat::Monolithic
    } else {
        ExportFormat::Split2Gb
    }
}

/// `vcbMounter` from a backup proxy: `-t file`, or a full backup through the agent.
fn proxy(
    a: &Args,
    agent: std::sync::Arc<agent::client::Agent>,
    conf: &crate::tools::conf::ToolConf,
    vm: &str,
    dest: &str,
) -> Result<()> {
    let mut opts = backup_options(format_of(&a.monolithic), a.skip_physical_rdm, conf);
    a.quiesce.apply(&mut opts);
    let mut render = Render::new(a.tool.level);
    if a.kind == "file" {
        let url = conf.remote_host().unwrap_or_default().to_owned();
        return filemount_proxy::mount_vm(agent, &a.tool.certs, &url, vm, dest, &opts, &mut render);
    }
    opts.base_backup = a.incremental_from.clone().or(a.differential_from.clone());
    let remote = a.remote.options(conf);
    crate::cmd::backup::run_proxy_backup(
        agent,
        a.tool.certs.transport,
        vm,
        dest,
        &a.remote,
        &remote,
        &opts,
        &mut render,
    )
}
