//! Garbage collection: remove chunks and indexes no point uses.
//!
//! Order of work (the reasons are in [`crate::session`] and `docs/repository.md`):
//!
//! 1. Create `locks/gc-<id>` (refused when another live collector holds one) and keep it
//!    fresh; its storage time is the collector's start `T0`.
//! 2. Remove sessions whose heartbeat stopped (killed writers).
//! 3. Read the live sessions: their base points' indexes and recorded chunks are roots;
//!    the oldest live session's storage time bounds the cutoff.
//! 4. Read every point: its indexes and file chunks are marked.
//! 5. Walk `indexes/` and `chunks/` in name order beside the sorted mark set; delete what
//!    is unmarked and older than `min(T0, oldest live session) − grace`.
//!
//! Memory stays bounded by the mark set's run size ([`crate::markset`]), not by the
//! number of chunks.

use crate::backend::{ObjectMeta, PutMode};
use crate::crypto::{Id, Kind};
use crate::error::{Error, Result};
use crate::markset::MarkSet;
use crate::repository::Repository;
use crate::session::{still_alive, Heartbeat, LockRecord, SessionRecord};
use crate::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// Default grace period: chunks younger than this are never collected.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Never delete objects younger than this.
    pub grace: Duration,
    /// Report what would go, delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            grace: DEFAULT_GRACE,
            dry_run: false,
        }
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Points read.
    pub points: usize,
    /// Live sessions whose roots were kept.
    pub live_sessions: usize,
    /// Dead sessions removed.
    pub stale_sessions: usize,
    /// Chunks and indexes kept.
    pub kept_objects: u64,
    /// Chunks and indexes removed (or, dry run, that would be).
    pub removed_objects: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Unused objects kept because they are younger than the cutoff.
    pub young_objects: u64,
}

/// The collector's lock: released (removed) when dropped.
pub struct CollectorLock {
    repo: Repository,
    name: String,
    started: SystemTime,
    _heartbeat: Heartbeat,
}

impl CollectorLock {
    /// Take the collector lock.
    ///
    /// # Errors
    /// [`Error::Locked`] when another live collector holds one; backend errors.
    pub fn take(repo: &Repository) -> Result<CollectorLock> {
        let name = format!("locks/gc-{:016x}", rand::random::<u64>());
        let record = LockRecord {
            hostname: crate::hostname(),
            pid: std::process::id(),
            started: crate::now_secs(),
        };
        repo.put_json(Kind::Lock, &name, &record, PutMode::Create)?;
        let alive = format!("{name}.alive");
        repo.put(Kind::Lock, &alive, b"0", PutMode::Overwrite)?;
        let lock = CollectorLock {
            repo: repo.clone(),
            started: repo
                .backend()
                .stat(&name)?
                .map_or_else(SystemTime::now, |m| m.modified),
            _heartbeat: Heartbeat::start(repo, alive),
            name,
        };
        // Another collector may have locked at the same moment: both see each other and
        // the later one (by name, for a total order) gives way.
        let mut others = Vec::new();
        repo.backend().list("locks/gc-", &mut |m| {
            if !m.name.ends_with(".alive") && m.name != lock.name {
                others.push(m);
            }
            Ok(())
        })?;
        for m in others {
            if let Some(holder) = live_lock(repo, &m)? {
                return Err(Error::Locked {
                    location: repo.location(),
                    what: "another garbage collection is running".into(),
                    holder,
                });
            }
        }
        Ok(lock)
    }
}

impl Drop for CollectorLock {
    fn drop(&mut self) {
        let _ = self.repo.backend().delete(&format!("{}.alive", self.name));
        let _ = self.repo.backend().delete(&self.name);
    }
}

