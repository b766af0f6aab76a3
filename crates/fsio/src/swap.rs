//! Replacing a set of files by another so that a crash at any instant leaves either all
//! of the old files or all of the new ones.
//!
//! A [`Swap`] lists entries: a *target* name, and the *staged* file (already written,
//! fsynced, under a hidden name in the target's folder) that replaces it, or none when
//! the target is only removed. [`Swap::commit`]:
//!
//! 1. writes the journal (`committed = false`): every entry with the hidden *aside*
//!    name its old file will get;
//! 2. renames every existing target aside (nothing is deleted yet);
//! 3. renames every staged file into its target name (`RENAME_NOREPLACE`);
//! 4. rewrites the journal with `committed = true`: the commit point;
//! 5. removes the aside files, then the journal.
//!
//! [`recover`] reads a journal a killed process left: before the commit point it undoes
//! (new files back to their staged names and removed, old files back from aside); after
//! it, it finishes (aside files removed). Both are repeatable, so a crash during
//! recovery is recovered the same way. Every folder is fsynced after each step.
//!
//! Journals are trusted only as far as `accept` allows: recovery refuses a journal
//! naming a path the caller does not accept, or staged/aside names that are not hidden
//! files in their target's folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{parent_dir, rename_noreplace, sync_dir, temp_name, write_private};
use crate::error::{Error, Result};

/// Journal format version written and understood.
const VERSION: u32 = 1;
/// Largest journal read (a restore of a VM with hundreds of files fits easily).
const MAX_JOURNAL_BYTES: u64 = 4 << 20;

/// One file of a swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    target: PathBuf,
    staged: Option<PathBuf>,
    aside: PathBuf,
    had_old: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    version: u32,
    committed: bool,
    entries: Vec<Entry>,
}

/// A set of replacements to carry out together.
#[derive(Debug, Clone)]
pub struct Swap {
    journal: PathBuf,
    entries: Vec<(PathBuf, Option<PathBuf>)>,
}

/// What [`recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// No journal: nothing was in progress.
    Nothing,
    /// The swap had passed its commit point and was finished.
    Finished,
    /// The swap had not reached its commit point and was undone.
    Undone,
}

impl Swap {
    /// A swap recorded in the journal file `journal` while it runs.
    pub fn new(journal: &Path) -> Swap {
        Swap {
            journal: journal.to_path_buf(),
            entries: Vec::new(),
        }
    }

    /// `staged` (an existing file in `target`'s folder) replaces `target`, which may or
    /// may not exist.
    pub fn replace(&mut self, target: &Path, staged: &Path) -> &mut Swap {
        self.entries
            .push((target.to_path_buf(), Some(staged.to_path_buf())));
        self
    }

