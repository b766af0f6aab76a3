//! How backup and restore report what they do: an [`Observer`] the caller supplies.
//!
//! Libraries never print. The CLI renders [`Event`]s as lines and the progress of each
//! disk conversion as a bar; tests record them. Every method has a no-op default and
//! `()` implements the trait, so callers that do not care pass `&mut ()`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Something a backup or restore did or noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A hook ran successfully.
    HookRan {
        /// The hook.
        path: PathBuf,
        /// `pre-freeze` or `post-thaw`.
        stage: &'static str,
    },
    /// What changed-block tracking lets the backup skip, or why it reads everything.
    ChangeTracking {
        /// One line.
        text: String,
    },
    /// A leftover backup snapshot of an interrupted run was committed first.
    Consolidated {
        /// The VM's display name.
        vm: String,
    },
    /// The guest was quiesced through its agent (`guest-fsfreeze-freeze`, which also
    /// runs the guest's own freeze scripts).
    Quiesced {
        /// The VM's display name.
        vm: String,
        /// File systems the agent froze.
        filesystems: u64,
        /// How long the freeze took.
        elapsed: Duration,
    },
    /// The running VM's backup is not quiesced (crash-consistent), and why.
    NotQuiesced {
        /// The VM's display name.
        vm: String,
        /// Why (no guest agent, quiescing turned off, the freeze failed...).
        reason: String,
    },
    /// The guest was thawed after the snapshot.
    Thawed {
        /// The VM's display name.
        vm: String,
        /// From the freeze to the thaw.
        frozen_for: Duration,
        /// The freeze's timeout passed first and its watchdog thawed the guest (before
        /// the snapshot, or in the middle of it): the backup is not quiesced.
        by_watchdog: bool,
    },
    /// A guest an interrupted backup may have left frozen was thawed.
    ThawedLeftover {
        /// The VM's display name.
        vm: String,
    },
    /// The backup snapshot was taken.
    SnapshotTaken {
        /// The VM's display name.
        vm: String,
        /// Whether the VM was running (redo logs switched live).
        live: bool,
        /// How long taking it took.
        elapsed: Duration,
    },
    /// The backup snapshot was removed (its redo logs committed).
    SnapshotRemoved {
        /// The VM's display name.
        vm: String,
        /// Whether the VM was running (redo logs committed live).
        live: bool,
        /// How long removing it took.
        elapsed: Duration,
    },
    /// A file was saved into the backup (or restored from it).
    FileCopied {
        /// The file's name inside the backup.
        name: String,
        /// Its size in bytes.
        size_bytes: u64,
    },
    /// A disk was skipped (a physical RDM), with the reason.
    DiskSkipped {
        /// The disk node (`scsi0:1`).
        node: String,
        /// Why.
        reason: String,
    },
    /// The backup was verified against its catalog.
    Verified {
        /// Number of files checked.
        files: usize,
    },
    /// An existing file or VM was kept (conflict policy `keep`).
    Kept {
        /// What was kept.
        what: String,
    },
    /// An existing file or VM is replaced (conflict policy `overwrite`).
    Replaced {
        /// What is replaced.
        what: String,
    },
    /// A raw device mapping was recreated on restore.
    RdmRecreated {
        /// The mapping file.
        path: PathBuf,
        /// The device.
        device: PathBuf,
    },
    /// A backup point was written into a repository.
    Stored {
        /// The repository.
        location: String,
        /// The point's id.
        point: String,
        /// What was read, stored and reused.
        stats: repo::Stats,
    },
    /// Something worth telling that did not stop the work.
    Warning(String),
}

/// What to do about one conflict when the policy is `prompt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Replace what exists.
    Overwrite,
    /// Keep what exists and skip it.
    Keep,
    /// Stop before changing anything more.
    Abort,
}

/// Receiver of events, disk progress and conflict questions.
pub trait Observer {
    /// Something happened.
    fn event(&mut self, _event: &Event) {}

    /// A disk conversion starts, writing `dest`; `note` says how (`compact file` for an
    /// export, the provisioning for a restore). The seed prints
    /// `Converting "<dest>" (compact file):` and a bar. The returned progress receives
    /// that conversion's callbacks; breaking from it cancels the work.
    fn converting(&mut self, _dest: &Path, _note: &str) -> Box<dyn vmdk::Progress + '_> {
        Box::new(())
    }

    /// A disk is stored into a repository as `name`. The returned progress receives
    /// the bytes read, new and reused; breaking from it cancels the work.
    fn storing(&mut self, _name: &str) -> Box<dyn repo::StoreProgress + '_> {
        Box::new(())
    }

    /// Ask what to do about `what`, which exists already. `None` means nobody can
    /// answer (no terminal): the restore then fails with [`crate::Error::CannotPrompt`].
    fn ask(&mut self, _what: &str) -> Option<Answer> {
        None
    }

    /// True once the user asked to stop (SIGINT, SIGTERM): the work stops at the next
    /// step with [`crate::Error::Cancelled`], after undoing what must be undone (thaw,
    /// remove the snapshot, leave the destination incomplete).
    fn cancelled(&self) -> bool {
        false
    }
}

impl Observer for () {}

/// An observer that records everything (for tests and for callers that report later).
#[derive(Debug, Default)]
pub struct Recorder {
    /// The events, in order.
    pub events: Vec<Event>,
    /// The destination of every disk conversion, in order.
    pub converted: Vec<PathBuf>,
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event) {
        self.events.push(event.clone());
    }

    fn converting(&mut self, dest: &Path, _note: &str) -> Box<dyn vmdk::Progress + '_> {
        self.converted.push(dest.to_path_buf());
        Box::new(())
    }
}
