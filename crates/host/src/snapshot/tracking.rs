//! Changed-block tracking of a VM's disks (`ctkEnabled`): which file holds it, when it
//! moves with the disk and when it is lost.
//!
//! The tracking file (see [`vmdk::ctk`]) lies beside the link the .vmx names for the
//! disk, the one the VM writes. Operations that change that link without changing what
//! the guest sees carry it along: an offline snapshot moves it onto the new redo log, an
//! offline merge of that redo log moves it back onto the parent; while QEMU runs the VM,
//! the runtime does the same for live snapshots and commits and hands QEMU's dirty
//! bitmaps over (see the runtime's `tracking` module). Everything else loses it, and a
//! lost tracking is noticed, never guessed: a revert leaves the new link without a file,
//! a write by a tool that does not track changes the link's CID, a killed writer leaves
//! the file marked `writing`, a killed QEMU leaves it `live` for a session that no longer
//! runs; the next backup reads everything and says why.

use vmdk::ctk::{self, ChangeId, Status};
use vmx::DiskNode;

use super::LockedVm;
use crate::error::{Error, Result};
use crate::vm::PowerState;

/// What the tracking of one disk answered at a backup's checkpoint.
#[derive(Debug, Clone)]
pub struct DiskChanges {
    /// The disk.
    pub node: DiskNode,
    /// The change ID of the disk as the backup snapshot holds it; `None` when tracking is
    /// off for the disk.
    pub change_id: Option<ChangeId>,
    /// The areas (offset, length) changed since the ID asked for; `None`: read all.
    pub changed: Option<Vec<(u64, u64)>>,
    /// Why everything must be read, when tracking is on but could not answer.
    pub lost: Option<String>,
}

impl LockedVm<'_> {
    /// Turns changed-block tracking on or off (`vcb vm ctk enable|disable`). On: each
    /// disk the .vmx names starts a new tracking epoch (a valid one is kept); off: the
    /// tracking files are removed.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] while the VM runs; .vmx and file errors.
    pub fn set_change_tracking(&mut self, on: bool) -> Result<()> {
        self.require_not(
            PowerState::PoweredOn,
            "change tracking is switched while it is powered off",
        )?;
        self.vm
            .config
            .set_change_tracking(on)
            .map_err(|e| Error::vmx(&self.vm.vmx_path, e))?;
        self.save_vmx()?;
        let disk = |e| Error::disk("change tracking", e);
        if !on {
            // Every link of every chain: a file left on an old link is removed too.
            for link in self.vm.all_chains(self.host).into_iter().flatten() {
                ctk::forget(&link).map_err(disk)?;
            }
            return Ok(());
        }
        for d in self.vm.disks(self.host)? {
            if d.independent {
                ctk::forget(&d.path).map_err(disk)?;
            } else if !matches!(ctk::status(&d.path).map_err(disk)?, Status::Valid(_)) {
                ctk::start(&d.path).map_err(disk)?;
            }
        }
        Ok(())
    }

    /// Each disk's tracking in words: off, its next change ID, or why it was lost.
    ///
    /// # Errors
    /// Descriptor errors.
    pub fn tracking_status(&self) -> Result<Vec<(DiskNode, String)>> {
        let session = self.qemu_session();
        let mut out = Vec::new();
        for d in self.vm.disks(self.host)? {
            let text = if d.independent || !self.vm.config.change_tracking(d.node) {
                "tracking off".to_owned()
            } else {
                match ctk::status_for(&d.path, session.as_deref())
                    .map_err(|e| Error::disk("change tracking", e))?
                {
                    Status::Valid(t) => format!(
                        "tracking on, next change ID {} ({} KiB blocks)",
                        t.current(),
                        t.block_size() / 1024
                    ),
                    Status::Untracked => {
                        "tracking on, no tracking file (the next backup reads everything)"
                            .to_owned()
                    }
                    Status::Invalid(why) => {
                        format!("tracking lost: {why} (the next backup reads everything)")
                    }
                }
            };
            out.push((d.node, text));
        }
        Ok(out)
    }

    /// Hands out a change ID for every tracked disk as its links below the current one
    /// hold it (call right after the backup snapshot was taken), with the areas changed
    /// since the ID `since` gives for the disk. A disk whose tracking was lost starts a
    /// new epoch here and must be read whole.
    ///
    /// # Errors
    /// Descriptor and file errors.
    pub fn tracking_checkpoint(
        &mut self,
        since: &dyn Fn(DiskNode) -> Option<ChangeId>,
    ) -> Result<Vec<DiskChanges>> {
        let session = self.qemu_session();
        let mut out = Vec::new();
        for d in self.vm.disks(self.host)? {
            if d.independent || !self.vm.config.change_tracking(d.node) {
                continue;
            }
            let answer = checkpoint_disk(d.node, &d.path, since(d.node), session.as_deref())
                .map_err(|e| Error::disk("change tracking", e))?;
            out.push(answer);
        }
        Ok(out)
    }

    /// The tracking session of the QEMU running the VM, if it runs.
    fn qemu_session(&self) -> Option<String> {
        match self.vm.runtime(self.host).status() {
            Ok(runtime::RuntimeState::Running { pid }) => Some(ctk::qemu_session(pid)),
            _ => None,
        }
    }
}

