//! Where a backup's files go: one pipeline, two sinks.
//!
//! The backup (quiesce, snapshot, export, snapshot removal, catalog) is the same whatever
//! receives it. A [`FolderSink`] writes a classic VCB backup folder through a
//! [`Destination`] (local or SFTP: compacted VMDKs, a catalog of SHA-256s, the incomplete
//! marker); a [`RepoSink`] stores into a deduplicating repository (chunks, an index per
//! disk, the point written last).

use super::disks::{self, DiskPlan};
use super::files::Hashing;
use super::BackupOptions;
use crate::dest::{Destination, CATALOG_NAME};
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use std::io::Read;
use std::path::Path;
use vmx::CatalogFile;

/// What receives a backup.
pub(crate) trait Sink {
    /// Where it goes, for messages and the report.
    fn location(&self) -> String;

    /// The VM (display name, BIOS UUID) is about to be exported (repositories start
    /// their session).
    fn begin(&mut self, _name: &str, _uuid: Option<String>, _obs: &mut dyn Observer) -> Result<()> {
        Ok(())
    }

    /// The change ID the backup this one builds on recorded for the disk at `node`
    /// (changed-block tracking); `None`: nothing to build on, read everything.
    fn base_change_id(&self, _node: &str) -> Option<String> {
        None
    }

    /// What change tracking answered for each disk, before the disks are saved.
    fn set_changes(&mut self, _changes: &[host::snapshot::DiskChanges]) {}

    /// Adds what the sink knows of each disk to the catalog before it is written.
    fn annotate(&self, _catalog: &mut vmx::Catalog) {}

    /// Refuse early when `needed_bytes` of disk data cannot fit; `Some(note)` to warn.
    fn check_space(&self, _needed_bytes: u64) -> Result<Option<String>> {
        Ok(None)
    }

    /// Save a configuration file.
    fn put_file(&mut self, name: &str, data: &mut dyn Read) -> Result<CatalogFile>;

    /// Save the disk `plan`, reading the static chain whose top is `source`.
    fn put_disk(
        &mut self,
        plan: &DiskPlan,
        source: &Path,
        read: &vmdk::OpenOptions,
        opts: &BackupOptions,
        obs: &mut dyn Observer,
    ) -> Result<()>;

    /// Save the disk at `node` as `name`, reading `source` (a disk a proxy reads over
    /// NBD): everything it holds.
    fn put_source(
        &mut self,
        node: &str,
        name: &str,
        source: &mut dyn vmdk::DiskSource,
        format: super::ExportFormat,
        obs: &mut dyn Observer,
    ) -> Result<()>;

    /// Every disk is saved: the files they became (for the catalog).
    fn disks_done(&mut self) -> Result<Vec<CatalogFile>>;

    /// Make the backup complete with its catalog (written last).
    fn commit(&mut self, catalog: &vmx::Catalog, obs: &mut dyn Observer) -> Result<()>;

    /// The backup failed: remove what this run created that is not reusable.
    fn discard(&mut self, obs: &mut dyn Observer);
}

/// A classic backup folder.
pub(crate) struct FolderSink<'d> {
    pub(crate) dest: &'d mut dyn Destination,
    hashing: Option<Hashing>,
    streamed: Vec<CatalogFile>,
    /// The backup an incremental or differential export builds on.
    base: Option<super::incremental::BaseBackup>,
    /// Change tracking's answer per disk node.
    changes: std::collections::HashMap<String, host::snapshot::DiskChanges>,
    /// Nodes whose disks were written as children of the base's disks.
    children: std::collections::HashSet<String>,
}

