//! Backups that change-block tracking guides: which chunks a backup takes over from the
//! base point unread and which it patches with the changed areas (see
//! [`BackupWriter::put_disk_tracked`]).

use crate::error::Result;
use crate::index::{DiskIndex, Entry};
use crate::writer::BackupWriter;

/// What a tracked backup does with one chunk of a disk.
#[derive(Debug, Clone)]
pub(crate) enum ChunkPlan {
    /// Unchanged since the base point: its entry, unread.
    Keep(Entry),
    /// Changed in these areas (absolute offsets): the base point's chunk with the areas
    /// read from the disk over it.
    Patch(Entry, Vec<(u64, u64)>),
}

/// What change tracking says of a disk being stored.
#[derive(Debug, Clone, Default)]
pub struct DiskChanges {
    /// The disk's change ID as this backup reads it (recorded in the point).
    pub change_id: Option<String>,
    /// The areas (offset, length) changed since the base point's change ID of the same
    /// disk ([`BackupWriter::base_change_id`]); `None`: read everything.
    pub changed: Option<Vec<(u64, u64)>>,
}

impl BackupWriter {
    /// The change ID the base point recorded for the disk at `node`: the one to ask
    /// change tracking about for [`put_disk_tracked`](Self::put_disk_tracked).
    pub fn base_change_id(&self, node: &str) -> Option<&str> {
        let base = self.base.as_ref()?;
        let disk = base.disks.iter().find(|d| d.node == node)?;
        disk.change_id.as_deref()
    }

    /// What to do with each chunk of `index` given change tracking's answer: keep the
    /// base point's entry when no changed area touches it, else patch the base's chunk
    /// with the changed areas read from the disk. `None` (read everything) without
    /// areas or without a base disk of the same node, size and chunk size.
    pub(crate) fn chunk_plans(
        &self,
        node: &str,
        index: &DiskIndex,
        changes: &DiskChanges,
    ) -> Result<Option<Vec<ChunkPlan>>> {
        let (Some(changed), Some(base)) = (&changes.changed, &self.base) else {
            return Ok(None);
        };
        let Some(disk) = base.disks.iter().find(|d| d.node == node) else {
            return Ok(None);
        };
        let base_index = self.repo.load_index(&disk.index)?;
        if base_index.capacity != index.capacity || base_index.chunk_size != index.chunk_size {
            return Ok(None);
        }
        let mut plan: Vec<ChunkPlan> = base_index
            .entries
            .iter()
            .map(|e| ChunkPlan::Keep(*e))
            .collect();
        let cs = u64::from(index.chunk_size);
        for &(start, len) in changed {
            let end = start.saturating_add(len).min(index.capacity);
            let mut pos = start;
            while pos < end {
                let i = (pos / cs) as usize;
                let piece_end = end.min((i as u64 + 1) * cs);
                let Some(slot) = plan.get_mut(i) else { break };
                match slot {
                    ChunkPlan::Keep(e) => {
                        *slot = ChunkPlan::Patch(*e, vec![(pos, piece_end - pos)])
                    }
                    ChunkPlan::Patch(_, areas) => areas.push((pos, piece_end - pos)),
                }
                pos = piece_end;
            }
        }
        Ok(Some(plan))
    }
}
