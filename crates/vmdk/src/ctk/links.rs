//! The life of a tracking file beside its link: whether it can be believed, starting,
//! moving and dropping it, and recording one writer's changes into it.

use super::{ctk_path, State, Tracking};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What the change tracking of a disk link says.
#[derive(Debug)]
pub enum Status {
    /// The link has no tracking file.
    Untracked,
    /// It has one that cannot be believed, for this reason.
    Invalid(String),
    /// It has one that holds every write since its epoch began.
    Valid(Tracking),
}

/// The tracking state of the disk link `disk` (descriptor or monolithic sparse file).
///
/// # Errors
/// Errors reading the link's descriptor; a damaged tracking file is [`Status::Invalid`].
pub fn status(disk: &Path) -> Result<Status> {
    status_for(disk, None)
}

/// The session token a running QEMU (process `pid`) owns tracking files under.
pub fn qemu_session(pid: u32) -> String {
    format!("qemu-{pid}")
}

/// [`status`], where a file owned by the QEMU session `session` (running now) is valid
/// whatever the link's CID: that QEMU holds the writes not recorded yet, and hands them
/// over before it stops.
///
/// # Errors
/// As for [`status`].
pub fn status_for(disk: &Path, session: Option<&str>) -> Result<Status> {
    let tracking = match Tracking::load(&ctk_path(disk)) {
        Ok(None) => return Ok(Status::Untracked),
        Ok(Some(t)) => t,
        Err(e) => return Ok(Status::Invalid(e.to_string())),
    };
    let (desc, _) = crate::read_descriptor(disk)?;
    let leaf = file_name(disk);
    Ok(
        match tracking.invalid_reason_for(&leaf, desc.cid, desc.capacity_bytes(), session) {
            Some(reason) => Status::Invalid(reason),
            None => Status::Valid(tracking),
        },
    )
}

/// Start tracking the link `disk` afresh (a new epoch), replacing any tracking file.
///
/// # Errors
/// Errors reading the descriptor or writing the file.
pub fn start(disk: &Path) -> Result<Tracking> {
    let t = fresh(disk)?;
    t.save(&ctk_path(disk))?;
    Ok(t)
}

/// New tracking (a new epoch) bound to the link `disk` as it is now.
fn fresh(disk: &Path) -> Result<Tracking> {
    let (desc, _) = crate::read_descriptor(disk)?;
    Ok(Tracking::new(
        desc.capacity_bytes(),
        &file_name(disk),
        desc.cid,
    ))
}

/// Remove the tracking file of the link `disk`, if any (the link is deleted, renamed or
/// about to be written in a way no tracking follows).
///
/// # Errors
/// I/O errors other than "not found".
pub fn forget(disk: &Path) -> Result<()> {
    let path = ctk_path(disk);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "remove", e)),
    }
}

/// Move the valid tracking of `from` to the link `to`, whose guest-visible content is the
/// same (a new redo log over `from`, or the parent `from` was just committed into):
/// `to`'s name and current CID are recorded. Tracking that is not valid is dropped.
/// Returns whether tracking was carried.
///
/// # Errors
/// I/O errors; the file of `from` is removed in every case.
pub fn carry(from: &Path, to: &Path) -> Result<bool> {
    let status = status(from);
    forget(from)?;
    match status {
        Ok(Status::Valid(t)) => rebind(t, to).map(|()| true),
        Ok(Status::Invalid(reason)) => mark_lost(to, &reason).map(|()| false),
        Ok(Status::Untracked) => Ok(false),
        Err(e) => mark_lost(to, &e.to_string()).map(|()| false),
    }
}

/// Record at the link `disk` that its tracking was lost, and why (kept until tracking
/// starts again, so the next backup can say why it reads everything).
///
/// # Errors
/// Errors reading the descriptor or writing the file.
pub fn mark_lost(disk: &Path, reason: &str) -> Result<()> {
    let mut t = fresh(disk)?;
    t.state = State::Lost {
        reason: reason.to_owned(),
    };
    t.save(&ctk_path(disk))
}

/// Move the tracking of `from` to `to` while a QEMU session owns it (a live snapshot or
/// commit moved the disk onto another link): taken as it is, its validity is settled
/// when that QEMU stops. Tracking in any other state is carried as [`carry`] does.
///
/// # Errors
/// As for [`carry`].
pub fn move_live(from: &Path, to: &Path) -> Result<()> {
    match Tracking::load(&ctk_path(from)) {
        Ok(Some(t)) if matches!(t.state, State::Live { .. }) => {
            rebind(t, to)?;
            forget(from)
        }
        _ => carry(from, to).map(drop),
    }
}

/// Changes the tracking of the link `disk` with `change` when a QEMU session owns it
/// (state `live`); tracking in any other state, or none, is left alone. Returns whether
/// it was changed.
///
/// # Errors
/// Errors reading or writing the file.
pub fn update_live(disk: &Path, change: impl FnOnce(&mut Tracking)) -> Result<bool> {
    let path = ctk_path(disk);
    match Tracking::load(&path)? {
        Some(mut t) if matches!(t.state, State::Live { .. }) => {
            change(&mut t);
            t.save(&path)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Save `t` as the tracking of the link `to` (its name and current CID).
///
/// # Errors
/// Errors reading `to`'s descriptor or writing the file.
pub fn rebind(mut t: Tracking, to: &Path) -> Result<()> {
    let (desc, _) = crate::read_descriptor(to)?;
    if desc.capacity_bytes() != t.capacity {
        return forget(to);
    }
    t.leaf = file_name(to);
    t.cid = desc.cid;
    t.save(&ctk_path(to))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Records one writer's changes into the tracking file of the link it writes.
pub(crate) struct Tracker {
    path: PathBuf,
    tracking: Tracking,
    writing: bool,
}

impl Tracker {
    /// Before any write into `top` (whose CID is still `cid`): the tracker, when the
    /// link has a tracking file that can be believed. Untracked or invalid tracking is
    /// left as it is: the CID this write session gives the link keeps it invalid.
    pub(crate) fn begin(top: &Path, cid: u32, capacity: u64) -> Option<Tracker> {
        let path = ctk_path(top);
        let tracking = Tracking::load(&path).ok()??;
        if tracking
            .invalid_reason(&file_name(top), cid, capacity)
            .is_some()
        {
            return None;
        }
        Some(Tracker {
            path,
            tracking,
            writing: false,
        })
    }

    /// Before a write: the file says a writer is at work, so a crash before
    /// [`Tracker::record`] leaves it invalid rather than silently incomplete.
    pub(crate) fn writing(&mut self) -> Result<()> {
        if !self.writing {
            self.tracking.state = State::Writing {
                pid: std::process::id(),
            };
            self.tracking.save(&self.path)?;
            self.writing = true;
        }
        Ok(())
    }

    pub(crate) fn mark(&mut self, offset: u64, len: u64) {
        self.tracking.mark(offset, len);
    }

    /// After the written data is durable: record the writes and the link's new CID.
    pub(crate) fn record(&mut self, cid: u32) -> Result<()> {
        if self.writing {
            self.tracking.cid = cid;
            self.tracking.state = State::Clean;
            self.tracking.save(&self.path)?;
            self.writing = false;
        }
        Ok(())
    }
}
