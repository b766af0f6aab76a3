//! `vcb backup`, `vcb restore` and `vcb demo`; vcbMounter, vcbSnapAll and vcbRestore call
//! the same functions.

mod demo;
pub mod render;

use crate::tools::conf::{Overrides, ToolConf};
use anyhow::{bail, Context, Result};
use backup::{BackupOptions, ConflictPolicy, ExportFormat, RestoreOptions};
use clap::Args;
pub use demo::{demo, DemoArgs};
use render::Render;
use std::path::{Path, PathBuf};

/// Where the host lives and which configuration file applies (shared by every backup
/// command and tool).
#[derive(Args, Debug, Clone, Default)]
pub struct HostArgs {
    /// The host's root folder (default: $VCB_ROOT, else /var/lib/vcb for root, else
    /// ~/.local/share/vcb).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// backuptools.conf to use (default: $VCB_CONF, else /etc/vmware/backuptools.conf
    /// when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `vcb backup VM DEST`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The VM: a display name or a specifier (name:, uuid:, moref:, ipaddr:).
    pub vm: String,
    /// The backup folder to create (a path or file:///path); its parent must exist.
    pub dest: String,
    /// Write each disk as one monolithic sparse file instead of 2 GB extents (-M 1).
    #[arg(long)]
    pub monolithic: bool,
    /// Back up a VM with a physical-compatibility RDM, leaving that disk out.
    #[arg(long)]
    pub skip_physical_rdm: bool,
    /// Host root and configuration file.
    #[command(flatten)]
    pub host: HostArgs,
}

/// `vcb restore SRC`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup folder (a path or file:///path).
    pub src: String,
    /// An edited copy of the catalog saying where to restore (vcbRestore -a).
    #[arg(long, short = 'a', value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// What to do when a file exists or the VM is registered: prompt, overwrite, keep, abort.
    #[arg(long, short = 'l', default_value = "prompt")]
    pub policy: ConflictPolicy,
    /// Provisioning of the restored disks instead of the recorded one (thin,
    /// zeroedthick, eagerzeroedthick).
    #[arg(long, value_name = "FORMAT")]
    pub disk_format: Option<String>,
    /// Host root and configuration file.
    #[command(flatten)]
    pub host: HostArgs,
}

/// The host root: `--root`, else `$VCB_ROOT`, else the per-user default.
pub fn resolve_root(root: Option<&Path>) -> PathBuf {
    if let Some(r) = root {
        return r.to_path_buf();
    }
    if let Some(r) = std::env::var_os("VCB_ROOT").filter(|v| !v.is_empty()) {
        return PathBuf::from(r);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/vcb");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/vcb"),
        None => PathBuf::from(".vcb"),
    }
}

/// Load backuptools.conf with the command-line overrides, print its warnings, refuse
/// remote hosts, and open the host with the configured name cache.
pub fn open_host(args: &HostArgs, overrides: &Overrides) -> Result<(host::Host, ToolConf)> {
    let conf = ToolConf::load(args.config.as_deref(), overrides)?;
    for w in &conf.warnings {
        eprintln!("warning: {w}");
    }
    conf.require_local_host()?;
    let root = resolve_root(args.root.as_deref());
    let mut host =
        host::Host::open(&root).with_context(|| format!("open host {}", root.display()))?;
    if let Some(cache) = &conf.vmnamecache {
        host.set_name_cache_path(cache);
    }
    Ok((host, conf))
}

/// Options every backup gets from the environment of the tools.
pub fn backup_options(
    format: ExportFormat,
    skip_physical_rdm: bool,
    conf: &ToolConf,
) -> BackupOptions {
    // Test hook: lets the crash tests kill a backup right after its snapshot.
    let pause = std::env::var("VCB_TEST_PAUSE_AFTER_SNAPSHOT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(std::time::Duration::from_secs_f64);
    BackupOptions {
        format,
        skip_physical_rdm,
        name_cache: conf.vmnamecache.clone(),
        tool_version: format!("vcb {}", env!("CARGO_PKG_VERSION")),
        pause_after_snapshot: pause,
    }
}

/// Back up `vm` into `dest` and print what was done.
pub fn run_backup(
    host: &host::Host,
    vm: &str,
    dest: &str,
    opts: &BackupOptions,
    render: &mut Render,
) -> Result<()> {
    let mut d = backup::dest::open(dest)?;
    let report = backup::backup_vm(host, vm, d.as_mut(), opts, render)?;
    render.line(format!(
        "Backed up {} to {} ({} files, {})",
        report.vm,
        report.location,
        report.catalog.files.len(),
        render::size(report.bytes_written)
    ));
    Ok(())
}

/// Restore the backup at `src` and print what was done.
pub fn run_restore(
    host: &mut host::Host,
    src: &str,
    opts: &RestoreOptions,
    render: &mut Render,
) -> Result<()> {
    let s = backup::dest::open(src)?;
    let report = backup::restore_vm(host, s.as_ref(), opts, render)?;
    for k in &report.kept {
        render.line(format!("Kept {k}"));
    }
    match report.moref {
        Some(m) => render.line(format!(
            "Restored {} to {} (moref {m})",
            report.vm, report.vmx
        )),
        None => render.line(format!(
            "Restored {} to {} (existing registration kept)",
            report.vm, report.vmx
        )),
    }
    Ok(())
}

/// Read an alternate catalog (`-a`).
pub fn read_alternate_catalog(path: &Path) -> Result<vmx::Catalog> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: read alternate catalog", path.display()))?;
    Ok(backup::restore::parse_catalog(&bytes, path)?)
}

/// Parse a `--disk-format` value (VM provisioning only).
pub fn parse_restore_format(s: &str) -> Result<vmdk::DiskFormat> {
    use vmdk::DiskFormat as F;
    match F::parse(s)? {
        f @ (F::Thin | F::ZeroedThick | F::EagerZeroedThick) => Ok(f),
        _ => bail!("--disk-format {s:?}: restored disks are thin, zeroedthick or eagerzeroedthick"),
    }
}

/// `vcb backup`.
pub fn backup(a: BackupArgs) -> Result<()> {
    let (host, conf) = open_host(&a.host, &Overrides::default())?;
    let format = if a.monolithic {
        ExportFormat::Monolithic
    } else {
        ExportFormat::Split2Gb
    };
    let opts = backup_options(format, a.skip_physical_rdm, &conf);
    run_backup(&host, &a.vm, &a.dest, &opts, &mut Render::new(3))
}

/// `vcb restore`.
pub fn restore(a: RestoreArgs) -> Result<()> {
    let (mut host, _) = open_host(&a.host, &Overrides::default())?;
    let opts = RestoreOptions {
        alternate_catalog: a
            .catalog
            .as_deref()
            .map(read_alternate_catalog)
            .transpose()?,
        policy: a.policy,
        disk_format: a
            .disk_format
            .as_deref()
            .map(parse_restore_format)
            .transpose()?,
    };
    run_restore(&mut host, &a.src, &opts, &mut Render::new(3))
}
