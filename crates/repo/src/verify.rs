//! `verify`: read back and authenticate the chunks points use, and say what breaks.
//!
//! Each chunk is read once however many points use it (decrypted, its id recomputed);
//! a damaged or missing one is reported with every point it breaks. With a subset
//! percentage, chunks are drawn at random per run (a keyed hash of the id with a fresh
//! salt), so repeated partial runs cover the whole repository over time. The outcome is
//! recorded on each point (`verify/<point id>`), which `list` shows.

use crate::backend::PutMode;
use crate::crypto::{Id, Kind};
use crate::error::{Error, Result};
use crate::index::Entry;
use crate::point::{Point, VerifyRecord};
use crate::repository::Repository;
use crate::Progress;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Share of chunks to read, 1 to 100.
    pub percent: u32,
    /// Record the outcome on each point.
    pub record: bool,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions {
            percent: 100,
            record: true,
        }
    }
}

/// A damaged or missing object and the points it breaks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// The object (`chunks/ab/…`, `indexes/…`).
    pub object: String,
    /// What is wrong.
    pub error: String,
    /// Ids of the points that need it.
    pub points: Vec<String>,
}

/// The outcome for one point.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PointOutcome {
    /// Point id.
    pub id: String,
    /// VM name.
    pub vm: String,
    /// Chunks of it that were read.
    pub chunks_checked: u64,
    /// True when everything read was sound.
    pub ok: bool,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Per point.
    pub points: Vec<PointOutcome>,
    /// Distinct chunks read.
    pub chunks_checked: u64,
    /// Bytes read (stored size).
    pub bytes_checked: u64,
    /// Everything damaged or missing.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// True when nothing was damaged.
    pub fn ok(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Verify `points` of `repo`.
///
/// # Errors
/// Backend errors that are not about one object (the listing, a lost connection) and
/// [`Error::Cancelled`]; damage is reported, not returned.
pub fn verify(
    repo: &Repository,
    points: &[Point],
    opts: &VerifyOptions,
    progress: &mut dyn Progress,
) -> Result<VerifyReport> {
    let percent = opts.percent.clamp(1, 100);
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    let chosen = |id: &Id| {
        percent == 100 || {
            let h = Sha256::new()
                .chain_update(salt)
                .chain_update(id.0)
                .finalize();
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]) % 100 < percent
        }
    };
    let mut report = VerifyReport::default();
    // Chunk → the points (indexes into `points`) that use it.
    let mut users: HashMap<Id, Vec<usize>> = HashMap::new();
    let mut broken: Vec<Option<String>> = vec![None; points.len()];
    for (pi, p) in points.iter().enumerate() {
        for c in p.file_chunks() {
            match Id::parse(c) {
                Ok(id) => users.entry(id).or_default().push(pi),
                Err(_) => broken[pi] = Some(format!("bad chunk id {c:?}")),
            }
        }
        for d in &p.disks {
            match repo.load_index(&d.index) {
                Ok(ix) => {
                    for e in &ix.entries {
                        if let Entry::Data(id) = e {
                            users.entry(*id).or_default().push(pi);
                        }
                    }
                }
                Err(e) if matches!(e, Error::Missing { .. } | Error::Corrupt { .. }) => {
                    report.damage.push(Damage {
                        object: format!("indexes/{}", d.index),
                        error: e.to_string(),
                        points: vec![p.id.clone()],
                    });
                    broken[pi] = Some(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut todo: Vec<(Id, Vec<usize>)> = users.into_iter().filter(|(id, _)| chosen(id)).collect();
    todo.sort_by_key(|a| a.0);
    progress.phase("reading chunks", Some(todo.len() as u64));
    let checked = read_all(repo, &todo, progress)?;
    let mut per_point = vec![0u64; points.len()];
    for ((id, who), outcome) in todo.iter().zip(checked) {
        report.chunks_checked += 1;
        for &pi in who {
            per_point[pi] += 1;
        }
        match outcome {
            Ok(bytes) => report.bytes_checked += bytes,
            Err(e) => {
                let mut ids: Vec<String> = who.iter().map(|&pi| points[pi].id.clone()).collect();
                ids.dedup();
                for &pi in who {
                    broken[pi].get_or_insert_with(|| e.clone());
                }
                report.damage.push(Damage {
                    object: id.chunk_name(),
                    error: e,
                    points: ids,
                });
            }
        }
    }
    for (pi, p) in points.iter().enumerate() {
        let ok = broken[pi].is_none();
        report.points.push(PointOutcome {
            id: p.id.clone(),
            vm: p.vm.name.clone(),
            chunks_checked: per_point[pi],
            ok,
        });
        if opts.record {
            let bad: Vec<String> = report
                .damage
                .iter()
                .filter(|d| d.points.contains(&p.id))
                .take(1000)
                .map(|d| d.object.clone())
                .collect();
            let rec = VerifyRecord {
                time: crate::now_secs(),
                percent,
                chunks_checked: per_point[pi],
                bad_chunks: bad,
                ok,
            };
            repo.put_json(
                Kind::Verify,
                &format!("verify/{}", p.id),
                &rec,
                PutMode::Overwrite,
            )?;
        }
    }
    Ok(report)
}

/// Reads every chunk of `todo` on a few threads; per chunk its stored size or what is
/// wrong with it.
fn read_all(
    repo: &Repository,
    todo: &[(Id, Vec<usize>)],
    progress: &mut dyn Progress,
) -> Result<Vec<std::result::Result<u64, String>>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::result::Result<u64, String>>>> =
        Mutex::new(vec![None; todo.len()]);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let tx = tx.clone();
            let (next, results, fatal, cancel) = (&next, &results, &fatal, &cancel);
            scope.spawn(move || loop {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((id, _)) = todo.get(i) else { return };
                let outcome = match repo.read_chunk_checked(id) {
                    Ok(data) => Ok(data.len() as u64),
                    Err(e @ (Error::Missing { .. } | Error::Corrupt { .. })) => Err(e.to_string()),
                    Err(e) => {
                        fatal
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                };
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(outcome);
                if tx.send(()).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        for () in rx {
            progress.advance(1);
            if progress.cancelled() {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    if let Some(e) = fatal
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    Ok(results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not read".into())))
        .collect())
}
