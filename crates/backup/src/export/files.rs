//! Exporting a VM's files into the destination and building the catalog.

use super::disks::{self, DiskKind, DiskPlan};
use super::sink::Sink;
use super::BackupOptions;
use crate::error::{Error, Result};
use crate::hash::hash_file;
use crate::observer::{Event, Observer};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use vmx::{CatalogDisk, CatalogFile, DatastorePath};

/// What the backup needs from before the snapshot changed the .vmx and .vmsd.
pub(crate) struct ConfigSnapshot {
    /// The .vmx as it was (disks naming the links that become static).
    config: vmx::VmConfig,
    /// The .vmsd's bytes, if it existed (the user's snapshots, kept for the record).
    vmsd: Option<Vec<u8>>,
    /// The power state.
    state: vmx::PowerState,
    /// The suspended state file, if suspended.
    suspend_file: Option<PathBuf>,
}

impl ConfigSnapshot {
    /// The .vmsd's bytes as they were, if it existed.
    pub(crate) fn vmsd_bytes(&self) -> Option<&[u8]> {
        self.vmsd.as_deref()
    }

    /// Read under the VM lock, before the backup snapshot.
    pub(super) fn read(host: &host::Host, vm: &host::Vm) -> Result<ConfigSnapshot> {
        let vmsd_path = vm.vmsd_path();
        let vmsd = match std::fs::read(&vmsd_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&vmsd_path, "read", e)),
        };
        let state = match vm.power_state(host) {
            host::PowerState::PoweredOn => vmx::PowerState::PoweredOn,
            host::PowerState::PoweredOff => vmx::PowerState::PoweredOff,
            host::PowerState::Suspended => vmx::PowerState::Suspended,
        };
        Ok(ConfigSnapshot {
            config: vm.config.clone(),
            vmsd,
            state,
            suspend_file: vm.suspend_file(host),
        })
    }
}

