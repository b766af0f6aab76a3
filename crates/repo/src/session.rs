//! The concurrency protocol between writers (backups, copies) and the garbage collector.
//!
//! Writers never lock each other out: any number may run into one repository. What must
//! not happen is the collector deleting a chunk a running writer counts on. The rules
//! (argued in `docs/repository.md`, "Concurrency"):
//!
//! 1. A writer first creates `sessions/<sid>` naming its base point and that point's
//!    indexes (the chunks it will reuse without asking), then keeps `sessions/<sid>.alive`
//!    fresh from a heartbeat thread.
//! 2. A chunk its base does not name is looked up (`stat`). A missing one is uploaded
//!    (younger than the session, no collector removes it). One that exists is recorded
//!    in a segment `sessions/<sid>.r<n>` before it is relied on; then the writer checks
//!    that no collector holds `locks/gc-*`, and stats the chunk again.
//! 3. The collector creates its lock, then reads the sessions (their bases and segments
//!    are roots), then the points, then lists chunks; it deletes only chunks no root or
//!    point names that are older than every live session and older than its own start
//!    by the grace period.
//! 4. A writer that finds a collector's lock waits until it is gone, then checks again.
//!
//! Chunks a writer uploads itself are younger than its session, which the collector's
//! cutoff spares; chunks it found are recorded before they are relied on; its base is
//! named before the collector could read the sessions, or else the writer waited for
//! that collector and checks its base point still exists.

use crate::backend::PutMode;
use crate::crypto::{Id, Kind};
use crate::error::{Error, Result};
use crate::point::Point;
use crate::repository::Repository;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often a session's (and a collector lock's) `.alive` object is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// A session or lock whose heartbeat is older than this is dead (its process is gone or
/// frozen): the collector ignores and removes it.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// How often a writer waiting for a collector looks again.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// The `sessions/<sid>` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id.
    pub id: String,
    /// The machine.
    pub hostname: String,
    /// The process.
    pub pid: u32,
    /// When it started (the writer's clock; the object's time is the storage's).
    pub started: u64,
    /// What it does (`backup`, `copy`).
    pub purpose: String,
    /// The base point's object name.
    #[serde(default)]
    pub base_point: Option<String>,
    /// The base point's index ids.
    #[serde(default)]
    pub base_indexes: Vec<String>,
}

/// A `locks/gc-*` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRecord {
    /// The machine.
    pub hostname: String,
    /// The process.
    pub pid: u32,
    /// When it was taken (the holder's clock).
    pub started: u64,
}

/// Whether a process on this machine is alive.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether a record from `hostname`/`pid` whose heartbeat is `alive_at` (storage clock)
/// still stands, seen at `now` (storage clock where known).
pub(crate) fn still_alive(hostname: &str, pid: u32, alive_at: SystemTime, now: SystemTime) -> bool {
    if hostname == crate::hostname() && !process_alive(pid) {
        return false;
    }
    now.duration_since(alive_at).unwrap_or_default() < STALE_AFTER
}

/// A heartbeat thread refreshing one object until dropped.
pub(crate) struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub(crate) fn start(repo: &Repository, name: String) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let repo = repo.clone();
        let thread = std::thread::Builder::new()
            .name("vcb-heartbeat".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last.elapsed() >= HEARTBEAT {
                        last = std::time::Instant::now();
                        let stamp = crate::now_secs().to_string();
                        if let Err(e) =
                            repo.put(Kind::Lock, &name, stamp.as_bytes(), PutMode::Overwrite)
                        {
                            tracing::warn!("heartbeat {name}: {e}");
                        }
                    }
                }
            })
            .ok();
        Heartbeat { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running writer's session.
pub struct Session {
    repo: Repository,
    id: String,
    seq: AtomicU64,
    _heartbeat: Heartbeat,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.id)
    }
}

