//! Writing a backup point: files and disks in, chunks stored once, the point last.
//!
//! A disk is read in chunk-sized pieces aligned to its offsets, by one reader thread
//! that asks the source's allocation map first (unallocated pieces are not read at all);
//! worker threads test each piece for zeros, compute its id, and store it unless the
//! repository has it: the base point's chunks are known without asking, anything else is
//! recorded in the session and looked up ([`crate::session`]). New chunks are compressed,
//! encrypted and uploaded by the workers, so reading, hashing and uploading overlap.
//! Memory stays at a few chunk buffers per thread whatever the disk's size.

use crate::backend::PutMode;
use crate::crypto::{Id, Kind};
use crate::error::{Error, Result};
use crate::index::{DiskIndex, Entry};
use crate::point::{DiskEntry, FileEntry, Point, Stats, VmInfo};
use crate::repository::Repository;
use crate::session::Session;
pub use crate::tracked::DiskChanges;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Mutex;

/// Progress of storing a disk or file, rendered by the caller.
pub trait StoreProgress {
    /// Storing starts; `total_bytes` will be covered.
    fn start(&mut self, _total_bytes: u64) {}
    /// One piece is done. Returning `Break` cancels.
    fn advance(&mut self, _step: &Advance) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Storing ended.
    fn finish(&mut self) {}
}

impl StoreProgress for () {}

/// One finished piece.
#[derive(Debug, Clone, Copy, Default)]
pub struct Advance {
    /// Bytes of the disk covered (holes included).
    pub covered: u64,
    /// Bytes read from the source.
    pub read: u64,
    /// Bytes of new chunks (before compression).
    pub new: u64,
    /// Bytes of chunks the repository had.
    pub reused: u64,
    /// Bytes stored for new chunks (compressed, encrypted).
    pub stored: u64,
}

/// What the point records about its backup.
#[derive(Debug, Clone)]
pub struct PointInfo {
    /// When the snapshot was taken.
    pub time: u64,
    /// The write time to record (copies keep their source's); `None`: now.
    pub written_ns: Option<u64>,
    /// The VM's host.
    pub host: Option<String>,
    /// Whether the guest was quiesced.
    pub quiesced: bool,
    /// `poweredOn`, `poweredOff`, `suspended`.
    pub power_state: String,
    /// The catalog text.
    pub catalog: String,
    /// The vcb version.
    pub tool_version: String,
}

/// How a writer starts.
#[derive(Debug, Clone, Default)]
pub struct WriterOptions {
    /// Keep this point id (copies keep their source's); `None`: a new random one.
    pub point_id: Option<String>,
    /// Compare against no earlier point (every chunk is looked up).
    pub no_base: bool,
    /// `backup` or `copy`, for the session record.
    pub purpose: String,
}

/// A backup point being written.
pub struct BackupWriter {
    pub(crate) repo: Repository,
    session: Session,
    vm: VmInfo,
    group: String,
    point_id: String,
    pub(crate) base: Option<Point>,
    known: Mutex<HashSet<Id>>,
    files: Vec<FileEntry>,
    disks: Vec<DiskEntry>,
    stats: Stats,
    pub(crate) cancel: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for BackupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BackupWriter({}, {})",
            self.repo.location(),
            self.point_id
        )
    }
}

