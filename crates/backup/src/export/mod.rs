//! Full-VM backup (vcbMounter `-t fullvm`, `vcb backup`).
//!
//! Order of work, each step only when the previous one succeeded:
//!
//! 1. Read the VM and classify its disks. A physical-compatibility RDM stops the backup
//!    here unless [`BackupOptions::skip_physical_rdm`] is set.
//! 2. Create the destination folder (refused if it exists) and mark it incomplete.
//! 3. Run the pre-freeze hooks; a failing hook aborts (no snapshot exists yet).
//! 4. Lock the VM folder, commit what an interrupted backup left (a snapshot named
//!    [`BACKUP_SNAPSHOT_NAME`], redo logs no snapshot owns; live, through QEMU, when the
//!    VM runs, after thawing a guest the dead backup may have left frozen).
//! 5. A running VM is quiesced through its guest agent ([`runtime::Vm::freeze`], bounded
//!    by [`BackupOptions::quiesce_timeout`]); without an agent, or with
//!    [`BackupOptions::no_quiesce`], the backup is crash-consistent.
//! 6. Take the backup snapshot (live on a running VM: its disks switch onto new redo
//!    logs): the links below the new redo logs are now static. Thaw at once, whatever
//!    the snapshot did (the freeze's watchdog thaws even if this process stalls). The
//!    catalog's `quiesced` is `yes` only when the guest was frozen for the whole
//!    snapshot.
//! 7. Run the post-thaw hooks (a failure is a warning).
//! 8. Export the configuration files (a suspended VM's .vmss too) and every disk
//!    (compacted) from the static links, while a running guest writes into the redo logs.
//! 9. Remove the backup snapshot: its redo logs are committed back (live when running).
//! 10. Write the catalog (every file's size and SHA-256) last, remove the incomplete
//!     marker, and record the VM in the name cache.
//!
//! A cancel ([`Observer::cancelled`]: SIGINT, SIGTERM) stops at the next step or
//! inside a disk copy, thaws, removes the snapshot and leaves the destination marked
//! incomplete; a thaw that fails makes the backup fail.
//!
//! If the process dies anywhere, the VM keeps every byte (its writes went to the redo
//! logs), the next backup of the VM commits the leftover snapshot before anything else,
//! and the destination keeps its incomplete marker, so restore refuses it.

mod disks;
pub(crate) mod files;
pub(crate) mod hold;
pub(crate) mod incremental;
mod live;
pub(crate) mod proxy;
mod quiesced;
pub(crate) mod sink;

pub(crate) use disks::convert_observed;
pub use disks::{DiskKind, DiskPlan, ExportFormat};

use crate::dest::Destination;
use crate::error::{Error, Result};
use crate::hooks::HookEnv;
use crate::observer::{Event, Observer};
pub(crate) use live::LiveInfo;
use live::{mark_independent, warn};
use quiesced::{pre_freeze, snapshot_quiesced, SnapshotRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The display name of the snapshot a backup takes; a leftover one is an interrupted
/// backup's and is committed by the next backup of the VM.
pub const BACKUP_SNAPSHOT_NAME: &str = host::snapshot::BACKUP_SNAPSHOT_NAME;

/// How to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Layout of exported disks (`-M`).
    pub format: ExportFormat,
    /// Back up the other disks of a VM with a physical-compatibility RDM, recording the
    /// RDM as not backed up (otherwise the backup stops before any snapshot).
    pub skip_physical_rdm: bool,
    /// The VM name cache to record the VM in (`VMNAMECACHE`, `-c`); `None`: the host's.
    pub name_cache: Option<PathBuf>,
    /// Written into the catalog's `tool version`.
    pub tool_version: String,
    /// Test hook: sleep this long after the snapshot was taken and the configuration
    /// files were exported, before the disks, so a test can kill the backup mid-export.
    pub pause_after_snapshot: Option<Duration>,
    /// Test hook: sleep this long while the guest is frozen, before the snapshot, so a
    /// test can kill the backup with the guest frozen.
    pub pause_while_frozen: Option<Duration>,
    /// Do not quiesce a running guest (the backup is crash-consistent).
    pub no_quiesce: bool,
    /// Export each disk as a child of this backup folder's disk (beside the new one),
    /// holding only what changed since it (`--incremental-from`, `--differential-from`).
    pub base_backup: Option<PathBuf>,
    /// How long a running guest may stay frozen for the snapshot; `None`:
    /// [`DEFAULT_QUIESCE_TIMEOUT`]. When it passes the guest is thawed anyway and the
    /// backup counts as not quiesced.
    pub quiesce_timeout: Option<Duration>,
}