/// Export the configuration files and every disk into `sink`; returns every file
/// written.
#[allow(clippy::too_many_arguments)]
pub(super) fn export_all(
    host: &host::Host,
    vm: &host::Vm,
    view: &ConfigSnapshot,
    created: &host::SnapshotCreated,
    plans: &[DiskPlan],
    sink: &mut dyn Sink,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Result<Vec<CatalogFile>> {
    // Before anything is sent: whether the disks' data fits at all.
    let sources = disk_sources(created, plans, obs, warnings);
    let read = host.confined().disk_options(false);
    check_free_space(&*sink, plans, &sources, &read, obs, warnings)?;
    let mut out = Vec::new();
    let vmx_name = file_name(&vm.vmx_path)?;
    put(
        sink,
        &vmx_name,
        &mut exported_vmx(view, plans)?.as_bytes(),
        obs,
        &mut out,
    )?;
    if let Some(vmsd) = &view.vmsd {
        put(
            sink,
            &file_name(&vm.vmsd_path())?,
            &mut vmsd.as_slice(),
            obs,
            &mut out,
        )?;
    }
    for path in other_files(host, vm, view)? {
        let name = file_name(&path)?;
        if out.iter().any(|f| f.name == name) {
            continue;
        }
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        put(sink, &name, &mut file, obs, &mut out)?;
    }
    if let Some(pause) = opts.pause_after_snapshot {
        // Test hook: the configuration files are in the destination, the disks not yet.
        let until = std::time::Instant::now() + pause;
        while std::time::Instant::now() < until && !obs.cancelled() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for (plan, source) in plans.iter().zip(sources) {
        if obs.cancelled() {
            return Err(Error::Cancelled);
        }
        let Some(source) = source else {
            let reason = match (&plan.kind, &plan.skipped) {
                (_, Some(why)) => why.clone(),
                (DiskKind::PhysicalRdm { device }, None) => format!(
                    "physical-compatibility RDM of {}: not backed up",
                    device.display()
                ),
                _ => continue,
            };
            obs.event(&Event::DiskSkipped {
                node: plan.node.to_string(),
                reason,
            });
            continue;
        };
        sink.put_disk(plan, &source, &read, opts, obs)?;
    }
    out.extend(sink.disks_done()?);
    for f in &out[..] {
        if f.name.contains('/') {
            return Err(Error::unsafe_path(
                "backup file",
                f.name.clone(),
                "not a plain file name",
            ));
        }
    }
    Ok(out)
}

/// The link each disk is exported from: the static link below the backup snapshot, or
/// the top of an independent disk (with a warning); `None` for a physical RDM.
pub(super) fn disk_sources(
    created: &host::SnapshotCreated,
    plans: &[DiskPlan],
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Vec<Option<PathBuf>> {
    plans
        .iter()
        .map(|plan| match &plan.kind {
            _ if plan.skipped.is_some() => None,
            DiskKind::PhysicalRdm { .. } => None,
            _ => match created.disks.iter().find(|d| d.node == plan.node) {
                Some(d) => Some(d.base.clone()),
                None => {
                    let text = format!(
                        "{}: independent disk exported without a snapshot",
                        plan.node
                    );
                    obs.event(&Event::Warning(text.clone()));
                    warnings.push(text);
                    Some(plan.top.clone())
                }
            },
        })
        .collect()
}

/// Refuse before any disk is exported when the destination cannot hold the data the
/// disks hold; warn when it cannot tell.
///
/// Disks whose every block counts as allocated whatever it holds (eagerzeroedthick,
/// virtual RDMs) are left out of the estimate: the compacted export of a mostly empty
/// one is small, and counting its capacity would refuse backups that fit.
fn check_free_space(
    sink: &dyn Sink,
    plans: &[DiskPlan],
    sources: &[Option<PathBuf>],
    read: &vmdk::OpenOptions,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let mut needed = 0u64;
    for (plan, source) in plans.iter().zip(sources) {
        let Some(source) = source else { continue };
        let fully_allocated = match &plan.kind {
            DiskKind::Virtual { format } => format == "eagerzeroedthick",
            DiskKind::VirtualRdm { .. } | DiskKind::PhysicalRdm { .. } => true,
        };
        if !fully_allocated {
            needed = needed.saturating_add(disks::allocated_bytes(source, read)?);
        }
    }
    if let Some(text) = sink.check_space(needed)? {
        obs.event(&Event::Warning(text.clone()));
        warnings.push(text);
    }
    Ok(())
}

/// Save one configuration file into the backup.
fn put(
    sink: &mut dyn Sink,
    name: &str,
    data: &mut dyn std::io::Read,
    obs: &mut dyn Observer,
    out: &mut Vec<CatalogFile>,
) -> Result<()> {
    let file = sink.put_file(name, data)?;
    obs.event(&Event::FileCopied {
        name: name.to_owned(),
        size_bytes: file.size_bytes,
    });
    out.push(file);
    Ok(())
}

/// The .vmx as saved in the backup: each exported disk names its file in the backup.
pub(super) fn exported_vmx(view: &ConfigSnapshot, plans: &[DiskPlan]) -> Result<String> {
    let mut config = view.config.clone();
    for plan in plans
        .iter()
        .filter(|p| !matches!(p.kind, DiskKind::PhysicalRdm { .. }) && p.skipped.is_none())
    {
        config
            .set_disk_file(plan.node, &plan.backup_name())
            .map_err(|e| Error::dict("exported .vmx", e))?;
    }
    Ok(config.to_string())
}

/// NVRAM, .vmxf, logs and the suspended state: everything but the .vmx, .vmsd and the
/// snapshot state files (the backup holds the current state only).
pub(super) fn other_files(
    host: &host::Host,
    vm: &host::Vm,
    view: &ConfigSnapshot,
) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = vm
        .config_files(host)?
        .into_iter()
        .filter(|p| *p != vm.vmx_path && *p != vm.vmsd_path())
        .filter(|p| p.extension().is_none_or(|e| e != "vmsn"))
        .collect();
    if let Some(vmss) = &view.suspend_file {
        files.push(vmss.clone());
    }
    Ok(files)
}

pub(super) fn file_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    vmx::validate_relative_name(name)
        .map_err(|e| Error::unsafe_path("VM file", path.display().to_string(), e.to_string()))?;
    Ok(name.to_owned())
}

/// Threads hashing exported files while the next disk converts: enough to use both
/// cores of a small host without one thread per extent of a large VM.
const HASH_THREADS: usize = 2;

/// A file to hash: its position in the result, name in the backup, and path.
type HashJob = (usize, String, PathBuf);

/// A hashed file: its position, name, and size and SHA-256.
type HashDone = (usize, String, Result<(u64, crate::hash::Sha256Sum)>);

/// Hashes exported disk files on background threads while the next disk converts.
pub(super) struct Hashing {
    jobs: Option<std::sync::mpsc::Sender<HashJob>>,
    results: std::sync::mpsc::Receiver<HashDone>,
    workers: Vec<JoinHandle<()>>,
    queued: usize,
}

impl Hashing {
    pub(super) fn new() -> Hashing {
        let (jobs, job_rx) = std::sync::mpsc::channel::<HashJob>();
        let (result_tx, results) = std::sync::mpsc::channel();
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let workers = (0..HASH_THREADS)
            .map(|_| {
                let rx = std::sync::Arc::clone(&job_rx);
                let tx = result_tx.clone();
                std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok((i, name, path)) = job else { return };
                    if tx.send((i, name, hash_file(&path))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Hashing {
            jobs: Some(jobs),
            results,
            workers,
            queued: 0,
        }
    }

    pub(super) fn spawn(&mut self, name: String, path: PathBuf) {
        if let Some(jobs) = &self.jobs {
            // The workers live until `join`: the send cannot fail before.
            let _ = jobs.send((self.queued, name, path));
            self.queued += 1;
        }
    }

    pub(super) fn join(mut self) -> Result<Vec<CatalogFile>> {
        self.jobs = None;
        let mut out: Vec<Option<CatalogFile>> = vec![None; self.queued];
        for _ in 0..self.queued {
            let (i, name, result) = self.results.recv().map_err(|_| {
                Error::io(
                    "exported disk",
                    "hash",
                    std::io::Error::other("hashing thread stopped"),
                )
            })?;
            let (size_bytes, sha256) = result?;
            out[i] = Some(CatalogFile {
                name,
                size_bytes,
                sha256,
            });
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// The catalog of a finished export.
pub(super) fn build_catalog(
    host: &host::Host,
    vm: &host::Vm,
    view: &ConfigSnapshot,
    plans: &[DiskPlan],
    files: &[CatalogFile],
    opts: &BackupOptions,
    live: &super::LiveInfo,
) -> Result<vmx::Catalog> {
    use host::ContainerKind;
    let mut c = vmx::Catalog::new(&vm.name(), view.state);
    c.uuid = vm.uuid();
    c.host = Some(host.name().to_owned());
    c.ipaddr = live
        .ips
        .first()
        .cloned()
        .or_else(|| vm.guest_ip().map(str::to_owned));
    c.folder_path = Some(
        host.config()
            .display_container(ContainerKind::Folder, &vm.folder),
    );
    c.resource_pool = Some(
        host.config()
            .display_container(ContainerKind::Pool, &vm.pool),
    );
    c.config_vmx = Some(vm.vmx.clone());
    let vm_dir = folder_path(host, &vm.dir);
    let suspend_dir = view
        .suspend_file
        .as_deref()
        .and_then(Path::parent)
        .map(|d| folder_path(host, d));
    c.config_suspend_dir = suspend_dir.flatten().or_else(|| vm_dir.clone());
    c.config_log_dir = vm_dir;
    c.timestamp_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs());
    c.tool_version = Some(opts.tool_version.clone()).filter(|v| !v.is_empty());
    // Only a guest frozen through its agent for the whole snapshot counts.
    c.quiesced = Some(live.quiesced);
    for plan in plans {
        let mut d = CatalogDisk::new(plan.node);
        d.diskname = host.datastore_path_of(&plan.base);
        d.format = Some(plan.catalog_format());
        if let Some(why) = &plan.skipped {
            d.backed_up = false;
            d.reason = Some(why.clone());
            c.disks.push(d);
            continue;
        }
        match &plan.kind {
            DiskKind::PhysicalRdm { device } => {
                d.backed_up = false;
                d.reason = Some("physical compatibility RDM".to_owned());
                d.rdm_device = Some(device.display().to_string());
            }
            DiskKind::VirtualRdm { device } => {
                d.rdm_device = Some(device.display().to_string());
                d.filename = Some(plan.backup_name());
                d.capacity_bytes = Some(plan.capacity_bytes);
            }
            DiskKind::Virtual { .. } => {
                d.filename = Some(plan.backup_name());
                d.capacity_bytes = Some(plan.capacity_bytes);
            }
        }
        c.disks.push(d);
    }
    c.files = files.to_vec();
    Ok(c)
}

/// `[ds] path/` for a folder inside a datastore.
fn folder_path(host: &host::Host, dir: &Path) -> Option<DatastorePath> {
    let dp = host.datastore_path_of(dir)?;
    if dp.path().is_empty() || dp.path().ends_with('/') {
        return Some(dp);
    }
    DatastorePath::new(dp.datastore(), &format!("{}/", dp.path())).ok()
}
