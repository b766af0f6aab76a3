//! `check`: the repository's structure, without reading chunk data.
//!
//! Every key file, point and index is read and authenticated; every chunk a point
//! names must be listed by the backend (the referenced ids, sorted on disk, are walked
//! beside the chunk listing, so memory stays bounded); sessions of dead writers and
//! unused chunks are counted (`gc` removes them). Damage is reported with the points it
//! breaks, never "repaired".

use crate::crypto::Id;
use crate::error::{Error, Result};
use crate::index::Entry;
use crate::markset::MarkSet;
use crate::repository::Repository;
use crate::Progress;
use std::collections::BTreeSet;

/// A problem found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The object.
    pub object: String,
    /// What is wrong.
    pub error: String,
    /// Points it breaks (ids).
    pub points: Vec<String>,
}

/// What `check` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Key files.
    pub keys: usize,
    /// Points read.
    pub points: usize,
    /// Indexes read.
    pub indexes: usize,
    /// Distinct chunks the points use.
    pub chunks_referenced: u64,
    /// Chunks stored.
    pub chunks_stored: u64,
    /// Stored chunks no point uses (removed by `gc`).
    pub chunks_unused: u64,
    /// Sessions of running (or dead) writers.
    pub sessions: usize,
    /// Problems.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check `repo`'s structure.
///
/// # Errors
/// Backend errors of listings; [`Error::Cancelled`]. Damage is reported, not returned.
pub fn check(repo: &Repository, progress: &mut dyn Progress) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    progress.phase("keys", None);
    match repo.keys() {
        Ok(k) => report.keys = k.len(),
        Err(e) => report.problems.push(problem("keys/", &e, Vec::new())),
    }
    progress.phase("points and indexes", None);
    let mut refs = MarkSet::new()?;
    let mut point_ids = Vec::new();
    let mut index_users: Vec<(String, String)> = Vec::new();
    for name in repo.point_names()? {
        if progress.cancelled() {
            return Err(Error::Cancelled);
        }
        let point = match repo.load_point(&name) {
            Ok(p) => p,
            Err(Error::Missing { .. }) => continue,
            Err(e) => {
                report.problems.push(problem(&name, &e, vec![name.clone()]));
                continue;
            }
        };
        report.points += 1;
        point_ids.push(point.id.clone());
        for c in point.file_chunks() {
            match Id::parse(c) {
                Ok(id) => refs.insert(id)?,
                Err(e) => report
                    .problems
                    .push(problem(&name, &e, vec![point.id.clone()])),
            }
        }
        for d in &point.disks {
            index_users.push((d.index.clone(), point.id.clone()));
        }
        progress.advance(1);
    }
    index_users.sort();
    let mut seen = BTreeSet::new();
    for (ix, _) in &index_users {
        if !seen.insert(ix.clone()) {
            continue;
        }
        let users = || users_of(&index_users, ix);
        match repo.load_index(ix) {
            Ok(index) => {
                report.indexes += 1;
                for e in &index.entries {
                    if let Entry::Data(id) = e {
                        refs.insert(*id)?;
                    }
                }
            }
            Err(e) => report
                .problems
                .push(problem(&format!("indexes/{ix}"), &e, users())),
        }
    }
    progress.phase("chunks", None);
    let missing = walk_chunks(repo, refs, &mut report, progress)?;
    if !missing.is_empty() {
        blame_missing(repo, &missing, &index_users, &mut report)?;
    }
    repo.backend().list("sessions/", &mut |m| {
        if !m.name.contains('.') {
            report.sessions += 1;
        }
        Ok(())
    })?;
    Ok(report)
}

fn users_of(index_users: &[(String, String)], ix: &str) -> Vec<String> {
    index_users
        .iter()
        .filter(|(i, _)| i == ix)
        .map(|(_, p)| p.clone())
        .collect()
}

fn problem(object: &str, e: &dyn std::fmt::Display, points: Vec<String>) -> Problem {
    Problem {
        object: object.to_owned(),
        error: e.to_string(),
        points,
    }
}

/// Walks the chunk listing beside the sorted references; returns the referenced ids
/// that are not stored.
fn walk_chunks(
    repo: &Repository,
    refs: MarkSet,
    report: &mut CheckReport,
    progress: &mut dyn Progress,
) -> Result<Vec<Id>> {
    let mut sorted = refs.into_sorted()?;
    let mut missing = Vec::new();
    let mut pending = sorted.next_id()?;
    let mut referenced = 0u64;
    repo.backend().list("chunks/", &mut |m| {
        let Some(id) = m.name.rsplit('/').next().and_then(|h| Id::parse(h).ok()) else {
            return Ok(());
        };
        if m.name != id.chunk_name() {
            return Ok(());
        }
        report.chunks_stored += 1;
        while let Some(r) = pending.filter(|r| *r < id) {
            missing.push(r);
            referenced += 1;
            pending = sorted.next_id()?;
        }
        if pending == Some(id) {
            referenced += 1;
            pending = sorted.next_id()?;
        } else {
            report.chunks_unused += 1;
        }
        progress.advance(1);
        Ok(())
    })?;
    while let Some(r) = pending {
        missing.push(r);
        referenced += 1;
        pending = sorted.next_id()?;
    }
    report.chunks_referenced = referenced;
    Ok(missing)
}

/// Names the points each missing chunk breaks (missing chunks are few; indexes are read
/// again rather than kept).
fn blame_missing(
    repo: &Repository,
    missing: &[Id],
    index_users: &[(String, String)],
    report: &mut CheckReport,
) -> Result<()> {
    let wanted: BTreeSet<Id> = missing.iter().copied().collect();
    let mut blamed: std::collections::BTreeMap<Id, BTreeSet<String>> = Default::default();
    let mut done = BTreeSet::new();
    for (ix, _) in index_users {
        if !done.insert(ix.clone()) {
            continue;
        }
        let Ok(index) = repo.load_index(ix) else {
            continue;
        };
        for id in index.chunk_ids().filter(|id| wanted.contains(id)) {
            blamed
                .entry(id)
                .or_default()
                .extend(users_of(index_users, ix));
        }
    }
    let (points, _) = repo.points()?;
    for p in &points {
        for c in p.file_chunks() {
            if let Ok(id) = Id::parse(c) {
                if wanted.contains(&id) {
                    blamed.entry(id).or_default().insert(p.id.clone());
                }
            }
        }
    }
    for id in missing {
        report.problems.push(Problem {
            object: id.chunk_name(),
            error: "missing".into(),
            points: blamed.remove(id).unwrap_or_default().into_iter().collect(),
        });
    }
    Ok(())
}