/// How long a running guest may stay frozen by default.
pub const DEFAULT_QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The VM's display name.
    pub vm: String,
    /// The destination.
    pub location: String,
    /// The catalog as written.
    pub catalog: vmx::Catalog,
    /// Bytes written into the backup.
    pub bytes_written: u64,
    /// Warnings (also sent to the observer).
    pub warnings: Vec<String>,
    /// The repository point written (repository backups only).
    pub point: Option<repo::Point>,
}

/// Back up the VM `vm` (display name or specifier, see [`host::Host::find_vm`]) into
/// `dest`, which must not exist yet.
///
/// # Errors
/// Lookup errors, [`Error::PhysicalRdm`], [`Error::DestinationExists`],
/// [`Error::HookFailed`], snapshot, disk and file errors. On error the VM is left as it
/// was (the backup snapshot removed) and a destination this call created is removed;
/// only a killed process leaves an incomplete destination behind.
pub fn backup_vm(
    host: &host::Host,
    vm: &str,
    dest: &mut dyn Destination,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let vm = host.find_vm(vm)?;
    let disks = first_look(host, &vm, opts)?;
    let base = opts
        .base_backup
        .as_deref()
        .map(|b| incremental::BaseBackup::open(b, &*dest, &vm))
        .transpose()?;
    dest.create()?;
    // A staging folder (remote destinations) holds the converted disks until upload:
    // say up front when their full capacity might not fit.
    let capacity: u64 = disks
        .iter()
        .filter(|d| !matches!(d.kind, DiskKind::PhysicalRdm { .. }))
        .map(|d| d.capacity_bytes)
        .sum();
    if let Err(e) = dest.check_local_space(capacity) {
        obs.event(&Event::Warning(e.to_string()));
    }
    let mut sink = sink::FolderSink::new(dest).with_base(base);
    run_into(host, &vm, &mut sink, opts, obs)
}

/// Back up the VM `vm` into the repository `repo`: the same quiesce, snapshot and
/// commit path as [`backup_vm`]; disks are stored as chunks (only those the repository
/// lacks) and the point is written last. The report's `point` is the point written.
///
/// # Errors
/// As for [`backup_vm`], and repository errors. On error no point exists; chunks already
/// stored stay for the next backup to reuse.
pub fn backup_vm_to_repo(
    host: &host::Host,
    vm: &str,
    repo: &repo::Repository,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let vm = host.find_vm(vm)?;
    first_look(host, &vm, opts)?;
    let mut sink = sink::RepoSink::new(repo);
    let mut report = run_into(host, &vm, &mut sink, opts, obs)?;
    report.point = sink.point.take();
    Ok(report)
}

/// [`run`], discarding what the sink holds of a failed backup.
fn run_into(
    host: &host::Host,
    vm: &host::Vm,
    sink: &mut dyn sink::Sink,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let result = run(host, vm, sink, opts, obs);
    if result.is_err() {
        sink.discard(obs);
    }
    result
}

/// A first look before the lock, to refuse a physical RDM before anything is created.
/// A chain that cannot be opened yet is no error here: a process killed in the middle of
/// a snapshot operation leaves it for the VM lock's recovery to finish; the disks are
/// planned again under the lock, after leftovers are consolidated.
fn first_look(host: &host::Host, vm: &host::Vm, opts: &BackupOptions) -> Result<Vec<DiskPlan>> {
    match plan_disks(host, vm) {
        Ok(disks) => {
            refuse_physical_rdm(vm, &disks, opts)?;
            Ok(disks)
        }
        Err(e) => {
            tracing::info!("{}: planned under the lock instead ({e})", vm.name());
            Ok(Vec::new())
        }
    }
}

