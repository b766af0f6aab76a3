//! [`SnapshotDb`]: the typed view of a .vmsd snapshot database.
//!
//! ```text
//! snapshot.lastUID = "4"            highest uid ever assigned
//! snapshot.current = "2"            the snapshot the running state descends from
//! snapshot.numSnapshots = "1"       number of snapshotN groups
//! snapshot0.uid = "2"               N is a dense index, the uid is the identity
//! snapshot0.filename = "vps-Snapshot2.vmsn"
//! snapshot0.displayName = "test1"
//! snapshot0.description = ""
//! snapshot0.parent = "1"            only when it has a parent snapshot
//! snapshot0.createTimeHigh = "310596"
//! snapshot0.createTimeLow = "938781285"   (High << 32) + (Low as u32) microseconds
//! snapshot0.numDisks = "1"
//! snapshot0.disk0.fileName = "vps.vmdk"   the disk as it was when the snapshot was taken
//! snapshot0.disk0.node = "scsi0:0"
//! ```

use std::collections::HashMap;

use crate::keys::strip_prefix_ci;
use crate::node::parse_canonical_u32;
use crate::{Dict, DiskNode, Error};

mod read;
mod tree;

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The snapshot's identity (`snapshotN.uid`); [`SnapshotDb::add`] assigns it.
    pub uid: u64,
    /// `displayName`.
    pub display_name: String,
    /// `description`.
    pub description: String,
    /// The parent snapshot's uid; `None` for a root.
    pub parent: Option<u64>,
    /// Creation time, microseconds since the Unix epoch.
    pub create_time_micros: u64,
    /// `filename`: the .vmsn state file. Untrusted: confine it before use.
    pub filename: String,
    /// `diskM.node` and `diskM.fileName`: each disk as it was when the snapshot was taken.
    /// Untrusted file names: confine them before use.
    pub disks: Vec<(DiskNode, String)>,
}

/// A .vmsd file: the snapshot tree over the [`Dict`] holding everything else.
///
/// Loading checks that uids are unique, parents exist, there is no cycle, and
/// `snapshot.numSnapshots` matches. [`SnapshotDb::to_dict`] writes the snapshot keys as
/// one fresh section with dense `snapshotN` indexes, placed where the old section began;
/// other keys and comments stay as they were. Per-snapshot keys this crate does not know
/// (`snapshotN.type`...) are kept with their snapshot; the UI-only `snapshot.mruN`
/// list is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotDb {
    dict: Dict,
    last_uid: u64,
    current: Option<u64>,
    snapshots: Vec<Snapshot>,
    /// Unknown per-snapshot keys by uid: (suffix after `snapshotN.`, value).
    extras: HashMap<u64, Vec<(String, String)>>,
}

impl SnapshotDb {
    /// An empty database.
    pub fn new() -> SnapshotDb {
        SnapshotDb::default()
    }

    /// Reads and validates a .vmsd dictionary.
    ///
    /// # Errors
    /// [`Error::MissingKey`] (a snapshot without `uid` or `filename`, a disk without
    /// `fileName` or `node`), [`Error::InvalidValue`], [`Error::DuplicateSnapshotUid`],
    /// [`Error::UnknownParent`], [`Error::SnapshotCycle`],
    /// [`Error::SnapshotCountMismatch`] and [`Error::UnknownSnapshot`] (for
    /// `snapshot.current`).
    pub fn from_dict(dict: &Dict) -> Result<SnapshotDb, Error> {
        read::from_dict(dict)
    }

