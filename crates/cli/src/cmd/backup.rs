//! `vcb backup`, `vcb restore` and `vcb demo`; vcbMounter, vcbSnapAll and vcbRestore call
//! the same functions.

mod demo;
mod demo_files;
mod demo_proxy;
mod demo_repo;
pub mod render;

use crate::tools::conf::{Overrides, ToolConf};
use anyhow::{bail, Context, Result};
use backup::{BackupOptions, ConflictPolicy, ExportFormat, RemoteOptions, RestoreOptions};
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

/// How to reach `scp://`/`sftp://` destinations (shared by every backup command and
/// tool that takes a destination or source).
#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Private key for scp:// and sftp:// destinations (default: $VCB_SSH_KEY, else the
    /// ssh config's IdentityFile, the default keys and the agent).
    #[arg(
        short = 'i',
        long = "identity",
        value_name = "KEY",
        env = "VCB_SSH_KEY"
    )]
    pub identity: Option<PathBuf>,
    /// Trust an unknown server host key and record it in ~/.ssh/known_hosts (a changed
    /// key is always refused).
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// Passphrase, paper key and S3 settings for repositories (`repo:` destinations).
    #[command(flatten)]
    pub repo: crate::cmd::repo::access::RepoAccessArgs,
}

impl RemoteArgs {
    /// The backup layer's remote options; staging folders go under `TEMPDIR` when the
    /// configuration sets it.
    pub fn options(&self, conf: &ToolConf) -> RemoteOptions {
        RemoteOptions {
            identity_file: self.identity.clone(),
            accept_new_host_key: self.accept_new_host_key,
            tempdir: conf.tempdir.clone(),
        }
    }
}

/// `vcb backup VM DEST`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The VM: a display name or a specifier (name:, uuid:, moref:, ipaddr:).
    pub vm: String,
    /// The backup folder to create (a path, file:///path or scp://[user@]host[:port]:/path;
    /// its parent must exist), or `repo:REPO`.
    #[arg(required_unless_present = "repo")]
    pub dest: Option<String>,
    /// Back up into this repository (as `repo:REPO`).
    #[arg(long, value_name = "REPO", conflicts_with = "dest")]
    pub repo: Option<String>,
    /// Write each disk as one monolithic sparse file instead of 2 GB extents (-M 1).
    #[arg(long)]
    pub monolithic: bool,
    /// Back up a VM with a physical-compatibility RDM, leaving that disk out.
    #[arg(long)]
    pub skip_physical_rdm: bool,
    /// Quiescing of a running guest.
    #[command(flatten)]
    pub quiesce: QuiesceArgs,
    /// Host root and configuration file.
    #[command(flatten)]
    pub host: HostArgs,
    /// SSH key and host-key policy for remote backups.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `vcb restore SRC`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup folder (a path, file:///path or scp://[user@]host[:port]:/path; a remote
    /// backup is downloaded to a temporary folder first), or `repo:REPO#POINT`.
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
    /// Raw device mappings, a running target, a busy target.
    #[command(flatten)]
    pub safety: RestoreSafety,
    /// Host root and configuration file.
    #[command(flatten)]
    pub host: HostArgs,
    /// SSH key and host-key policy for remote backups.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// What a restore may do beyond writing the VM's own files (vcbRestore and `vcb restore`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RestoreSafety {
    /// Recreate the raw device mappings the backup names (they give the VM a host
    /// device: without this they are listed and left out).
    #[arg(long)]
    pub allow_rdm: bool,
    /// Power off a running (or discard the suspended state of a suspended) registered
    /// VM that the restore replaces, instead of refusing.
    #[arg(long)]
    pub power_off: bool,
    /// Wait for a backup or snapshot operation holding the replaced VM's lock.
    #[arg(long)]
    pub wait: bool,
}

impl RestoreSafety {
    /// The options of a restore with these settings, the alternate catalog at `catalog`,
    /// the conflict `policy` and the disk format named `disk_format` (both restore tools).
    ///
    /// # Errors
    /// An unreadable alternate catalog; an unknown disk format.
    pub fn options(
        &self,
        catalog: Option<&Path>,
        policy: ConflictPolicy,
        disk_format: Option<&str>,
    ) -> Result<RestoreOptions> {
        Ok(RestoreOptions {
            alternate_catalog: catalog.map(read_alternate_catalog).transpose()?,
            policy,
            disk_format: disk_format.map(parse_restore_format).transpose()?,
            allow_rdm: self.allow_rdm,
            power_off: self.power_off,
            wait: self.wait,
        })
    }
}