    /// `target` is removed (if it exists) as part of the swap.
    pub fn remove(&mut self, target: &Path) -> &mut Swap {
        self.entries.push((target.to_path_buf(), None));
        self
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Carries the swap out (see the module doc). On an error before the commit point
    /// the old files are put back; after it, only leftovers may remain for [`recover`].
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Exists`] when a staged file's target reappeared.
    pub fn commit(self) -> Result<()> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (target, staged) in &self.entries {
            entries.push(Entry {
                had_old: target.symlink_metadata().is_ok(),
                aside: temp_name(target, "vcb-old"),
                target: target.clone(),
                staged: staged.clone(),
            });
        }
        let mut journal = Journal {
            version: VERSION,
            committed: false,
            entries,
        };
        write_journal(&self.journal, &journal)?;
        if let Err(e) = move_in(&journal) {
            if is_simulated_crash(&e) {
                return Err(e);
            }
            // Put everything back; what cannot be put back stays for recover().
            if let Err(undo_err) = undo(&journal) {
                tracing::warn!("undo of a failed swap: {undo_err}");
                return Err(e);
            }
            remove_journal(&self.journal)?;
            return Err(e);
        }
        journal.committed = true;
        crash_point()?;
        write_journal(&self.journal, &journal)?;
        finish(&journal)?;
        remove_journal(&self.journal)
    }
}

/// Finishes or undoes the swap recorded in `journal`, if there is one. Every path in it
/// must satisfy `accept`.
///
/// # Errors
/// [`Error::BadJournal`] for an unreadable, unknown-version or refused journal (it is
/// left in place); [`Error::Io`].
pub fn recover(journal: &Path, accept: &dyn Fn(&Path) -> bool) -> Result<Recovered> {
    let j = match read_journal(journal)? {
        Some(j) => j,
        None => return Ok(Recovered::Nothing),
    };
    validate(journal, &j, accept)?;
    let outcome = if j.committed {
        finish(&j)?;
        Recovered::Finished
    } else {
        undo(&j)?;
        Recovered::Undone
    };
    remove_journal(journal)?;
    Ok(outcome)
}

/// The files a journal names (targets, staged and aside names), for callers that must
/// know what a pending swap involves without recovering it.
///
/// # Errors
/// As for [`recover`].
pub fn pending_targets(journal: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_journal(journal)?
        .map(|j| j.entries.into_iter().map(|e| e.target).collect())
        .unwrap_or_default())
}

/// A record, written before staged files are made, of the hidden name prefixes they
/// will have: if the process dies while staging, [`recover_staging`] removes them (the
/// swap journal does not exist yet then).
#[derive(Debug)]
pub struct Staging {
    record: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StagingRecord {
    version: u32,
    prefixes: Vec<PathBuf>,
}

impl Staging {
    /// Records that files named `<prefix>...` (each prefix a hidden name in some
    /// folder) are about to be staged.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn begin(record: &Path, prefixes: &[PathBuf]) -> Result<Staging> {
        let r = StagingRecord {
            version: VERSION,
            prefixes: prefixes.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&r).map_err(|e| Error::BadJournal {
            path: record.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_private(record, &text)?;
        Ok(Staging {
            record: record.to_path_buf(),
        })
    }

    /// The staged files were swapped in (or removed): forget the record.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn done(self) -> Result<()> {
        remove_journal(&self.record)
    }
}

/// Removes the files a killed process was staging under `record`'s prefixes, then the
/// record. Prefixes must be hidden names whose folders `accept` allows.
///
/// # Errors
/// [`Error::BadJournal`] for a record that cannot be read or is refused; [`Error::Io`].
pub fn recover_staging(record: &Path, accept: &dyn Fn(&Path) -> bool) -> Result<usize> {
    let bad = |reason: String| Error::BadJournal {
        path: record.to_path_buf(),
        reason,
    };
    let Some(text) = read_bounded(record)? else {
        return Ok(0);
    };
    let r: StagingRecord = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if r.version != VERSION {
        return Err(bad(format!("unknown version {}", r.version)));
    }
    let mut removed = 0;
    for prefix in &r.prefixes {
        let (Some(dir), Some(stem)) =
            (prefix.parent(), prefix.file_name().and_then(|n| n.to_str()))
        else {
            return Err(bad(format!(
                "{} is not a file name prefix",
                prefix.display()
            )));
        };
        if !stem.starts_with('.') || stem.len() < 8 || !accept(dir) {
            return Err(bad(format!(
                "{} is not a prefix it may remove",
                prefix.display()
            )));
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in rd.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(stem))
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(entry.path(), "remove staged file", e)),
                }
            }
        }
        sync_dir(dir)?;
    }
    remove_journal(record)?;
    Ok(removed)
}

fn move_in(j: &Journal) -> Result<()> {
    for e in j.entries.iter().filter(|e| e.had_old) {
        crash_point()?;
        std::fs::rename(&e.target, &e.aside)
            .map_err(|err| Error::io(&e.target, "move aside", err))?;
    }
    sync_dirs(j)?;
    for e in &j.entries {
        if let Some(staged) = &e.staged {
            crash_point()?;
            rename_noreplace(staged, &e.target)?;
        }
    }
    sync_dirs(j)
}

fn finish(j: &Journal) -> Result<()> {
    for e in j.entries.iter().filter(|e| e.had_old) {
        crash_point()?;
        match std::fs::remove_file(&e.aside) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io(&e.aside, "remove old file", err)),
        }
    }
    sync_dirs(j)
}

fn undo(j: &Journal) -> Result<()> {
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    for e in &j.entries {
        let Some(staged) = &e.staged else { continue };
        // The target holds the new file when its staged name is gone and the old
        // file (if any) is aside.
        let new_in_place = !exists(staged) && exists(&e.target) && (!e.had_old || exists(&e.aside));
        if new_in_place {
            std::fs::rename(&e.target, staged)
                .map_err(|err| Error::io(&e.target, "move back", err))?;
        }
    }
    sync_dirs(j)?;
    for e in j.entries.iter().filter(|e| e.had_old) {
        if exists(&e.aside) {
            std::fs::rename(&e.aside, &e.target)
                .map_err(|err| Error::io(&e.aside, "restore old file", err))?;
        }
    }
    for e in &j.entries {
        if let Some(staged) = &e.staged {
            match std::fs::remove_file(staged) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io(staged, "remove staged file", err)),
            }
        }
    }
    sync_dirs(j)
}

fn validate(path: &Path, j: &Journal, accept: &dyn Fn(&Path) -> bool) -> Result<()> {
    let bad = |reason: String| Error::BadJournal {
        path: path.to_path_buf(),
        reason,
    };
    if j.version != VERSION {
        return Err(bad(format!("unknown version {}", j.version)));
    }
    for e in &j.entries {
        if !e.target.is_absolute() || !accept(&e.target) {
            return Err(bad(format!(
                "{} is not a file it may change",
                e.target.display()
            )));
        }
        let dir = parent_dir(&e.target);
        for side in e.staged.iter().chain(std::iter::once(&e.aside)) {
            let hidden = side
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if parent_dir(side) != dir || !hidden {
                return Err(bad(format!(
                    "{} is not a hidden file beside {}",
                    side.display(),
                    e.target.display()
                )));
            }
        }
    }
    Ok(())
}

fn sync_dirs(j: &Journal) -> Result<()> {
    let dirs: BTreeSet<PathBuf> = j.entries.iter().map(|e| parent_dir(&e.target)).collect();
    dirs.iter().try_for_each(|d| sync_dir(d))
}

// Tests stop a commit after a chosen number of steps, as `kill -9` would.
#[cfg(test)]
thread_local! {
    static CRASH_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn crash_point() -> Result<()> {
    #[cfg(test)]
    {
        let left = CRASH_AFTER.with(|c| c.get());
        match left {
            Some(0) => {
                return Err(Error::io(
                    "simulated crash",
                    "crash",
                    std::io::ErrorKind::Interrupted.into(),
                ))
            }
            Some(n) => CRASH_AFTER.with(|c| c.set(Some(n - 1))),
            None => {}
        }
    }
    Ok(())
}

fn is_simulated_crash(e: &Error) -> bool {
    cfg!(test) && matches!(e, Error::Io { op: "crash", .. })
}

fn write_journal(path: &Path, j: &Journal) -> Result<()> {
    let text = serde_json::to_vec_pretty(j).map_err(|e| Error::BadJournal {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_private(path, &text)
}

fn read_journal(path: &Path) -> Result<Option<Journal>> {
    let Some(text) = read_bounded(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::BadJournal {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// A journal's bytes (bounded), or `None` when it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match crate::open_regular(path, crate::OpenKind::Read) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mut text = Vec::new();
    use std::io::Read;
    file.take(MAX_JOURNAL_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, "read", e))?;
    if text.len() as u64 > MAX_JOURNAL_BYTES {
        return Err(Error::BadJournal {
            path: path.to_path_buf(),
            reason: "too large".into(),
        });
    }
    Ok(Some(text))
}

fn remove_journal(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, "remove journal", e)),
    }
    sync_dir(&parent_dir(path))
}

#[cfg(test)]
#[path = "swap_tests.rs"]
mod tests;
