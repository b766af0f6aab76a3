//! A backup split between the host and a backup proxy (Consolidated Backup's design).
//!
//! The host's half ([`open_host_session`]) does what only the host can: lock the VM,
//! commit leftovers, run the hooks, quiesce and snapshot, and say what the backup holds
//! (a [`ProxyManifest`]: the configuration files, the static disks, the catalog without
//! its file list). The proxy's half ([`backup_from_proxy`]) reads those files and disks
//! through a [`ProxySource`] (the host agent's API and NBD exports) and writes them
//! through the same sink as a local backup, so the folder is the same. The host's half
//! removes the snapshot when the proxy says it is done, or when it is dropped.

use super::disks::DiskKind;
use super::files;
use super::sink::{FolderSink, Sink};
use super::{first_look, prepare, BackupOptions, BackupReport, Prepared};
use crate::dest::Destination;
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a proxy backup holds, as the host says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyManifest {
    /// The VM's display name.
    pub vm: String,
    /// Its BIOS UUID, if any.
    pub uuid: Option<String>,
    /// Its first known address.
    pub ip: Option<String>,
    /// The configuration files, in the order they are saved.
    pub files: Vec<String>,
    /// Every disk, in the .vmx's order.
    pub disks: Vec<ProxyDisk>,
    /// The catalog's text without its file list (the proxy adds what it wrote).
    pub catalog: String,
    /// Warnings of the host's half.
    pub warnings: Vec<String>,
}

/// One disk of a proxy backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyDisk {
    /// Its node (`scsi0:0`).
    pub node: String,
    /// Its file name in the backup.
    pub name: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `ddb.adapterType` of the disk.
    pub adapter: String,
    /// Why it is not backed up (then it has no export).
    pub skipped: Option<String>,
}

/// A configuration file the host serves to the proxy.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// Made by the backup (the .vmx naming the backup's disks, the .vmsd as it was).
    Bytes(Vec<u8>),
    /// A file of the VM, read as it is.
    Path(PathBuf),
}

/// The host's half of a proxy backup: the VM locked and snapshotted until
/// [`HostSession::finish`] (or drop) removes the snapshot.
pub struct HostSession<'h> {
    prepared: Option<Prepared<'h>>,
    manifest: ProxyManifest,
    files: Vec<(String, FileSource)>,
    disks: Vec<(String, PathBuf)>,
    read: vmdk::OpenOptions,
}

/// Quiesce and snapshot the VM `vm` for a backup by a proxy.
///
/// # Errors
/// As for [`super::backup_vm`] up to the snapshot; on error nothing is left behind.
pub fn open_host_session<'h>(
    host: &'h host::Host,
    vm: &str,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<HostSession<'h>> {
    let vm = host.find_vm(vm)?;
    first_look(host, &vm, opts)?;
    let prepared = prepare(host, &vm, opts, obs)?;
    let read = host.confined().disk_options(false);
    let mut session = HostSession {
        prepared: Some(prepared),
        manifest: ProxyManifest {
            vm: vm.name(),
            uuid: None,
            ip: None,
            files: Vec::new(),
            disks: Vec::new(),
            catalog: String::new(),
            warnings: Vec::new(),
        },
        files: Vec::new(),
        disks: Vec::new(),
        read,
    };
    // On error the session drops here, which removes the snapshot.
    session.describe(host, opts, obs)?;
    Ok(session)
}

