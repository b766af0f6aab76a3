//! Replacing a whole disk by another so that `kill -9` at any instant leaves either the
//! old disk or the new one.
//!
//! A new disk is first built under a hidden *staged* name beside the target
//! ([`staged_name`]): `.<stem>.vcb-new-<random>.vmdk` with its extents named after it.
//! [`replace`] then hands every file to [`fsio::swap`]: the target's old files go aside,
//! the staged extents move to the target's extent names (`<stem>-flat.vmdk`,
//! `<stem>-s001.vmdk`...), a descriptor rewritten for those names moves to the target's
//! name, the journal's commit point passes, and the old files are removed.
//!
//! The journal is `.<target>.vcb-swap` in the target's folder; before anything is staged
//! a staging record `.<target>.vcb-stage` names the staged files' prefix.
//! [`recover_folder`] (run by every [`Disk::open`](crate::Disk::open)) finishes or undoes
//! what a killed process left there, then removes what it was staging. An operation holds
//! an exclusive flock on the folder itself from its first staged byte to its last
//! rename; a reader that finds the lock held leaves the folder alone (its owner is alive
//! and cleans up itself), so a reader never undoes a swap another process is making.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::create::split_name;
use crate::error::{Error, Result};
use crate::link::{descriptor_of, DescriptorStore};

/// Suffix of a disk swap journal.
pub const JOURNAL_SUFFIX: &str = ".vcb-swap";
/// Suffix of a staging record.
pub const STAGE_SUFFIX: &str = ".vcb-stage";

/// A hidden, unique name beside `target` to build its replacement under.
pub fn staged_name(target: &Path) -> Result<PathBuf> {
    let (dir, stem) = split_name(target)?;
    Ok(dir.join(format!(
        ".{stem}.vcb-new-{:08x}.vmdk",
        rand::random::<u32>()
    )))
}

/// Puts the disk `staged` (built under [`staged_name`]) in place of the disk `target`
/// (which may not exist) under a journal. `staged`'s files are gone afterwards.
///
/// # Errors
/// [`Error::Busy`]-like [`Error::Io`] when another process swaps in the folder; I/O
/// errors (before the commit point everything is put back).
pub fn replace(target: &Path, staged: &Path) -> Result<()> {
    let dir = crate::confine::canonical_dir(target)?;
    let _lock = FolderLock::take(&dir, true)?;
    replace_locked(target, staged)
}

/// [`replace`] with the folder lock already held.
pub(crate) fn replace_locked(target: &Path, staged: &Path) -> Result<()> {
    let dir = crate::confine::canonical_dir(target)?;
    let journal = journal_of(target);
    let mut swap = fsio::swap::Swap::new(&journal);
    let leftovers = add_to_swap(&mut swap, target, staged)?;
    swap.commit()?;
    for f in leftovers {
        remove_if_exists(&f)?;
    }
    Ok(fsio::sync_dir(&dir)?)
}

/// Adds to `swap` the entries that put the disk `staged` in place of `target`: its
/// extents under the target's names, a descriptor naming them under the target's name,
/// and every old file of the target not reused removed. Returns files to delete once
/// the swap committed (the staged descriptor, when a rewritten copy replaced it).
///
/// # Errors
/// Errors reading the staged disk's descriptor or writing the rewritten one.
pub fn add_to_swap(
    swap: &mut fsio::swap::Swap,
    target: &Path,
    staged: &Path,
) -> Result<Vec<PathBuf>> {
    let (dir, target_stem) = split_name(target)?;
    let (_, staged_stem) = split_name(staged)?;
    let staged_file = crate::fileio::PathFile::open(staged, false)?;
    let (mut d, store) = descriptor_of(&staged_file)?;
    drop(staged_file);
    let mut new_names = vec![target.to_path_buf()];
    let mut leftovers = Vec::new();
    if store == DescriptorStore::Embedded {
        swap.replace(target, staged);
    } else {
        for e in d.extents.iter_mut() {
            let Some(name) = e.file.clone() else { continue };
            let rest = name.strip_prefix(&staged_stem).ok_or_else(|| {
                Error::corrupt(
                    staged,
                    format!("staged extent {name:?} is not named after the disk"),
                )
            })?;
            let final_name = format!("{target_stem}{rest}");
            let final_path = dir.join(&final_name);
            swap.replace(&final_path, &dir.join(&name));
            new_names.push(final_path);
            e.file = Some(final_name);
        }
        // Named under the staged prefix, so a staging record covers it too.
        let desc = dir.join(format!("{staged_stem}.descriptor"));
        fsio::write_atomic(&desc, d.to_text().as_bytes())?;
        swap.replace(target, &desc);
        leftovers.push(staged.to_path_buf());
    }
    for old in old_files(target) {
        if !new_names.contains(&old) {
            swap.remove(&old);
        }
    }
    Ok(leftovers)
}