/// The holder of the lock `m` if it is alive.
fn live_lock(repo: &Repository, m: &ObjectMeta) -> Result<Option<String>> {
    let alive_at = repo
        .backend()
        .stat(&format!("{}.alive", m.name))?
        .map_or(m.modified, |a| a.modified.max(m.modified));
    let record: LockRecord = match repo.get_json(Kind::Lock, &m.name, "a lock") {
        Ok(r) => r,
        Err(Error::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(
        still_alive(&record.hostname, record.pid, alive_at, SystemTime::now())
            .then(|| format!("pid {} on {}", record.pid, record.hostname)),
    )
}

/// Collect garbage in `repo`.
///
/// # Errors
/// [`Error::Locked`], backend errors, [`Error::Corrupt`] for a point or index that cannot
/// be read (nothing is deleted then: a point that cannot be read might use anything).
pub fn gc(repo: &Repository, opts: &GcOptions, progress: &mut dyn Progress) -> Result<GcReport> {
    let lock = CollectorLock::take(repo)?;
    let mut report = GcReport::default();
    let mut marks = Marks {
        chunks: MarkSet::new()?,
        indexes: BTreeSet::new(),
    };
    progress.phase("sessions", None);
    let oldest = mark_sessions(repo, lock.started, opts.dry_run, &mut marks, &mut report)?;
    progress.phase("points", None);
    mark_points(repo, &mut marks, &mut report, progress)?;
    for ix in marks.indexes.clone() {
        mark_index(repo, &ix, &mut marks)?;
    }
    let start = oldest.map_or(lock.started, |o| o.min(lock.started));
    let cutoff = start
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    progress.phase("sweep", None);
    let indexes = std::mem::take(&mut marks.indexes);
    let mut sweep = Sweep {
        repo,
        cutoff,
        dry_run: opts.dry_run,
        report: &mut report,
        progress,
    };
    sweep.walk("indexes/", &mut |id| Ok(indexes.contains(id)))?;
    let mut chunks = marks.chunks.into_sorted()?;
    sweep.walk("chunks/", &mut |id| chunks.contains_in_order(id))?;
    drop(lock);
    Ok(report)
}

/// What is in use.
struct Marks {
    chunks: MarkSet,
    indexes: BTreeSet<Id>,
}

/// Steps 2 and 3: remove dead sessions, mark the live ones' roots. Returns the storage
/// time of the oldest live session.
fn mark_sessions(
    repo: &Repository,
    now: SystemTime,
    dry_run: bool,
    marks: &mut Marks,
    report: &mut GcReport,
) -> Result<Option<SystemTime>> {
    let mut objects: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    repo.backend().list("sessions/", &mut |m| {
        let file = m.name.trim_start_matches("sessions/");
        let sid = file.split('.').next().unwrap_or(file).to_owned();
        objects.entry(sid).or_default().push(m);
        Ok(())
    })?;
    let mut oldest: Option<SystemTime> = None;
    for (sid, objs) in objects {
        let main = format!("sessions/{sid}");
        let record: Option<SessionRecord> = match repo.get_json(Kind::Session, &main, "a session") {
            Ok(r) => Some(r),
            Err(Error::Missing { .. }) => None,
            Err(e) => return Err(e),
        };
        let alive_at = objs.iter().map(|o| o.modified).max().unwrap_or(now);
        let live = record
            .as_ref()
            .is_some_and(|r| still_alive(&r.hostname, r.pid, alive_at, now));
        if !live {
            report.stale_sessions += 1;
            if !dry_run {
                crate::session::remove_session(repo, &sid)?;
            }
            continue;
        }
        report.live_sessions += 1;
        let Some(record) = record else { continue };
        if let Some(started) = objs.iter().find(|o| o.name == main).map(|o| o.modified) {
            oldest = Some(oldest.map_or(started, |o| o.min(started)));
        }
        for ix in &record.base_indexes {
            marks
                .indexes
                .insert(Id::parse(ix).map_err(|_| Error::corrupt(&main, "bad index id"))?);
        }
        if let Some(base) = &record.base_point {
            // The base's file chunks (its disks are covered by its indexes).
            match repo.load_point(base) {
                Ok(p) => mark_file_chunks(&p, marks)?,
                Err(Error::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for seg in objs
            .iter()
            .filter(|o| o.name.starts_with(&format!("{main}.r")))
        {
            let plain = match repo.get(Kind::Session, &seg.name, "a session segment") {
                Ok(p) => p,
                Err(Error::Missing { .. }) => continue,
                Err(e) => return Err(e),
            };
            if plain.len() % 32 != 0 {
                return Err(Error::corrupt(&seg.name, "not a list of ids"));
            }
            for raw in plain.chunks_exact(32) {
                let mut id = [0u8; 32];
                id.copy_from_slice(raw);
                marks.chunks.insert(Id(id))?;
            }
        }
    }
    Ok(oldest)
}

/// Step 4: every point's indexes and file chunks.
fn mark_points(
    repo: &Repository,
    marks: &mut Marks,
    report: &mut GcReport,
    progress: &mut dyn Progress,
) -> Result<()> {
    for name in repo.point_names()? {
        let point = match repo.load_point(&name) {
            Ok(p) => p,
            // Pruned since the listing.
            Err(Error::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        report.points += 1;
        for d in &point.disks {
            let id = Id::parse(&d.index).map_err(|_| Error::corrupt(&name, "bad index id"))?;
            marks.indexes.insert(id);
        }
        mark_file_chunks(&point, marks)?;
        progress.advance(1);
    }
    Ok(())
}

fn mark_file_chunks(point: &crate::point::Point, marks: &mut Marks) -> Result<()> {
    for c in point.file_chunks() {
        let id = Id::parse(c).map_err(|_| Error::corrupt(point.name(), "bad chunk id"))?;
        marks.chunks.insert(id)?;
    }
    Ok(())
}

/// Marks the chunks of index `id` (a missing index marks nothing: `check` reports it).
fn mark_index(repo: &Repository, id: &Id, marks: &mut Marks) -> Result<()> {
    let index = match repo.load_index(&id.hex()) {
        Ok(ix) => ix,
        Err(Error::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    for c in index.chunk_ids() {
        marks.chunks.insert(c)?;
    }
    Ok(())
}

/// Step 5.
struct Sweep<'a> {
    repo: &'a Repository,
    cutoff: SystemTime,
    dry_run: bool,
    report: &'a mut GcReport,
    progress: &'a mut dyn Progress,
}

impl Sweep<'_> {
    /// Walk `prefix` in name order; `marked` answers in increasing id order.
    fn walk(&mut self, prefix: &str, marked: &mut dyn FnMut(&Id) -> Result<bool>) -> Result<()> {
        let (repo, cutoff, dry_run) = (self.repo, self.cutoff, self.dry_run);
        let (report, progress) = (&mut *self.report, &mut *self.progress);
        // Deleting while listing: every backend's listing survives removals of names
        // already listed, and nothing is held per object.
        repo.backend().list(prefix, &mut |m| {
            let Some(id) = m.name.rsplit('/').next().and_then(|h| Id::parse(h).ok()) else {
                // Not an object of ours (a stray file): left alone.
                return Ok(());
            };
            if marked(&id)? {
                report.kept_objects += 1;
            } else if m.modified >= cutoff {
                report.young_objects += 1;
            } else {
                report.removed_objects += 1;
                report.removed_bytes += m.size;
                if !dry_run {
                    repo.backend().delete(&m.name)?;
                }
            }
            progress.advance(1);
            Ok(())
        })
    }
}