/// [`LockedVm::tracking_checkpoint`] for the disk whose current link is `path`.
fn checkpoint_disk(
    node: DiskNode,
    path: &std::path::Path,
    since: Option<ChangeId>,
    session: Option<&str>,
) -> vmdk::Result<DiskChanges> {
    let (tracking, mut lost) = match ctk::status_for(path, session)? {
        Status::Valid(t) => (Some(t), None),
        Status::Untracked => (
            None,
            Some("the disk has no change-tracking file".to_owned()),
        ),
        Status::Invalid(why) => (None, Some(format!("change tracking was lost: {why}"))),
    };
    let mut changed = None;
    let mut t = match tracking {
        Some(t) => {
            match since.map(|id| t.changed_since(&id)) {
                Some(Ok(areas)) => changed = Some(areas),
                Some(Err(e)) => lost = Some(e.to_string()),
                None => lost = Some("no earlier change ID to compare with".to_owned()),
            }
            t
        }
        // A running VM's disk without valid tracking waits for its next power-on (the
        // bitmap belongs to QEMU); the backup reads everything.
        None if session.is_some() => {
            return Ok(DiskChanges {
                node,
                change_id: None,
                changed: None,
                lost,
            })
        }
        None => ctk::start(path)?,
    };
    let id = t.checkpoint();
    t.save(&ctk::ctk_path(path))?;
    Ok(DiskChanges {
        node,
        change_id: Some(id),
        changed,
        lost,
    })
}

/// Moves the tracking of `from` onto the link `to` that now shows the guest the same
/// content (a new offline redo log). A failure only loses the tracking, which the next
/// backup notices.
pub(super) fn carry(from: &std::path::Path, to: &std::path::Path) {
    if let Err(e) = ctk::carry(from, to) {
        tracing::warn!("{}: change tracking not carried over: {e}", to.display());
        let _ = ctk::forget(to);
    }
}

/// Before `child` is merged into `parent`: the child's tracking when it can be believed
/// and the merge is offline (a live one happens while QEMU's writes are untracked), and
/// no tracking file left on either.
pub(super) fn take_for_merge(
    offline: bool,
    child: &std::path::Path,
    parent: &std::path::Path,
) -> Option<std::result::Result<vmdk::ctk::Tracking, String>> {
    let status = child.exists().then(|| ctk::status(child));
    for link in [child, parent] {
        if let Err(e) = ctk::forget(link) {
            tracing::warn!("{e}");
        }
    }
    match status? {
        Ok(Status::Valid(t)) if offline => Some(Ok(t)),
        Ok(Status::Valid(_)) => None,
        Ok(Status::Untracked) => None,
        Ok(Status::Invalid(why)) => Some(Err(why)),
        Err(e) => Some(Err(e.to_string())),
    }
}

/// After a merge: `parent` is the link the guest sees through; it takes the tracking
/// (or the reason it was lost).
pub(super) fn give_after_merge(
    tracking: Option<std::result::Result<vmdk::ctk::Tracking, String>>,
    parent: &std::path::Path,
) {
    let given = match tracking {
        None => return,
        Some(Ok(t)) => ctk::rebind(t, parent),
        Some(Err(why)) => ctk::mark_lost(parent, &why),
    };
    if let Err(e) = given {
        tracing::warn!(
            "{}: change tracking not carried over: {e}",
            parent.display()
        );
        let _ = ctk::forget(parent);
    }
}