/// Classify every disk of `vm`.
fn plan_disks(host: &host::Host, vm: &host::Vm) -> Result<Vec<DiskPlan>> {
    let read = host.confined().disk_options(false);
    vm.disks(host)?
        .iter()
        .map(|d| disks::plan_disk(d.node, &d.path, d.independent, &read))
        .collect()
}

/// Refuses a physical-compatibility RDM unless it may be skipped.
fn refuse_physical_rdm(vm: &host::Vm, disks: &[DiskPlan], opts: &BackupOptions) -> Result<()> {
    if opts.skip_physical_rdm {
        return Ok(());
    }
    match disks.iter().find_map(|d| match &d.kind {
        DiskKind::PhysicalRdm { device } => Some((d, device)),
        _ => None,
    }) {
        Some((d, device)) => Err(Error::PhysicalRdm {
            vm: vm.name(),
            node: d.node.to_string(),
            device: device.clone(),
        }),
        None => Ok(()),
    }
}

/// A VM locked, its disks planned and its backup snapshot taken (the guest quiesced for
/// it when it could be): steps 3 to 7, shared by local and proxy backups.
pub(crate) struct Prepared<'h> {
    pub(crate) locked: host::LockedVm<'h>,
    pub(crate) vm: host::Vm,
    pub(crate) disks: Vec<DiskPlan>,
    pub(crate) view: files::ConfigSnapshot,
    pub(crate) created: host::SnapshotCreated,
    pub(crate) live: LiveInfo,
    pub(crate) running: bool,
    pub(crate) warnings: Vec<String>,
}

pub(crate) fn prepare<'h>(
    host: &'h host::Host,
    vm: &host::Vm,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<Prepared<'h>> {
    let env = HookEnv {
        vm_name: vm.name(),
        vm_uuid: vm.uuid().map(|u| u.to_string()).unwrap_or_default(),
        vm_folder: vm.dir.clone(),
    };
    pre_freeze(host, &env, obs)?;
    let mut locked = host.lock_vm(vm.moref, host::LockMode::Wait)?;
    consolidate_leftovers(&mut locked, obs)?;
    check_cancel(obs)?;
    // The VM as it is now, under the lock (another process may have changed it since
    // the first look, and consolidation changed its chains).
    let vm = locked.vm().clone();
    let disks = plan_disks(host, &vm)?;
    refuse_physical_rdm(&vm, &disks, opts)?;
    // Read under the lock, before the snapshot changes them.
    let view = files::ConfigSnapshot::read(host, &vm)?;
    let running = vm.power_state(host) == host::PowerState::PoweredOn;
    let mut warnings = Vec::new();
    let ips = if running {
        vm.guest_ips(host)
    } else {
        vm.guest_ip().map(str::to_owned).into_iter().collect()
    };
    let disks = mark_independent(&disks, running, obs, &mut warnings);
    let (created, quiesced) = snapshot_quiesced(
        &mut locked,
        SnapshotRequest {
            name: BACKUP_SNAPSHOT_NAME,
            description: "vcb backup in progress; removed when it ends",
            running,
            env: &env,
            host,
        },
        opts,
        obs,
        &mut warnings,
    )?;
    Ok(Prepared {
        locked,
        vm,
        disks,
        view,
        created,
        live: LiveInfo { ips, quiesced },
        running,
        warnings,
    })
}