impl<'d> FolderSink<'d> {
    pub(crate) fn new(dest: &'d mut dyn Destination) -> FolderSink<'d> {
        FolderSink {
            dest,
            hashing: None,
            streamed: Vec::new(),
            base: None,
            changes: std::collections::HashMap::new(),
            children: std::collections::HashSet::new(),
        }
    }

    /// Disks go out as children of `base`'s disks holding what changed since it.
    pub(crate) fn with_base(mut self, base: Option<super::incremental::BaseBackup>) -> Self {
        self.base = base;
        self
    }

    /// Writes the disk at `plan` as a child of the base's disk when change tracking
    /// answered for it; false when it must be exported whole.
    fn put_changed(
        &mut self,
        plan: &DiskPlan,
        disk: &mut vmdk::Disk,
        obs: &mut dyn Observer,
    ) -> Result<bool> {
        let node = plan.node.to_string();
        let (Some(base), Some(dir)) = (&self.base, self.dest.local_dir()) else {
            return Ok(false);
        };
        let parent = base.disk(plan.node, disk.capacity());
        let changed = self.changes.get(&node).and_then(|c| c.changed.clone());
        let (Some((parent, hint)), Some(changed)) = (parent, changed) else {
            obs.event(&Event::ChangeTracking {
                text: format!(
                    "exporting all of {node}: change tracking cannot say what changed since {}",
                    base.name
                ),
            });
            return Ok(false);
        };
        let name = plan.backup_name();
        let dst = dir.join(&name);
        let mut progress = obs.converting(&dst, &format!("changed grains, parent {hint}"));
        super::incremental::export_changed(disk, &parent, &hint, &dst, &changed, &mut *progress)?;
        drop(progress);
        private(&dst)?;
        self.hashing
            .get_or_insert_with(Hashing::new)
            .spawn(name, dst);
        self.children.insert(node);
        Ok(true)
    }
}

impl FolderSink<'_> {
    /// Save `source` as the compacted disk `name` (a local folder gets converted files
    /// hashed in the background; a remote one gets the export streamed).
    pub(crate) fn put_named(
        &mut self,
        name: &str,
        source: &mut dyn vmdk::DiskSource,
        format: super::ExportFormat,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let Some(dir) = self.dest.local_dir().map(Path::to_path_buf) else {
            // No local folder: the disk goes straight to the destination.
            let files = disks::stream_disk(source, name, format, &*self.dest, obs)?;
            self.streamed.extend(files);
            return Ok(());
        };
        let dst = dir.join(name);
        let hashing = self.hashing.get_or_insert_with(Hashing::new);
        for file in disks::export_disk(source, &dst, format, obs)? {
            private(&file)?;
            let rel = file
                .strip_prefix(&dir)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| {
                    Error::unsafe_path(
                        "exported extent",
                        file.display().to_string(),
                        "outside the backup folder",
                    )
                })?
                .to_owned();
            hashing.spawn(rel, file);
        }
        Ok(())
    }
}

impl Sink for FolderSink<'_> {
    fn location(&self) -> String {
        self.dest.location()
    }

    fn check_space(&self, needed_bytes: u64) -> Result<Option<String>> {
        self.dest.check_free_space(needed_bytes)
    }

    fn put_file(&mut self, name: &str, data: &mut dyn Read) -> Result<CatalogFile> {
        let info = self.dest.put(name, data)?;
        Ok(CatalogFile {
            name: name.to_owned(),
            size_bytes: info.size_bytes,
            sha256: info.sha256,
        })
    }

    fn put_disk(
        &mut self,
        plan: &DiskPlan,
        source: &Path,
        read: &vmdk::OpenOptions,
        opts: &BackupOptions,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let mut disk = vmdk::Disk::open(source, read)?;
        if self.put_changed(plan, &mut disk, obs)? {
            return Ok(());
        }
        self.put_named(&plan.backup_name(), &mut disk, opts.format, obs)
    }

    fn put_source(
        &mut self,
        _node: &str,
        name: &str,
        source: &mut dyn vmdk::DiskSource,
        format: super::ExportFormat,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.put_named(name, source, format, obs)
    }

    fn base_change_id(&self, node: &str) -> Option<String> {
        self.base.as_ref()?.change_id(node)
    }

    fn set_changes(&mut self, changes: &[host::snapshot::DiskChanges]) {
        for c in changes {
            self.changes.insert(c.node.to_string(), c.clone());
        }
    }

    fn annotate(&self, catalog: &mut vmx::Catalog) {
        for d in &mut catalog.disks {
            let node = d.node.to_string();
            d.change_id = self
                .changes
                .get(&node)
                .and_then(|c| c.change_id)
                .map(|id| id.to_string());
            d.parent_backup = self
                .base
                .as_ref()
                .filter(|_| self.children.contains(&node))
                .map(|b| b.name.clone());
        }
    }

    fn disks_done(&mut self) -> Result<Vec<CatalogFile>> {
        let mut out = match self.hashing.take() {
            Some(h) => h.join()?,
            None => Vec::new(),
        };
        out.append(&mut self.streamed);
        Ok(out)
    }

    fn commit(&mut self, catalog: &vmx::Catalog, _obs: &mut dyn Observer) -> Result<()> {
        let dict = catalog
            .to_dict()
            .map_err(|e| Error::dict(CATALOG_NAME, e))?;
        self.dest.flush_local()?;
        self.dest
            .put(CATALOG_NAME, &mut dict.to_string().as_bytes())?;
        self.dest.mark_complete()
    }

    fn discard(&mut self, obs: &mut dyn Observer) {
        if let Err(e) = self.dest.discard() {
            obs.event(&Event::Warning(format!(
                "could not remove the incomplete backup {}: {e}",
                self.dest.location()
            )));
        }
    }
}

/// Makes an exported file readable by its owner only (backups hold whole VMs).
fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path, "chmod 0600", e))
}

/// A deduplicating repository.
pub(crate) struct RepoSink<'r> {
    repo: &'r repo::Repository,
    writer: Option<repo::BackupWriter>,
    /// Change tracking's answer per disk node.
    changes: std::collections::HashMap<String, repo::DiskChanges>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(crate) point: Option<repo::Point>,
}