/// The files of the disk at `target` that exist: its descriptor and extents (those in
/// its own folder; a broken descriptor still yields itself and its `-flat` extent).
fn old_files(target: &Path) -> Vec<PathBuf> {
    if target.symlink_metadata().is_err() {
        return Vec::new();
    }
    match crate::ops::link_files(target) {
        Ok(files) => files,
        Err(_) => {
            let mut v = vec![target.to_path_buf()];
            if let Ok((dir, stem)) = split_name(target) {
                let flat = dir.join(format!("{stem}-flat.vmdk"));
                if flat.symlink_metadata().is_ok() {
                    v.push(flat);
                }
            }
            v
        }
    }
}

/// The journal of a swap onto `target`.
pub(crate) fn journal_of(target: &Path) -> PathBuf {
    hidden_beside(target, JOURNAL_SUFFIX)
}

fn hidden_beside(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}{suffix}"))
}

/// Records, before anything is staged for `target`, that files named `<prefix>...`
/// (hidden names in its folder) are about to be: a kill before the swap leaves them to
/// [`recover_folder`]. The caller holds the folder lock.
pub(crate) fn begin_staging(target: &Path, prefixes: &[PathBuf]) -> Result<fsio::swap::Staging> {
    Ok(fsio::swap::Staging::begin(
        &hidden_beside(target, STAGE_SUFFIX),
        prefixes,
    )?)
}

/// The prefix every file staged as `staged` (a disk: its descriptor and extents) starts with.
pub(crate) fn staged_prefix(staged: &Path) -> PathBuf {
    let name = staged
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    staged.with_file_name(name.strip_suffix(".vmdk").unwrap_or(name))
}

/// Finishes or undoes every disk swap a killed process left in `dir`. Cheap when there
/// is none (one folder listing).
///
/// # Errors
/// A journal that cannot be recovered (named in the error); [`Error::Io`] when another
/// process is swapping in the folder right now.
pub fn recover_folder(dir: &Path) -> Result<()> {
    if journals_in(dir, JOURNAL_SUFFIX)?.is_empty() && journals_in(dir, STAGE_SUFFIX)?.is_empty() {
        // Atomic writes a killed process left half done (their writer's pid is gone).
        fsio::remove_stale_temps(dir)?;
        return Ok(());
    }
    // Held: the process working in the folder is alive and cleans up after itself.
    let Ok(_lock) = FolderLock::take(dir, false) else {
        return Ok(());
    };
    let canon = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, "resolve folder", e))?;
    let accept = |p: &Path| {
        p == canon || p == dir || p.parent() == Some(canon.as_path()) || p.parent() == Some(dir)
    };
    for j in journals_in(dir, JOURNAL_SUFFIX)? {
        fsio::swap::recover(&j, &accept)?;
    }
    for r in journals_in(dir, STAGE_SUFFIX)? {
        fsio::swap::recover_staging(&r, &accept)?;
    }
    fsio::remove_stale_temps(dir)?;
    Ok(())
}

fn journals_in(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, "list folder", e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(suffix) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, "remove", e)),
    }
}

/// An exclusive flock on a folder (its own descriptor: no lock file is left behind).
pub(crate) struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Waits for the lock when `wait`, else fails at once when it is held.
    pub(crate) fn take(dir: &Path, wait: bool) -> Result<FolderLock> {
        let path = dir.to_path_buf();
        let file = File::open(dir).map_err(|e| Error::io(dir, "open folder to lock", e))?;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        loop {
            // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(FolderLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    return Err(Error::io(
                        &path,
                        "a disk in this folder is being replaced by another process",
                        err,
                    ))
                }
                _ => return Err(Error::io(&path, "lock", err)),
            }
        }
    }
}