fn run(
    host: &host::Host,
    vm: &host::Vm,
    sink: &mut dyn sink::Sink,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let name = vm.name();
    let Prepared {
        mut locked,
        vm,
        disks,
        view: snapshot_view,
        created,
        live,
        running,
        mut warnings,
    } = prepare(host, vm, opts, obs)?;
    let (vm, disks) = (&vm, &disks);
    let exported = begin_tracked(&mut locked, sink, obs, &mut warnings).and_then(|()| {
        files::export_all(
            host,
            vm,
            &snapshot_view,
            &created,
            disks,
            sink,
            opts,
            obs,
            &mut warnings,
        )
    });
    // The snapshot goes whatever happened to the export.
    let remove_started = Instant::now();
    let removed = locked.remove_snapshot(created.uid, &mut ());
    if let (Err(e), Err(_)) = (&removed, &exported) {
        let text =
            format!("could not remove the backup snapshot (the next backup commits it): {e}");
        warn(obs, &mut warnings, text);
    }
    let exported = exported?;
    removed?;
    obs.event(&Event::SnapshotRemoved {
        vm: name.clone(),
        live: running,
        elapsed: remove_started.elapsed(),
    });
    drop(locked);
    let mut catalog =
        files::build_catalog(host, vm, &snapshot_view, disks, &exported, opts, &live)?;
    sink.annotate(&mut catalog);
    sink.commit(&catalog, obs)?;
    let cache = opts
        .name_cache
        .clone()
        .unwrap_or_else(|| host.name_cache_path().to_path_buf());
    let ip = live.ips.first().map(String::as_str);
    if let Err(e) = host::namecache::record(&cache, &name, vm.uuid().as_ref(), ip) {
        warn(
            obs,
            &mut warnings,
            format!("VM name cache {}: {e}", cache.display()),
        );
    }
    let bytes_written = exported.iter().map(|f| f.size_bytes).sum();
    Ok(BackupReport {
        vm: name,
        location: sink.location(),
        catalog,
        bytes_written,
        warnings,
        point: None,
    })
}

/// Starts the sink, then takes the change-tracking checkpoint of the snapshot just taken
/// and tells the sink which areas changed since the backup it builds on. Tracking that
/// fails only makes the backup read everything.
fn begin_tracked(
    locked: &mut host::LockedVm<'_>,
    sink: &mut dyn sink::Sink,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let vm = locked.vm();
    sink.begin(&vm.name(), vm.uuid().map(|u| u.to_string()), obs)?;
    let since = |node: vmx::DiskNode| {
        sink.base_change_id(&node.to_string())
            .and_then(|id| id.parse::<vmdk::ctk::ChangeId>().ok())
    };
    let changes = match locked.tracking_checkpoint(&since) {
        Ok(changes) => changes,
        Err(e) => {
            warn(
                obs,
                warnings,
                format!("change tracking: {e}; reading everything"),
            );
            return Ok(());
        }
    };
    for c in &changes {
        let text = match (&c.changed, &c.lost) {
            (Some(areas), _) => format!(
                "changed-block tracking: reading {} changed areas ({} KiB) of {}",
                areas.len(),
                areas.iter().map(|a| a.1).sum::<u64>().div_ceil(1 << 10),
                c.node
            ),
            (None, Some(why)) => {
                format!("changed-block tracking: reading all of {} ({why})", c.node)
            }
            (None, None) => continue,
        };
        obs.event(&Event::ChangeTracking { text });
    }
    sink.set_changes(&changes);
    Ok(())
}

/// Commit what an interrupted backup left: its snapshot, and redo logs no snapshot owns.
/// A guest it may have left frozen was thawed when the lock was taken.
fn consolidate_leftovers(locked: &mut host::LockedVm<'_>, obs: &mut dyn Observer) -> Result<()> {
    if locked.thawed_leftover() {
        obs.event(&Event::ThawedLeftover {
            vm: locked.vm().name(),
        });
    }
    let leftovers: Vec<u64> = locked
        .snapshots()
        .snapshots()
        .iter()
        .filter(|s| s.display_name == BACKUP_SNAPSHOT_NAME)
        .map(|s| s.uid)
        .collect();
    let found = !leftovers.is_empty();
    for uid in leftovers {
        locked.remove_snapshot(uid, &mut ())?;
    }
    let cleanup = locked.consolidate(&mut ())?;
    if found || !cleanup.merged.is_empty() || !cleanup.deleted.is_empty() {
        obs.event(&Event::Consolidated {
            vm: locked.vm().name(),
        });
    }
    Ok(())
}

/// The marker file present while a backup may have the guest frozen (owned by the host
/// layer: [`host::snapshot::FREEZE_MARKER`]).
pub const FREEZE_MARKER: &str = host::snapshot::FREEZE_MARKER;

/// Stops with [`Error::Cancelled`] once the user asked to.
fn check_cancel(obs: &dyn Observer) -> Result<()> {
    if obs.cancelled() {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}