impl HostSession<'_> {
    fn describe(
        &mut self,
        host: &host::Host,
        opts: &BackupOptions,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let Some(p) = self.prepared.as_mut() else {
            return Ok(());
        };
        let vm = &p.vm;
        let vmx = files::exported_vmx(&p.view, &p.disks)?;
        self.files.push((
            files::file_name(&vm.vmx_path)?,
            FileSource::Bytes(vmx.into_bytes()),
        ));
        if let Some(vmsd) = &p.view.vmsd_bytes() {
            self.files.push((
                files::file_name(&vm.vmsd_path())?,
                FileSource::Bytes(vmsd.to_vec()),
            ));
        }
        for path in files::other_files(host, vm, &p.view)? {
            let name = files::file_name(&path)?;
            if !self.files.iter().any(|(n, _)| *n == name) {
                self.files.push((name, FileSource::Path(path)));
            }
        }
        let sources = files::disk_sources(&p.created, &p.disks, obs, &mut p.warnings);
        let mut disks = Vec::new();
        for (plan, source) in p.disks.iter().zip(sources) {
            let skipped = match (&plan.kind, &plan.skipped, &source) {
                (_, Some(why), _) => Some(why.clone()),
                (DiskKind::PhysicalRdm { device }, None, _) => Some(format!(
                    "physical-compatibility RDM of {}: not backed up",
                    device.display()
                )),
                (_, None, None) => Some("no source".to_owned()),
                _ => None,
            };
            let adapter = match &source {
                Some(path) if skipped.is_none() => {
                    let disk = vmdk::Disk::open(path, &self.read)?;
                    vmdk::DiskSource::adapter(&disk).as_str().to_owned()
                }
                _ => String::new(),
            };
            if let (Some(path), None) = (&source, &skipped) {
                self.disks.push((plan.node.to_string(), path.clone()));
            }
            disks.push(ProxyDisk {
                node: plan.node.to_string(),
                name: plan.backup_name(),
                capacity: plan.capacity_bytes,
                adapter,
                skipped,
            });
        }
        let catalog = files::build_catalog(host, vm, &p.view, &p.disks, &[], opts, &p.live)?;
        let dict = catalog
            .to_dict()
            .map_err(|e| Error::dict(crate::CATALOG_NAME, e))?;
        self.manifest = ProxyManifest {
            vm: vm.name(),
            uuid: vm.uuid().map(|u| u.to_string()),
            ip: catalog.ipaddr.clone(),
            files: self.files.iter().map(|(n, _)| n.clone()).collect(),
            disks,
            catalog: dict.to_string(),
            warnings: p.warnings.clone(),
        };
        Ok(())
    }

    /// What the backup holds.
    pub fn manifest(&self) -> &ProxyManifest {
        &self.manifest
    }

    /// The configuration file `name`.
    pub fn file(&self, name: &str) -> Option<&FileSource> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    /// The static link to export for the disk at `node`, and how to open it.
    pub fn disk(&self, node: &str) -> Option<(&Path, &vmdk::OpenOptions)> {
        self.disks
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| (p.as_path(), &self.read))
    }

    /// Remove the snapshot (its redo logs are committed, live when the VM runs).
    ///
    /// # Errors
    /// The snapshot could not be removed (the next backup of the VM commits it).
    pub fn finish(mut self, obs: &mut dyn Observer) -> Result<()> {
        match self.prepared.take() {
            Some(p) => remove_snapshot(p, obs),
            None => Ok(()),
        }
    }
}

fn remove_snapshot(mut p: Prepared<'_>, obs: &mut dyn Observer) -> Result<()> {
    let started = std::time::Instant::now();
    p.locked.remove_snapshot(p.created.uid, &mut ())?;
    obs.event(&Event::SnapshotRemoved {
        vm: p.vm.name(),
        live: p.running,
        elapsed: started.elapsed(),
    });
    Ok(())
}

impl Drop for HostSession<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.prepared.take() {
            let name = p.vm.name();
            if let Err(e) = remove_snapshot(p, &mut ()) {
                tracing::warn!("{name}: could not remove the backup snapshot: {e}");
            }
        }
    }
}

/// The proxy's view of a host session (the host agent's client implements it).
pub trait ProxySource {
    /// What the backup holds.
    fn manifest(&self) -> &ProxyManifest;
    /// Read the configuration file `name`.
    ///
    /// # Errors
    /// The host's error, or the connection's.
    fn open_file(&mut self, name: &str) -> Result<Box<dyn Read + '_>>;
    /// Open the disk at `node` (a read-only export with its allocation).
    ///
    /// # Errors
    /// The host's error, or the connection's.
    fn open_disk(&mut self, node: &str) -> Result<Box<dyn vmdk::DiskSource>>;
    /// The proxy is done: the host removes the snapshot.
    ///
    /// # Errors
    /// The host could not remove it, or the connection failed.
    fn finish(&mut self, obs: &mut dyn Observer) -> Result<()>;
}

/// Back up, on a proxy, the VM whose host session is `src`, into `dest` (which must not
/// exist yet): the same folder a local backup writes.
///
/// # Errors
/// Destination, disk and connection errors; on error the destination this call created
/// is removed.
pub fn backup_from_proxy(
    src: &mut dyn ProxySource,
    dest: &mut dyn Destination,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let m = manifest_told(src, obs);
    dest.create()?;
    let capacity = m
        .disks
        .iter()
        .filter(|d| d.skipped.is_none())
        .map(|d| d.capacity)
        .sum();
    if let Err(e) = dest.check_local_space(capacity) {
        obs.event(&Event::Warning(e.to_string()));
    }
    let mut sink = FolderSink::new(dest);
    let catalog = copy_and_commit(src, &m, &mut sink, opts, obs)?;
    let mut warnings = m.warnings.clone();
    if let Some(cache) = &opts.name_cache {
        let uuid = m.uuid.as_deref().and_then(|u| u.parse().ok());
        if let Err(e) = host::namecache::record(cache, &m.vm, uuid.as_ref(), m.ip.as_deref()) {
            let text = format!("VM name cache {}: {e}", cache.display());
            obs.event(&Event::Warning(text.clone()));
            warnings.push(text);
        }
    }
    let bytes_written = catalog.files.iter().map(|f| f.size_bytes).sum();
    Ok(BackupReport {
        vm: m.vm.clone(),
        location: sink.location(),
        catalog,
        bytes_written,
        warnings,
        point: None,
    })
}