impl<'r> RepoSink<'r> {
    pub(crate) fn new(repo: &'r repo::Repository) -> RepoSink<'r> {
        RepoSink {
            repo,
            writer: None,
            changes: std::collections::HashMap::new(),
            cancel: std::sync::Arc::default(),
            point: None,
        }
    }

    /// Store `disk` (what change tracking said changed at `node`, else everything).
    fn store(
        &mut self,
        node: &str,
        name: &str,
        disk: &mut dyn vmdk::DiskSource,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let cancel = std::sync::Arc::clone(&self.cancel);
        let changes = self.changes.get(node).cloned().unwrap_or_default();
        let writer = self.writer()?;
        let mut progress = obs.storing(name);
        let mut watch = Watch {
            inner: &mut *progress,
            cancel: &cancel,
        };
        let stored = writer.put_disk_tracked(node, name, disk, &changes, &mut watch);
        drop(progress);
        match stored {
            Err(repo::Error::Cancelled) => Err(Error::Cancelled),
            other => other.map(drop).map_err(Error::from),
        }
    }

    fn writer(&mut self) -> Result<&mut repo::BackupWriter> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::Repo(repo::Error::InvalidArgument("no backup session".into())))
    }
}

impl Sink for RepoSink<'_> {
    fn location(&self) -> String {
        self.repo.location()
    }

    fn begin(&mut self, name: &str, uuid: Option<String>, obs: &mut dyn Observer) -> Result<()> {
        let info = repo::VmInfo {
            name: name.to_owned(),
            uuid,
        };
        let cancel = std::sync::Arc::clone(&self.cancel);
        if obs.cancelled() {
            return Err(Error::Cancelled);
        }
        let writer = repo::BackupWriter::begin(
            self.repo,
            info,
            &repo::WriterOptions::default(),
            Box::new(move || cancel.load(std::sync::atomic::Ordering::Relaxed)),
        )?;
        self.writer = Some(writer);
        Ok(())
    }

    fn base_change_id(&self, node: &str) -> Option<String> {
        self.writer
            .as_ref()?
            .base_change_id(node)
            .map(str::to_owned)
    }

    fn set_changes(&mut self, changes: &[host::snapshot::DiskChanges]) {
        for c in changes {
            let entry = repo::DiskChanges {
                change_id: c.change_id.map(|id| id.to_string()),
                changed: c.changed.clone(),
            };
            self.changes.insert(c.node.to_string(), entry);
        }
    }

    fn put_file(&mut self, name: &str, data: &mut dyn Read) -> Result<CatalogFile> {
        let entry = self.writer()?.put_file(name, data)?;
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&entry.sha256, &mut sha256)
            .map_err(|_| Error::Repo(repo::Error::corrupt(name, "bad digest")))?;
        Ok(CatalogFile {
            name: name.to_owned(),
            size_bytes: entry.size,
            sha256,
        })
    }

    fn put_disk(
        &mut self,
        plan: &DiskPlan,
        source: &Path,
        read: &vmdk::OpenOptions,
        _opts: &BackupOptions,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let mut disk = vmdk::Disk::open(source, read)?;
        let node = plan.node.to_string();
        self.store(&node, &plan.backup_name(), &mut disk, obs)
    }

    fn put_source(
        &mut self,
        node: &str,
        name: &str,
        source: &mut dyn vmdk::DiskSource,
        _format: super::ExportFormat,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.store(node, name, source, obs)
    }

    fn disks_done(&mut self) -> Result<Vec<CatalogFile>> {
        Ok(Vec::new())
    }

    fn commit(&mut self, catalog: &vmx::Catalog, obs: &mut dyn Observer) -> Result<()> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::Repo(repo::Error::InvalidArgument("no backup session".into())))?;
        let text = catalog
            .to_dict()
            .map_err(|e| Error::dict(CATALOG_NAME, e))?
            .to_string();
        let point = writer.finish(repo::PointInfo {
            time: catalog.timestamp_unix_secs.unwrap_or_default(),
            written_ns: None,
            host: catalog.host.clone(),
            quiesced: catalog.quiesced.unwrap_or(false),
            power_state: catalog.state.as_str().to_owned(),
            catalog: text,
            tool_version: catalog.tool_version.clone().unwrap_or_default(),
        })?;
        obs.event(&Event::Stored {
            location: self.repo.location(),
            point: point.id.clone(),
            stats: point.stats,
        });
        self.point = Some(point);
        Ok(())
    }

    fn discard(&mut self, _obs: &mut dyn Observer) {
        // Chunks already stored stay: the next backup reuses them.
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

/// Passes storing progress through and turns the observer's cancel into the writer's.
struct Watch<'a> {
    inner: &'a mut dyn repo::StoreProgress,
    cancel: &'a std::sync::atomic::AtomicBool,
}

impl repo::StoreProgress for Watch<'_> {
    fn start(&mut self, total: u64) {
        self.inner.start(total);
    }
    fn advance(&mut self, step: &repo::Advance) -> std::ops::ControlFlow<()> {
        let flow = self.inner.advance(step);
        if flow.is_break() {
            self.cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        flow
    }
    fn finish(&mut self) {
        self.inner.finish();
    }
}
