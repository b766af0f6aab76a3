//! An opened chain of links: the disk a guest sees.
//!
//! Reads fall through unallocated ranges to the parent; writes go to the top link only,
//! with copy-on-write of partial grains from the links below. Parents are opened read-only
//! and checked: each child's `parentCID` must equal its parent's CID and capacities must
//! agree, so a chain whose parent changed behind a child's back is refused.

use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState};
use crate::link::{Link, OpenOptions};
use std::path::{Path, PathBuf};

/// Longest chain accepted (ESX allows 255 redo logs in a chain... and 32 snapshots).
pub const MAX_CHAIN_DEPTH: usize = 255;

/// A run of the disk in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    /// Start, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// State.
    pub state: BlockState,
}

/// An opened chain.
pub struct Disk {
    links: Vec<Link>,
    capacity: u64,
    closed: bool,
    /// Change tracking of a writable top link that has tracking to believe.
    tracker: Option<crate::ctk::Tracker>,
}

impl Disk {
    /// Open the disk whose descriptor (or monolithic sparse file) is `path`, following parents.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Disk> {
        // A disk replacement a killed process left half done is finished or undone first.
        crate::replace::recover_folder(&crate::confine::canonical_dir(path)?)?;
        let top = Link::open(path, opts.writable, opts)?;
        let capacity = top.capacity();
        let mut links = vec![top];
        let mut seen: Vec<PathBuf> = vec![canonical(path)];
        loop {
            let child = links.last().expect("chain has a top link");
            if !child.descriptor.has_parent() {
                break;
            }
            let hint = child
                .descriptor
                .parent_file_name_hint
                .as_deref()
                .unwrap_or_default();
            let parent_path = crate::link::resolve_name(&child.path, hint, "parent", opts)?;
            if !parent_path.exists() {
                return Err(Error::MissingParent {
                    path: child.path.clone(),
                    parent: parent_path,
                });
            }
            let canon = canonical(&parent_path);
            if seen.contains(&canon) {
                return Err(Error::ChainLoop {
                    path: child.path.clone(),
                    parent: parent_path,
                });
            }
            if links.len() >= MAX_CHAIN_DEPTH {
                return Err(Error::ChainTooDeep {
                    path: path.to_path_buf(),
                    max: MAX_CHAIN_DEPTH,
                });
            }
            if let Some(dir) = parent_path.parent() {
                crate::replace::recover_folder(dir)?;
            }
            let parent = Link::open_parent(&parent_path, opts)?;
            if parent.descriptor.cid != child.descriptor.parent_cid {
                return Err(Error::ParentCidMismatch {
                    path: child.path.clone(),
                    parent: parent_path,
                    expected: child.descriptor.parent_cid,
                    found: parent.descriptor.cid,
                });
            }
            if parent.capacity() != child.capacity() {
                return Err(Error::CapacityMismatch {
                    path: child.path.clone(),
                    parent: parent_path,
                    child: child.capacity(),
                    parent_capacity: parent.capacity(),
                });
            }
            seen.push(canon);
            links.push(parent);
        }
        let top = &links[0];
        let tracker = opts
            .writable
            .then(|| crate::ctk::Tracker::begin(&top.path, top.descriptor.cid, capacity))
            .flatten();
        Ok(Disk {
            links,
            capacity,
            closed: false,
            tracker,
        })
    }

    /// [`Disk::open`] for writing by a user's request: refused (see
    /// [`refuse_busy`](crate::refuse_busy)) while a running VM has the disk open or a
    /// redo log has it as parent.
    ///
    /// # Errors
    /// [`Error::DiskBusy`], and as for [`Disk::open`].
    pub fn open_exclusive(path: &Path, opts: &OpenOptions) -> Result<Disk> {
        crate::busy::refuse_busy(path, "write to")?;
        Disk::open(
            path,
            &OpenOptions {
                writable: true,
                ..opts.clone()
            },
        )
    }

    /// Open a raw image file (`.img`, `.raw`) as a one-link flat disk, read-only.
    pub fn open_raw(path: &Path) -> Result<Disk> {
        let len = crate::flat::device_size(path)?;
        if !len.is_multiple_of(crate::magic::SECTOR) {
            return Err(Error::InvalidArgument(format!(
                "{}: raw image size {len} is not a multiple of 512 bytes",
                path.display()
            )));
        }
        let link = Link::raw(path, len)?;
        Ok(Disk {
            links: vec![link],
            capacity: len,
            closed: false,
            tracker: None,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Do not renew the top link's CID on write (commit keeps the parent's CID so the chain
    /// above it stays valid at every step).
    pub(crate) fn keep_cid(&mut self) {
        self.links[0].cid_renewed = true;
    }

    /// The links, top first.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The top link's descriptor path.
    pub fn path(&self) -> &Path {
        &self.links[0].path
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(Error::OutOfRange {
                path: self.path().to_path_buf(),
                offset,
                len,
                capacity: self.capacity,
            }),
        }
    }

    /// Read `buf.len()` bytes at `offset` through the chain.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        read_links(&mut self.links, offset, buf)
    }

    /// Write `data` at `offset` into the top link.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let (top, below) = self.links.split_first_mut().expect("chain has a top link");
        if !top.writable {
            return Err(Error::ReadOnly {
                path: top.path.clone(),
                reason: "disk opened read-only",
            });
        }
        if let Some(t) = &mut self.tracker {
            t.writing()?;
            t.mark(offset, data.len() as u64);
        }
        top.renew_cid()?;
        let mut backing = ChainBacking { links: below };
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let end = top.extent_end(pos);
            let n =
                usize::try_from((end - pos).min((data.len() - done) as u64)).unwrap_or(usize::MAX);
            top.write_extent(pos, &data[done..done + n], &mut backing)?;
            done += n;
        }
        Ok(())
    }

    /// State of the longest run at `offset` (at most `max_len` bytes) merged across the chain:
    /// `Data` if some link holds data there before any link records zeros.
    pub fn map(&mut self, offset: u64, max_len: u64) -> Result<Run> {
        let max_len = max_len.min(self.capacity.saturating_sub(offset));
        let (state, len) = map_links(&mut self.links, offset, max_len)?;
        Ok(Run { offset, len, state })
    }

    /// State of the run at `offset` in the top link only (what a commit must copy).
    pub fn map_top(&mut self, offset: u64, max_len: u64) -> Result<Run> {
        let max_len = max_len.min(self.capacity.saturating_sub(offset));
        let (state, len) = self.links[0].map(offset, max_len)?;
        Ok(Run { offset, len, state })
    }

    /// The whole disk as merged runs (adjacent runs of one state joined).
    pub fn allocation(&mut self) -> Result<Vec<Run>> {
        self.runs(false)
    }

    /// The top link's own runs.
    pub fn top_allocation(&mut self) -> Result<Vec<Run>> {
        self.runs(true)
    }

    fn runs(&mut self, top_only: bool) -> Result<Vec<Run>> {
        let mut out: Vec<Run> = Vec::new();
        let mut pos = 0;
        while pos < self.capacity {
            let r = if top_only {
                self.map_top(pos, u64::MAX)?
            } else {
                self.map(pos, u64::MAX)?
            };
            match out.last_mut() {
                Some(last) if last.state == r.state && last.offset + last.len == r.offset => {
                    last.len += r.len
                }
                _ => out.push(r),
            }
            pos += r.len;
        }
        Ok(out)
    }

    /// Bytes in `Data` state across the chain.
    pub fn allocated_bytes(&mut self) -> Result<u64> {
        Ok(self
            .allocation()?
            .iter()
            .filter(|r| r.state == BlockState::Data)
            .map(|r| r.len)
            .sum())
    }

    /// Make writes durable (data before metadata, per extent).
    pub fn flush(&mut self) -> Result<()> {
        self.links[0].flush()?;
        self.record_changes()
    }

    /// Record this session's writes in the top link's change tracking (after the data
    /// they describe is durable).
    fn record_changes(&mut self) -> Result<()> {
        if let Some(t) = &mut self.tracker {
            t.record(self.links[0].descriptor.cid)?;
        }
        Ok(())
    }

    /// Flush and close cleanly (clears `uncleanShutdown`). Dropping without close leaves the
    /// crash marker set, as a killed process would.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        if self.links[0].writable {
            self.links[0].close()?;
            self.record_changes()?;
        }
        Ok(())
    }

    /// Every file of every link, top first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.links.iter().flat_map(|l| l.files()).collect()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if !self.closed && self.links.first().is_some_and(|l| l.writable) {
            // Best effort: keep written data, but leave uncleanShutdown set (no close()).
            let _ = self.links[0].flush();
        }
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn map_links(links: &mut [Link], offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
    let Some((link, below)) = links.split_first_mut() else {
        return Ok((BlockState::Unallocated, max_len));
    };
    let (state, len) = link.map(offset, max_len)?;
    if state == BlockState::Unallocated && !below.is_empty() {
        return map_links(below, offset, len);
    }
    Ok((state, len))
}

fn read_links(links: &mut [Link], offset: u64, buf: &mut [u8]) -> Result<()> {
    let Some((link, below)) = links.split_first_mut() else {
        buf.fill(0);
        return Ok(());
    };
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let want = ((buf.len() - done) as u64).min(link.extent_end(pos) - pos);
        let (state, len) = link.map(pos, want)?;
        let n = usize::try_from(len.min(want)).unwrap_or(usize::MAX);
        let piece = &mut buf[done..done + n];
        match state {
            BlockState::Data => link.read_data(pos, piece)?,
            BlockState::Zero => piece.fill(0),
            BlockState::Unallocated => read_links(below, pos, piece)?,
        }
        done += n;
    }
    Ok(())
}

struct ChainBacking<'a> {
    links: &'a mut [Link],
}

impl Backing for ChainBacking<'_> {
    fn read_backing(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_links(self.links, offset, buf)
    }
}