/// Back up, on a proxy, the VM whose host session is `src` into the repository `repo`
/// (one point; only chunks the repository lacks are stored). The report's `point` is
/// the point written.
///
/// # Errors
/// As for [`backup_from_proxy`], and repository errors; on error no point exists.
pub fn backup_from_proxy_to_repo(
    src: &mut dyn ProxySource,
    repo: &repo::Repository,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let m = manifest_told(src, obs);
    let mut sink = super::sink::RepoSink::new(repo);
    if let Err(e) = sink.begin(&m.vm, m.uuid.clone(), obs) {
        sink.discard(obs);
        return Err(e);
    }
    let catalog = copy_and_commit(src, &m, &mut sink, opts, obs)?;
    Ok(BackupReport {
        vm: m.vm.clone(),
        location: sink.location(),
        bytes_written: catalog.files.iter().map(|f| f.size_bytes).sum(),
        catalog,
        warnings: m.warnings.clone(),
        point: sink.point.take(),
    })
}

/// The session's manifest, its warnings passed on to `obs`.
fn manifest_told(src: &dyn ProxySource, obs: &mut dyn Observer) -> ProxyManifest {
    let m = src.manifest().clone();
    for w in &m.warnings {
        obs.event(&Event::Warning(w.clone()));
    }
    m
}

/// Copies everything into `sink` and commits it with the catalog; on error the sink's
/// partial work is discarded.
fn copy_and_commit(
    src: &mut dyn ProxySource,
    m: &ProxyManifest,
    sink: &mut dyn Sink,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<vmx::Catalog> {
    let result = copy_all(src, m, sink, opts, obs).and_then(|out| {
        let dict = vmx::Dict::parse(&m.catalog).map_err(|e| Error::dict(crate::CATALOG_NAME, e))?;
        let mut catalog =
            vmx::Catalog::from_dict(&dict).map_err(|e| Error::dict(crate::CATALOG_NAME, e))?;
        catalog.files = out;
        sink.commit(&catalog, obs)?;
        Ok(catalog)
    });
    if result.is_err() {
        sink.discard(obs);
    }
    result
}

/// Every file and disk into `sink`; the host's snapshot is removed once the disks are
/// read. Returns the files written.
fn copy_all(
    src: &mut dyn ProxySource,
    m: &ProxyManifest,
    sink: &mut dyn Sink,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<Vec<vmx::CatalogFile>> {
    let mut out = Vec::new();
    for name in &m.files {
        vmx::validate_relative_name(name)
            .map_err(|e| Error::unsafe_path("VM file", name.clone(), e.to_string()))?;
        let mut data = src.open_file(name)?;
        let file = sink.put_file(name, &mut data)?;
        drop(data);
        obs.event(&Event::FileCopied {
            name: name.clone(),
            size_bytes: file.size_bytes,
        });
        out.push(file);
    }
    if let Some(pause) = opts.pause_after_snapshot {
        // Test hook: the configuration files are here, the disks not yet.
        let until = std::time::Instant::now() + pause;
        while std::time::Instant::now() < until && !obs.cancelled() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for disk in &m.disks {
        if obs.cancelled() {
            return Err(Error::Cancelled);
        }
        if let Some(reason) = &disk.skipped {
            obs.event(&Event::DiskSkipped {
                node: disk.node.clone(),
                reason: reason.clone(),
            });
            continue;
        }
        vmx::validate_relative_name(&disk.name)
            .map_err(|e| Error::unsafe_path("disk", disk.name.clone(), e.to_string()))?;
        let mut source = src.open_disk(&disk.node)?;
        sink.put_source(&disk.node, &disk.name, &mut *source, opts.format, obs)?;
    }
    src.finish(obs)?;
    out.extend(sink.disks_done()?);
    Ok(out)
}

/// Commit what a proxy backup of VM `moref` left when its host's half died (the host
/// agent calls this for each session record it finds when it starts).
///
/// # Errors
/// Locking and snapshot removal errors.
pub fn clean_after_proxy(
    host: &host::Host,
    moref: host::VmRef,
    obs: &mut dyn Observer,
) -> Result<()> {
    let mut locked = host.lock_vm(moref, host::LockMode::Wait)?;
    super::consolidate_leftovers(&mut locked, obs)
}