impl BackupWriter {
    /// Start a point of `vm`. The group's latest point is the base: its chunks are
    /// reused without asking. `cancel` is polled while waiting for a collector.
    ///
    /// # Errors
    /// Reading the base point; backend errors.
    pub fn begin(
        repo: &Repository,
        vm: VmInfo,
        opts: &WriterOptions,
        cancel: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<BackupWriter> {
        let group = repo.group_of(&vm);
        let base = if opts.no_base {
            None
        } else {
            latest_of_group(repo, &group)?
        };
        let purpose = if opts.purpose.is_empty() {
            "backup"
        } else {
            &opts.purpose
        };
        let (session, base) = Session::begin(repo, purpose, base, &*cancel)?;
        let mut known = HashSet::new();
        if let Some(b) = &base {
            for d in &b.disks {
                match repo.load_index(&d.index) {
                    Ok(ix) => known.extend(ix.chunk_ids()),
                    // A damaged base only costs deduplication.
                    Err(e) => tracing::warn!("base point {}: {e}", b.id),
                }
            }
            for c in b.file_chunks() {
                if let Ok(id) = Id::parse(c) {
                    known.insert(id);
                }
            }
        }
        Ok(BackupWriter {
            repo: repo.clone(),
            session,
            vm,
            group,
            point_id: opts
                .point_id
                .clone()
                .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
            base,
            known: Mutex::new(known),
            files: Vec::new(),
            disks: Vec::new(),
            stats: Stats::default(),
            cancel,
        })
    }

    /// The point's id.
    pub fn point_id(&self) -> &str {
        &self.point_id
    }

    /// The base point, if any.
    pub fn base(&self) -> Option<&Point> {
        self.base.as_ref()
    }

    /// What was stored so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Make sure chunk `id` holding `data` is in the repository. Returns the bytes
    /// stored (0 when it was there).
    pub(crate) fn store(&self, id: Id, data: &[u8]) -> Result<u64> {
        if self.have(id)? {
            return Ok(0);
        }
        let stored = self
            .repo
            .put(Kind::Chunk, &id.chunk_name(), data, PutMode::Data)?;
        self.lock_known().insert(id);
        Ok(stored)
    }

    /// Whether the repository has chunk `id`, by the protocol of [`crate::session`]:
    /// known chunks without asking; others are looked up, and one that exists is
    /// recorded in the session and looked up again (after waiting out a collector)
    /// before it is relied on. A chunk that is missing is uploaded by the caller: being
    /// younger than the session, no collector removes it.
    fn have(&self, id: Id) -> Result<bool> {
        if self.lock_known().contains(&id) {
            return Ok(true);
        }
        let name = id.chunk_name();
        if self.repo.backend().stat(&name)?.is_none() {
            return Ok(false);
        }
        self.session.record(&[id], &*self.cancel)?;
        let found = self.repo.backend().stat(&name)?.is_some();
        if found {
            self.lock_known().insert(id);
        }
        Ok(found)
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<Id>> {
        // A worker that panicked cannot leave the set half-updated (inserts are atomic).
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Store the configuration file `name` read from `data`.
    ///
    /// # Errors
    /// Read errors of `data`; backend errors.
    pub fn put_file(&mut self, name: &str, data: &mut dyn Read) -> Result<FileEntry> {
        let cs = self.repo.config.chunk_size as usize;
        let mut buf = vec![0u8; cs];
        let mut sha = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        loop {
            let n = read_full(data, &mut buf).map_err(|e| Error::io(name, "read", e))?;
            if n == 0 {
                break;
            }
            let piece = &buf[..n];
            sha.update(piece);
            size += n as u64;
            let id = self.repo.crypto.chunk_id(piece);
            let stored = self.store(id, piece)?;
            self.count(n as u64, stored);
            chunks.push(id.hex());
            if n < cs {
                break;
            }
        }
        let entry = FileEntry {
            name: name.to_owned(),
            size,
            sha256: hex::encode(sha.finalize()),
            chunks,
        };
        self.files.push(entry.clone());
        Ok(entry)
    }

    fn count(&mut self, bytes: u64, stored: u64) {
        self.stats.read_bytes += bytes;
        if stored > 0 {
            self.stats.new_bytes += bytes;
            self.stats.stored_bytes += stored;
            self.stats.new_chunks += 1;
        } else {
            self.stats.reused_bytes += bytes;
            self.stats.reused_chunks += 1;
        }
    }

    /// Store the disk attached at `node` as `name`, reading `source`.
    ///
    /// # Errors
    /// Read errors of the source, backend errors, [`Error::Cancelled`].
    pub fn put_disk(
        &mut self,
        node: &str,
        name: &str,
        source: &mut dyn vmdk::DiskSource,
        progress: &mut dyn StoreProgress,
    ) -> Result<DiskEntry> {
        self.put_disk_tracked(node, name, source, &DiskChanges::default(), progress)
    }

    /// [`put_disk`](Self::put_disk) reading only the chunks `changes` says changed since
    /// the base point: every other chunk is the base point's (the new point is still
    /// complete). Without areas, or when the base point has no matching disk, all of it
    /// is read.
    ///
    /// # Errors
    /// As for [`put_disk`](Self::put_disk).
    pub fn put_disk_tracked(
        &mut self,
        node: &str,
        name: &str,
        source: &mut dyn vmdk::DiskSource,
        changes: &DiskChanges,
        progress: &mut dyn StoreProgress,
    ) -> Result<DiskEntry> {
        let capacity = source.capacity();
        let adapter = source.adapter().as_str().to_owned();
        let mut index = DiskIndex::new(capacity, self.repo.config.chunk_size);
        let plans = self.chunk_plans(node, &index, changes)?;
        progress.start(capacity);
        let (stats, data_bytes) = self.store_pieces(source, &mut index, plans, progress)?;
        progress.finish();
        self.stats.add(&stats);
        let entry = DiskEntry {
            node: node.to_owned(),
            name: name.to_owned(),
            capacity,
            adapter,
            index: self.store_index(&index)?,
            data_bytes,
            change_id: changes.change_id.clone(),
        };
        self.disks.push(entry.clone());
        Ok(entry)
    }

    /// Store an index; returns its id.
    fn store_index(&self, index: &DiskIndex) -> Result<String> {
        let plain = index.encode();
        let id = hex::encode(self.repo.crypto.mac(&[b"index", &plain]));
        self.repo
            .put(Kind::Index, &format!("indexes/{id}"), &plain, PutMode::Data)?;
        Ok(id)
    }

    /// Copy the disk `entry` of `src`'s point into this point. When both repositories
    /// share their keys, chunk ids are equal, and only chunks this repository lacks are
    /// read from `src` (copied without re-encryption being visible to either side);
    /// otherwise every chunk is read and re-identified under this repository's key.
    ///
    /// # Errors
    /// Reading `src` (damaged or missing chunks), backend errors, [`Error::Cancelled`].
    pub fn copy_disk(
        &mut self,
        src: &Repository,
        entry: &DiskEntry,
        progress: &mut dyn StoreProgress,
    ) -> Result<DiskEntry> {
        if !same_ids(src, &self.repo) {
            let mut disk = crate::reader::RepoDisk::open(src, entry)?;
            return self.put_disk(&entry.node, &entry.name, &mut disk, progress);
        }
        let index = src.load_index(&entry.index)?;
        progress.start(index.capacity);
        let mut stats = Stats::default();
        for (i, e) in index.entries.iter().enumerate() {
            let (start, end) = index.range(i);
            let mut step = Advance {
                covered: end - start,
                ..Advance::default()
            };
            if let Entry::Data(id) = e {
                step.read = end - start;
                if self.have(*id)? {
                    step.reused = step.read;
                    stats.reused_chunks += 1;
                } else {
                    let data = src.read_chunk(id)?;
                    step.stored =
                        self.repo
                            .put(Kind::Chunk, &id.chunk_name(), &data, PutMode::Data)?;
                    self.lock_known().insert(*id);
                    step.new = step.read;
                    stats.new_chunks += 1;
                }
            }
            stats.read_bytes += step.read;
            stats.new_bytes += step.new;
            stats.reused_bytes += step.reused;
            stats.stored_bytes += step.stored;
            if progress.advance(&step).is_break() || (self.cancel)() {
                return Err(Error::Cancelled);
            }
        }
        progress.finish();
        self.stats.add(&stats);
        let copied = DiskEntry {
            index: self.store_index(&index)?,
            ..entry.clone()
        };
        self.disks.push(copied.clone());
        Ok(copied)
    }

    /// Write the point: every chunk and index made durable first, then the manifest
    /// (conditional create), then the session ends.
    ///
    /// # Errors
    /// Backend errors; [`Error::Locked`] when the session was removed by a collector
    /// (its heartbeat stopped for longer than [`crate::session::STALE_AFTER`]).
    pub fn finish(self, info: PointInfo) -> Result<Point> {
        self.repo.backend().sync()?;
        if !self.session.still_registered()? {
            return Err(Error::Locked {
                location: self.repo.location(),
                what: "this backup's session expired (its process was stopped too long) and a garbage collection may have removed chunks it uses; run the backup again".into(),
                holder: "the garbage collector".into(),
            });
        }
        let point = Point {
            version: crate::point::POINT_VERSION,
            id: self.point_id.clone(),
            group: self.group.clone(),
            vm: self.vm.clone(),
            time: info.time,
            written_ns: info.written_ns.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }),
            host: info.host,
            hostname: crate::hostname(),
            quiesced: info.quiesced,
            power_state: info.power_state,
            catalog: info.catalog,
            files: self.files.clone(),
            disks: self.disks.clone(),
            parent: self.base.as_ref().map(|b| b.id.clone()),
            stats: self.stats,
            tool_version: info.tool_version,
        };
        self.repo
            .put_json(Kind::Point, &point.name(), &point, PutMode::Create)?;
        self.session.end();
        Ok(point)
    }

    /// Give up: the session ends; chunks already stored stay for the next backup to
    /// reuse (the collector removes them if none does).
    pub fn abort(self) {
        self.session.end();
    }
}

/// Whether two repositories give equal data equal ids (they share their master key, or
/// are both unencrypted).
pub fn same_ids(a: &Repository, b: &Repository) -> bool {
    a.crypto.mac(&[b"probe"]) == b.crypto.mac(&[b"probe"])
}

/// The latest point of `group`, if any.
fn latest_of_group(repo: &Repository, group: &str) -> Result<Option<Point>> {
    let mut names = Vec::new();
    repo.backend().list(&format!("points/{group}/"), &mut |m| {
        names.push(m.name);
        Ok(())
    })?;
    let mut best: Option<Point> = None;
    for name in names {
        match repo.load_point(&name) {
            Ok(p) if best.as_ref().is_none_or(|b| p.order_key() > b.order_key()) => {
                best = Some(p);
            }
            Ok(_) | Err(Error::Missing { .. }) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(best)
}

/// Read until `buf` is full or the end; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