/// `vcb --root DIR <command>`: the root when the command itself was given none.
static DEFAULT_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the root `vcb --root DIR` names (before the subcommand).
pub fn set_default_root(root: PathBuf) {
    let _ = DEFAULT_ROOT.set(root);
}

/// The host root: the command's `--root`, else `vcb --root`, else `$VCB_ROOT`, else the
/// per-user default.
pub fn resolve_root(root: Option<&Path>) -> PathBuf {
    if let Some(r) = root.or(DEFAULT_ROOT.get().map(PathBuf::as_path)) {
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
    open_host_with(args, load_conf(args, overrides)?)
}

/// backuptools.conf with the command line's overrides, its warnings printed.
pub fn load_conf(args: &HostArgs, overrides: &Overrides) -> Result<ToolConf> {
    let conf = ToolConf::load(args.config.as_deref(), overrides)?;
    for w in &conf.warnings {
        eprintln!("warning: {w}");
    }
    Ok(conf)
}

/// The local host of `conf` (which must name this machine).
pub fn open_host_with(args: &HostArgs, conf: ToolConf) -> Result<(host::Host, ToolConf)> {
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
    BackupOptions {
        format,
        skip_physical_rdm,
        name_cache: conf.vmnamecache.clone(),
        tool_version: format!("vcb {}", env!("CARGO_PKG_VERSION")),
        pause_after_snapshot: test_pause("VCB_TEST_PAUSE_AFTER_SNAPSHOT"),
        pause_while_frozen: test_pause("VCB_TEST_PAUSE_WHILE_FROZEN"),
        no_quiesce: false,
        quiesce_timeout: None,
        base_backup: None,
    }
}

/// Test hooks: let the crash tests kill a backup right after its snapshot
/// (`VCB_TEST_PAUSE_AFTER_SNAPSHOT`) or while the guest is frozen
/// (`VCB_TEST_PAUSE_WHILE_FROZEN`), in seconds. Debug builds only: a release binary
/// never reads them.
#[cfg(debug_assertions)]
fn test_pause(var: &str) -> Option<std::time::Duration> {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(std::time::Duration::from_secs_f64)
}

/// Release builds have no test hooks.
#[cfg(not(debug_assertions))]
fn test_pause(_var: &str) -> Option<std::time::Duration> {
    None
}

/// How a running guest is quiesced for its backup snapshot (every backup tool).
#[derive(Args, Debug, Clone, Default)]
pub struct QuiesceArgs {
    /// Do not freeze a running guest through its agent: the backup is crash-consistent.
    #[arg(long)]
    pub no_quiesce: bool,
    /// Seconds a running guest may stay frozen for the snapshot; when they pass it is
    /// thawed anyway and the backup counts as not quiesced.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub quiesce_timeout: u64,
}

impl QuiesceArgs {
    /// Sets the quiesce options of `opts`.
    pub fn apply(&self, opts: &mut BackupOptions) {
        opts.no_quiesce = self.no_quiesce;
        opts.quiesce_timeout = Some(std::time::Duration::from_secs(self.quiesce_timeout.max(1)));
    }
}

/// Name the option that records an unknown server host key.
fn host_key_hint(e: backup::Error) -> anyhow::Error {
    if e.is_unknown_host_key() {
        anyhow::anyhow!("{e} (pass --accept-new-host-key once the fingerprint is checked)")
    } else {
        e.into()
    }
}

/// A destination or source naming a repository: `repo:REPO` (restores add `#POINT`).
pub fn repo_spec(spec: &str) -> Option<&str> {
    spec.strip_prefix("repo:")
}

/// Back up `vm` into `dest` (a folder, URL or `repo:REPO`) and print what was done.
pub fn run_backup(
    host: &host::Host,
    vm: &str,
    dest: &str,
    remote_args: &RemoteArgs,
    remote: &RemoteOptions,
    opts: &BackupOptions,
    render: &mut Render,
) -> Result<()> {
    if let Some(spec) = repo_spec(dest) {
        if opts.base_backup.is_some() {
            bail!("--incremental-from and --differential-from apply to backup folders; a repository backup is incremental by itself");
        }
        let repo = crate::cmd::repo::access::RepoAccess::new(spec, remote_args).open()?;
        let started = std::time::Instant::now();
        let report = backup::backup_vm_to_repo(host, vm, &repo, opts, render)?;
        return repo_line(&report, spec, started, render);
    }
    let mut d = backup::dest::open_with(dest, remote).map_err(host_key_hint)?;
    let report = backup::backup_vm(host, vm, d.as_mut(), opts, render)?;
    folder_line(&report, render);
    Ok(())
}

/// The line a folder backup ends with.
fn folder_line(report: &backup::BackupReport, render: &mut Render) {
    render.line(format!(
        "Backed up {} to {} ({} files, {})",
        report.vm,
        report.location,
        report.catalog.files.len(),
        crate::output::human_bytes(report.bytes_written)
    ));
}

/// The line a repository backup ends with.
fn repo_line(
    report: &backup::BackupReport,
    spec: &str,
    started: std::time::Instant,
    render: &mut Render,
) -> Result<()> {
    let point = report.point.as_ref().map_or("?", |p| p.id.as_str());
    let stats = report.point.as_ref().map(|p| p.stats).unwrap_or_default();
    let secs = started.elapsed().as_secs_f64().max(0.001);
    render.line(format!(
        "Backed up {} to {spec} as point {point}: read {}, new {} (stored {}), reused {} in {secs:.1} s ({}/s)",
        report.vm,
        crate::output::human_bytes(stats.read_bytes),
        crate::output::human_bytes(stats.new_bytes),
        crate::output::human_bytes(stats.stored_bytes),
        crate::output::human_bytes(stats.reused_bytes),
        crate::output::human_bytes((stats.read_bytes as f64 / secs) as u64),
    ));
    Ok(())
}

/// Back up `vm` from a backup proxy: the host agent quiesces and snapshots it and
/// exports its disks over NBD; this machine writes the backup (a folder or `scp://`).
#[allow(clippy::too_many_arguments)]
pub fn run_proxy_backup(
    agent: std::sync::Arc<agent::client::Agent>,
    transport: agent::client::Transport,
    vm: &str,
    dest: &str,
    remote_args: &RemoteArgs,
    remote: &RemoteOptions,
    opts: &BackupOptions,
    render: &mut Render,
) -> Result<()> {
    if opts.base_backup.is_some() {
        bail!("--incremental-from and --differential-from are not supported from a backup proxy yet (a repository backup is incremental by itself)");
    }
    let req = proxy_request(vm, opts);
    if let Some(spec) = repo_spec(dest) {
        let repo = crate::cmd::repo::access::RepoAccess::new(spec, remote_args).open()?;
        let started = std::time::Instant::now();
        let mut session = agent::client::RemoteBackup::start(agent, &req, transport, render)?;
        let report = backup::backup_from_proxy_to_repo(&mut session, &repo, opts, render)?;
        return repo_line(&report, spec, started, render);
    }
    let mut d = backup::dest::open_with(dest, remote).map_err(host_key_hint)?;
    let mut session = agent::client::RemoteBackup::start(agent, &req, transport, render)?;
    let report = backup::backup_from_proxy(&mut session, d.as_mut(), opts, render)?;
    folder_line(&report, render);
    Ok(())
}

/// Restore the backup at `src` (a folder, URL or `repo:REPO#POINT`) and print what was
/// done.
pub fn run_restore(
    host: &mut host::Host,
    src: &str,
    remote_args: &RemoteArgs,
    remote: &RemoteOptions,
    opts: &RestoreOptions,
    render: &mut Render,
) -> Result<()> {
    let report = if let Some(spec) = repo_spec(src) {
        let Some((repo_spec, point)) = spec.rsplit_once('#') else {
            bail!("{src}: name the point: repo:REPO#POINT (a point id, or a VM name for its latest point)");
        };
        let repo = crate::cmd::repo::access::RepoAccess::new(repo_spec, remote_args).open()?;
        backup::restore_point(host, &repo, point, opts, render)?
    } else {
        let s = backup::dest::open_source(src, remote).map_err(host_key_hint)?;
        backup::restore_vm(host, s.as_ref(), opts, render)?
    };
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

/// What the agent needs to start a backup session of `vm`.
pub fn proxy_request(vm: &str, opts: &BackupOptions) -> agent::api::BackupRequest {
    agent::api::BackupRequest {
        vm: vm.to_owned(),
        no_quiesce: opts.no_quiesce,
        quiesce_timeout_secs: opts.quiesce_timeout.map(|t| t.as_secs()),
        skip_physical_rdm: opts.skip_physical_rdm,
        tool_version: opts.tool_version.clone(),
    }
}

/// Restore from a backup proxy: the backup is verified here, sent to the host agent
/// (files over HTTPS, disks over NBD), and placed and registered by the host.
pub fn run_proxy_restore(
    agent: &agent::client::Agent,
    transport: agent::client::Transport,
    src: &str,
    remote: &RemoteOptions,
    opts: &RestoreOptions,
    render: &mut Render,
) -> Result<()> {
    if repo_spec(src).is_some() {
        bail!(
            "repository points cannot be restored from a backup proxy yet: restore a backup folder"
        );
    }
    let s = backup::dest::open_source(src, remote).map_err(host_key_hint)?;
    let policy = match opts.policy {
        backup::ConflictPolicy::Prompt => "prompt",
        backup::ConflictPolicy::Overwrite => "overwrite",
        backup::ConflictPolicy::Keep => "keep",
        backup::ConflictPolicy::Abort => "abort",
    };
    let settings = agent::client::RestoreSettings {
        alternate_catalog: opts.alternate_catalog.clone(),
        policy: policy.to_owned(),
        disk_format: opts.disk_format.as_ref().map(|f| f.name()),
        allow_rdm: opts.allow_rdm,
        power_off: opts.power_off,
        wait: opts.wait,
        transport,
    };
    let done = agent.restore(s.as_ref(), &settings, render)?;
    for k in &done.kept {
        render.line(format!("Kept {k}"));
    }
    match &done.moref {
        Some(m) => render.line(format!("Restored {} to {} (moref {m})", done.vm, done.vmx)),
        None => render.line(format!(
            "Restored {} to {} (existing registration kept)",
            done.vm, done.vmx
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
    let format = if a.monolithic {
        ExportFormat::Monolithic
    } else {
        ExportFormat::Split2Gb
    };
    if let Some((agent, transport)) = crate::cmd::agent::global_agent()? {
        let conf =
            crate::tools::conf::ToolConf::load(a.host.config.as_deref(), &Overrides::default())?;
        let mut opts = backup_options(format, a.skip_physical_rdm, &conf);
        a.quiesce.apply(&mut opts);
        let dest = a
            .dest
            .clone()
            .or_else(|| a.repo.as_ref().map(|r| format!("repo:{r}")));
        let Some(dest) = dest else {
            bail!("give a destination folder or --repo REPO");
        };
        let remote = a.remote.options(&conf);
        return run_proxy_backup(
            agent,
            transport,
            &a.vm,
            &dest,
            &a.remote,
            &remote,
            &opts,
            &mut Render::new(3),
        );
    }
    let (host, conf) = open_host(&a.host, &Overrides::default())?;
    let mut opts = backup_options(format, a.skip_physical_rdm, &conf);
    a.quiesce.apply(&mut opts);
    let remote = a.remote.options(&conf);
    let dest = match (&a.dest, &a.repo) {
        (_, Some(r)) => format!("repo:{r}"),
        (Some(d), None) => d.clone(),
        (None, None) => bail!("give a destination folder or --repo REPO"),
    };
    run_backup(
        &host,
        &a.vm,
        &dest,
        &a.remote,
        &remote,
        &opts,
        &mut Render::new(3),
    )
}

/// `vcb restore`.
pub fn restore(a: RestoreArgs) -> Result<()> {
    let opts = a
        .safety
        .options(a.catalog.as_deref(), a.policy, a.disk_format.as_deref())?;
    if let Some((agent, transport)) = crate::cmd::agent::global_agent()? {
        let conf =
            crate::tools::conf::ToolConf::load(a.host.config.as_deref(), &Overrides::default())?;
        let remote = a.remote.options(&conf);
        return run_proxy_restore(
            &agent,
            transport,
            &a.src,
            &remote,
            &opts,
            &mut Render::new(3),
        );
    }
    let (mut host, conf) = open_host(&a.host, &Overrides::default())?;
    let remote = a.remote.options(&conf);
    run_restore(
        &mut host,
        &a.src,
        &a.remote,
        &remote,
        &opts,
        &mut Render::new(3),
    )
}