    /// The snapshots, in file order.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The snapshot with `uid`.
    pub fn get(&self, uid: u64) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.uid == uid)
    }

    /// The first snapshot, in file order, whose display name is `name`.
    pub fn find_by_name(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.display_name == name)
    }

    /// `snapshot.current`: the snapshot the VM's running state descends from.
    pub fn current(&self) -> Option<u64> {
        self.current
    }

    /// `snapshot.lastUID`: the highest uid ever assigned.
    pub fn last_uid(&self) -> u64 {
        self.last_uid
    }

    /// Adds `snapshot` under a new uid (one past the highest used) and returns it. The
    /// `uid` field is ignored; `parent`, if set, must exist. The current snapshot does not
    /// change.
    ///
    /// # Errors
    /// [`Error::UnknownParent`], [`Error::UidOverflow`].
    pub fn add(&mut self, mut snapshot: Snapshot) -> Result<u64, Error> {
        let highest = self
            .snapshots
            .iter()
            .map(|s| s.uid)
            .fold(self.last_uid, u64::max);
        let uid = highest.checked_add(1).ok_or(Error::UidOverflow)?;
        if let Some(parent) = snapshot.parent {
            if self.get(parent).is_none() {
                return Err(Error::UnknownParent { uid, parent });
            }
        }
        snapshot.uid = uid;
        self.snapshots.push(snapshot);
        self.last_uid = uid;
        Ok(uid)
    }

    /// Removes the snapshot `uid` from the tree: its children take its parent, and if it
    /// was current, its parent becomes current. Returns the removed snapshot.
    ///
    /// # Errors
    /// [`Error::UnknownSnapshot`].
    pub fn remove(&mut self, uid: u64) -> Result<Snapshot, Error> {
        let i = self
            .snapshots
            .iter()
            .position(|s| s.uid == uid)
            .ok_or(Error::UnknownSnapshot { uid })?;
        let removed = self.snapshots.remove(i);
        for child in self.snapshots.iter_mut().filter(|s| s.parent == Some(uid)) {
            child.parent = removed.parent;
        }
        if self.current == Some(uid) {
            self.current = removed.parent;
        }
        self.extras.remove(&uid);
        Ok(removed)
    }

    /// Sets `snapshot.current`; `None` removes it.
    ///
    /// # Errors
    /// [`Error::UnknownSnapshot`].
    pub fn set_current(&mut self, uid: Option<u64>) -> Result<(), Error> {
        if let Some(uid) = uid {
            if self.get(uid).is_none() {
                return Err(Error::UnknownSnapshot { uid });
            }
        }
        self.current = uid;
        Ok(())
    }

    /// Records `file` as the disk at `node` of snapshot `uid` (`snapshotN.diskM.fileName`),
    /// e.g. after the disk file was renamed or moved. Every disk entry of that snapshot at
    /// `node` changes (a well-formed .vmsd has one); nothing else does. The name is not
    /// checked here: [`SnapshotDb::to_dict`] reports one too long to write.
    ///
    /// # Errors
    /// [`Error::UnknownSnapshot`] if there is no snapshot `uid`; [`Error::UnknownDisk`] if
    /// it records no disk at `node`. Nothing changes on error.
    pub fn set_disk_file(&mut self, uid: u64, node: DiskNode, file: &str) -> Result<(), Error> {
        let snapshot = self
            .snapshots
            .iter_mut()
            .find(|s| s.uid == uid)
            .ok_or(Error::UnknownSnapshot { uid })?;
        let mut found = false;
        for (_, disk_file) in snapshot.disks.iter_mut().filter(|(n, _)| *n == node) {
            file.clone_into(disk_file);
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(Error::UnknownDisk { node })
        }
    }

    /// The children of `parent` (the roots for `None`), in file order.
    pub fn children(&self, parent: Option<u64>) -> impl Iterator<Item = &Snapshot> {
        self.snapshots.iter().filter(move |s| s.parent == parent)
    }

    /// Every snapshot in depth-first pre-order from the roots, with its depth (0 for a
    /// root). Siblings come in file order.
    pub fn walk(&self) -> Vec<(usize, &Snapshot)> {
        tree::walk(&self.snapshots)
    }

    /// The .vmsd dictionary with a freshly written snapshot section.
    ///
    /// # Errors
    /// [`Error::LineTooLong`] if a name or description is too long to write.
    pub fn to_dict(&self) -> Result<Dict, Error> {
        let mut dict = self.dict.clone();
        let at = dict
            .remove_where(is_managed_key)
            .map_or(usize::MAX, |(first, _)| first);
        let mut entries = Vec::new();
        if dict.is_empty() {
            entries.push((".encoding".to_owned(), "UTF-8".to_owned()));
        }
        entries.push(("snapshot.lastUID".to_owned(), self.last_uid.to_string()));
        if let Some(current) = self.current {
            entries.push(("snapshot.current".to_owned(), current.to_string()));
        }
        for (i, snapshot) in self.snapshots.iter().enumerate() {
            let extras = self
                .extras
                .get(&snapshot.uid)
                .map_or(&[][..], Vec::as_slice);
            write_snapshot(&mut entries, i, snapshot, extras);
        }
        let count = self.snapshots.len().to_string();
        entries.push(("snapshot.numSnapshots".to_owned(), count));
        dict.insert_at(at, &entries)?;
        Ok(dict)
    }
}

/// Keys [`SnapshotDb::to_dict`] rewrites.
fn is_managed_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "snapshot.lastuid" | "snapshot.current" | "snapshot.numsnapshots"
    ) || lower.starts_with("snapshot.mru")
        || group_key(key).is_some()
}

/// For `snapshotN.rest`: N (canonical decimal) and `rest`. `Some(Err)` for a `snapshot`
/// followed by digits that are not a valid index.
fn group_key(key: &str) -> Option<Result<(u32, &str), ()>> {
    let rest = strip_prefix_ci(key, "snapshot")?;
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (index, suffix) = rest.split_once('.')?;
    Some(parse_canonical_u32(index).map(|n| (n, suffix)).ok_or(()))
}

fn write_snapshot(
    out: &mut Vec<(String, String)>,
    i: usize,
    s: &Snapshot,
    extras: &[(String, String)],
) {
    let mut put = |suffix: &str, value: String| out.push((format!("snapshot{i}.{suffix}"), value));
    put("uid", s.uid.to_string());
    put("filename", s.filename.clone());
    if let Some(parent) = s.parent {
        put("parent", parent.to_string());
    }
    put("displayName", s.display_name.clone());
    put("description", s.description.clone());
    let high = s.create_time_micros >> 32;
    let low = u32::try_from(s.create_time_micros & 0xFFFF_FFFF).unwrap_or_default();
    // VMware writes the low word as a signed 32-bit number.
    let low = i32::from_be_bytes(low.to_be_bytes());
    put("createTimeHigh", high.to_string());
    put("createTimeLow", low.to_string());
    put("numDisks", s.disks.len().to_string());
    for (m, (node, file)) in s.disks.iter().enumerate() {
        put(&format!("disk{m}.fileName"), file.clone());
        put(&format!("disk{m}.node"), node.to_string());
    }
    for (suffix, value) in extras {
        put(suffix, value.clone());
    }
}

#[cfg(test)]
mod tests;