impl Session {
    /// Start a session with `base` as the point whose chunks will be reused. Returns the
    /// session and the base still usable (`None` when a collector ran meanwhile and the
    /// base point is gone).
    ///
    /// # Errors
    /// Backend errors; [`Error::Cancelled`] when `cancelled` says so while waiting.
    pub fn begin(
        repo: &Repository,
        purpose: &str,
        base: Option<Point>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Session, Option<Point>)> {
        let id = format!("{:016x}", rand::random::<u64>());
        let record = SessionRecord {
            id: id.clone(),
            hostname: crate::hostname(),
            pid: std::process::id(),
            started: crate::now_secs(),
            purpose: purpose.to_owned(),
            base_point: base.as_ref().map(Point::name),
            base_indexes: base
                .as_ref()
                .map(|p| p.disks.iter().map(|d| d.index.clone()).collect())
                .unwrap_or_default(),
        };
        repo.put_json(
            Kind::Session,
            &format!("sessions/{id}"),
            &record,
            PutMode::Create,
        )?;
        let alive = format!("sessions/{id}.alive");
        repo.put(Kind::Lock, &alive, b"0", PutMode::Overwrite)?;
        let session = Session {
            repo: repo.clone(),
            id,
            seq: AtomicU64::new(0),
            _heartbeat: Heartbeat::start(repo, alive),
        };
        let waited = session.wait_for_collector(cancelled)?;
        let base = match base {
            Some(p) if waited => repo.backend().stat(&p.name())?.map(|_| p),
            other => other,
        };
        Ok((session, base))
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Record `ids` as relied on (rule 2), then wait out any collector. Call before
    /// trusting that the chunks exist.
    ///
    /// # Errors
    /// Backend errors; [`Error::Cancelled`].
    pub fn record(&self, ids: &[Id], cancelled: &dyn Fn() -> bool) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut plain = Vec::with_capacity(ids.len() * 32);
        for id in ids {
            plain.extend_from_slice(&id.0);
        }
        let name = format!("sessions/{}.r{n}", self.id);
        self.repo.put(Kind::Session, &name, &plain, PutMode::Data)?;
        self.wait_for_collector(cancelled)?;
        Ok(())
    }

    /// Wait while a live collector lock exists; true when there was one.
    fn wait_for_collector(&self, cancelled: &dyn Fn() -> bool) -> Result<bool> {
        let mut waited = false;
        while let Some(holder) = live_collector(&self.repo)? {
            if !waited {
                tracing::info!("waiting for the garbage collector ({holder}) to finish");
            }
            waited = true;
            if cancelled() {
                return Err(Error::Cancelled);
            }
            std::thread::sleep(WAIT_POLL);
        }
        Ok(waited)
    }

    /// Whether the session's record still exists (a collector removes the records of
    /// sessions whose heartbeat stopped).
    ///
    /// # Errors
    /// Backend errors.
    pub fn still_registered(&self) -> Result<bool> {
        Ok(self
            .repo
            .backend()
            .stat(&format!("sessions/{}", self.id))?
            .is_some())
    }

    /// End the session: remove its objects (segments first, the record last).
    pub fn end(self) {
        if let Err(e) = remove_session(&self.repo, &self.id) {
            tracing::warn!("removing session {}: {e}", self.id);
        }
    }
}

/// Remove every object of session `sid` (segments and heartbeat first).
pub(crate) fn remove_session(repo: &Repository, sid: &str) -> Result<()> {
    let mut names = Vec::new();
    repo.backend().list(&format!("sessions/{sid}."), &mut |m| {
        names.push(m.name);
        Ok(())
    })?;
    for n in names {
        repo.backend().delete(&n)?;
    }
    repo.backend().delete(&format!("sessions/{sid}"))?;
    Ok(())
}

/// The holder of a live collector lock, if any.
///
/// # Errors
/// Backend errors.
pub fn live_collector(repo: &Repository) -> Result<Option<String>> {
    let mut locks = Vec::new();
    repo.backend().list("locks/gc-", &mut |m| {
        locks.push(m);
        Ok(())
    })?;
    let now = SystemTime::now();
    for m in locks {
        if m.name.ends_with(".alive") {
            continue;
        }
        let lock_name = m.name.clone();
        let alive_at = repo
            .backend()
            .stat(&format!("{lock_name}.alive"))?
            .map_or(m.modified, |a| a.modified.max(m.modified));
        let record: LockRecord = match repo.get_json(Kind::Lock, &lock_name, "a lock") {
            Ok(r) => r,
            Err(Error::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        if still_alive(&record.hostname, record.pid, alive_at, now) {
            return Ok(Some(format!(
                "{lock_name}, pid {} on {}",
                record.pid, record.hostname
            )));
        }
    }
    Ok(None)
}
