//! Change-tracking files (`NAME-ctk.vmdk`): which blocks of a disk changed since a change ID.
//!
//! VMware's CBT keeps a `-ctk.vmdk` beside each disk and hands out change IDs
//! (`<uuid>/<sequence>`); `QueryChangedDiskAreas` answers "what changed since that ID".
//! vcb keeps the same shape in its own format (specified in `docs/format.md`):
//!
//! - one file per tracked disk, beside the link the VM writes (the chain's top), named
//!   after it ([`ctk_path`]); it records that link's file name and CID, so a file that does
//!   not belong to the disk as it is now is never believed;
//! - a *generation* per block: the sequence number that was current when the block was
//!   last written. [`Tracking::checkpoint`] hands out the current change ID and starts the
//!   next sequence, so "changed since `E/S`" is every block whose generation is above `S`.
//!   Keeping generations rather than one bitmap answers for any earlier change ID of the
//!   same epoch (a differential backup asks for an older one than an incremental does);
//! - an *epoch* (random UUID) that is replaced whenever tracking is lost or restarted: a
//!   change ID of another epoch is never answered, the caller reads everything;
//! - a state: `clean`, `writing` (a vcb process has the disk open for writing and has not
//!   recorded its writes yet) or `live` (a QEMU process owns the tracking). A file found
//!   `writing` or `live` whose owner is gone lost changes: it is invalid.
//!
//! The whole file is rewritten atomically (`fsio::write_atomic`) and ends with a CRC-32,
//! so a torn or damaged file reads as invalid, never as "nothing changed". Written by
//! hand: the format is this project's own.

mod links;

pub(crate) use links::Tracker;
pub use links::{
    carry, forget, mark_lost, move_live, qemu_session, rebind, start, status, status_for,
    update_live, Status,
};

use crate::error::{Error, Result};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every change-tracking file.
pub const CTK_MAGIC: &[u8; 8] = b"VCBCTK\r\n";
/// Format version written and understood.
pub const CTK_VERSION: u32 = 1;
/// Smallest block tracked (bytes): the grain size of sparse and COWD extents' tables.
pub const MIN_BLOCK: u64 = 64 * 1024;
/// Most blocks per disk: larger disks get larger blocks (2 TiB: 2 MiB blocks).
pub const MAX_BLOCKS: u64 = 1 << 20;
const MAX_HEADER: usize = 64 * 1024;

/// A change ID: the tracking epoch and a sequence number within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChangeId {
    /// The epoch (a random UUID, replaced whenever tracking restarts).
    pub epoch: [u8; 16],
    /// The sequence number.
    pub seq: u64,
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", uuid_text(&self.epoch), self.seq)
    }
}

impl std::str::FromStr for ChangeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<ChangeId> {
        let bad = || Error::InvalidArgument(format!("{s:?} is not a change ID (UUID/SEQUENCE)"));
        let (uuid, seq) = s.split_once('/').ok_or_else(bad)?;
        let hex: String = uuid.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || uuid.len() != 36 {
            return Err(bad());
        }
        let mut epoch = [0u8; 16];
        for (i, b) in epoch.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        let seq = seq.parse().map_err(|_| bad())?;
        Ok(ChangeId { epoch, seq })
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Who has the tracked disk open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum State {
    /// Every write is recorded.
    Clean,
    /// A vcb process (this pid) is writing and records its writes when it flushes.
    Writing {
        /// The writer's process id.
        pid: u32,
    },
    /// A QEMU process runs the disk; its dirty bitmap holds the writes not yet recorded.
    Live {
        /// The runtime's session token (see the runtime's state file).
        session: String,
    },
    /// Tracking was lost for this reason; the file only keeps the reason until tracking
    /// starts again.
    Lost {
        /// Why, in words.
        reason: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    version: u32,
    epoch: String,
    sequence: u64,
    capacity: u64,
    block_size: u64,
    leaf: String,
    cid: String,
    #[serde(flatten)]
    state: State,
}

/// The change-tracking state of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracking {
    epoch: [u8; 16],
    seq: u64,
    capacity: u64,
    block_size: u64,
    /// File name of the link this tracking belongs to.
    pub leaf: String,
    /// That link's CID when the tracking last recorded its writes.
    pub cid: u32,
    /// Who has the disk open.
    pub state: State,
    gens: Vec<u32>,
}

/// The change-tracking file of the disk link `disk` (`a/vm.vmdk` → `a/vm-ctk.vmdk`).
pub fn ctk_path(disk: &Path) -> PathBuf {
    let stem = disk.file_stem().map(|s| s.to_string_lossy().into_owned());
    disk.with_file_name(format!("{}-ctk.vmdk", stem.unwrap_or_default()))
}

/// True for a file name that is a change-tracking file rather than a disk.
pub fn is_ctk_name(name: &str) -> bool {
    name.ends_with("-ctk.vmdk")
}

/// Block size used for a disk of `capacity` bytes.
pub fn block_size_for(capacity: u64) -> u64 {
    let mut bs = MIN_BLOCK;
    while capacity.div_ceil(bs) > MAX_BLOCKS {
        bs *= 2;
    }
    bs
}

impl Tracking {
    /// Fresh tracking (new epoch) for a link of `capacity` bytes named `leaf` with `cid`.
    pub fn new(capacity: u64, leaf: &str, cid: u32) -> Tracking {
        let block_size = block_size_for(capacity);
        Tracking {
            epoch: rand::random(),
            seq: 1,
            capacity,
            block_size,
            leaf: leaf.to_string(),
            cid,
            state: State::Clean,
            gens: vec![0; blocks(capacity, block_size)],
        }
    }

    /// The change ID a checkpoint taken now would return.
    pub fn current(&self) -> ChangeId {
        ChangeId {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Capacity tracked, bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tracking granularity, bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Record a write of `len` bytes at `offset` in the current sequence.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 || offset >= self.capacity {
            return;
        }
        let first = offset / self.block_size;
        let last = (offset.saturating_add(len).min(self.capacity) - 1) / self.block_size;
        let seq = u32::try_from(self.seq).unwrap_or(u32::MAX);
        for g in &mut self.gens[first as usize..=last as usize] {
            *g = seq;
        }
    }

    /// Hand out the current change ID and start the next sequence: writes recorded from
    /// now on are "changed since" the returned ID.
    pub fn checkpoint(&mut self) -> ChangeId {
        let id = self.current();
        self.seq += 1;
        id
    }

    /// The areas (offset, length; merged, in order) written since `since`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `since` belongs to another epoch (tracking restarted
    /// since) or was never handed out.
    pub fn changed_since(&self, since: &ChangeId) -> Result<Vec<(u64, u64)>> {
        if since.epoch != self.epoch {
            return Err(Error::InvalidArgument(format!(
                "change ID {since} is from another tracking epoch (tracking was restarted since; the current one is {})",
                self.current()
            )));
        }
        if since.seq >= self.seq {
            return Err(Error::InvalidArgument(format!(
                "change ID {since} was never handed out (the next one is {})",
                self.current()
            )));
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, g) in self.gens.iter().enumerate() {
            if u64::from(*g) <= since.seq {
                continue;
            }
            let start = i as u64 * self.block_size;
            let len = self.block_size.min(self.capacity - start);
            match out.last_mut() {
                Some((o, l)) if *o + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        Ok(out)
    }

    /// Why this tracking cannot be believed for the link `leaf` whose CID is `cid` and
    /// capacity `capacity`; `None` when it can.
    pub fn invalid_reason(&self, leaf: &str, cid: u32, capacity: u64) -> Option<String> {
        self.invalid_reason_for(leaf, cid, capacity, None)
    }

    /// [`invalid_reason`](Self::invalid_reason), where tracking owned by the QEMU session
    /// `running` (running now) is believed whatever the link's CID: that QEMU holds the
    /// writes not recorded yet, and hands them over before it stops.
    pub fn invalid_reason_for(
        &self,
        leaf: &str,
        cid: u32,
        capacity: u64,
        running: Option<&str>,
    ) -> Option<String> {
        if self.leaf != leaf {
            return Some(format!("it belongs to {}, not {leaf}", self.leaf));
        }
        if self.capacity != capacity {
            return Some(format!(
                "the disk's size changed ({} to {capacity} bytes)",
                self.capacity
            ));
        }
        match &self.state {
            State::Writing { pid } => {
                return Some(format!(
                    "process {pid} was writing the disk and never recorded its writes"
                ))
            }
            State::Live { session } if running == Some(session.as_str()) => return None,
            State::Live { .. } => {
                return Some(
                    "the QEMU process running the disk ended without handing over its changes"
                        .into(),
                )
            }
            State::Lost { reason } => return Some(reason.clone()),
            State::Clean => {}
        }
        if self.cid != cid {
            return Some(format!(
                "the disk was written without tracking (CID {cid:08x}, tracking recorded {:08x})",
                self.cid
            ));
        }
        None
    }

    /// Read the change-tracking file at `path`; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// I/O errors and [`Error::Corrupt`] for a damaged or foreign file.
    pub fn load(path: &Path) -> Result<Option<Tracking>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, "read", e)),
        };
        Tracking::parse(&bytes)
            .map(Some)
            .map_err(|reason| Error::corrupt(path, format!("change-tracking file: {reason}")))
    }

    /// Write this tracking to `path` atomically.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<()> {
        fsio::write_atomic(path, &self.to_bytes()?)?;
        Ok(())
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// Only when compression fails (never for in-memory buffers).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            version: CTK_VERSION,
            epoch: uuid_text(&self.epoch),
            sequence: self.seq,
            capacity: self.capacity,
            block_size: self.block_size,
            leaf: self.leaf.clone(),
            cid: format!("{:08x}", self.cid),
            state: self.state.clone(),
        };
        let json = serde_json::to_vec(&header)
            .map_err(|e| Error::InvalidArgument(format!("change-tracking header: {e}")))?;
        let mut raw = Vec::with_capacity(self.gens.len() * 4);
        for g in &self.gens {
            raw.extend_from_slice(&g.to_le_bytes());
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&raw)
            .and_then(|_| z.finish())
            .map(|body| {
                let mut out = Vec::with_capacity(24 + json.len() + body.len());
                out.extend_from_slice(CTK_MAGIC);
                out.extend_from_slice(&(json.len() as u32).to_le_bytes());
                out.extend_from_slice(&json);
                out.extend_from_slice(&(body.len() as u64).to_le_bytes());
                out.extend_from_slice(&body);
                let mut crc = flate2::Crc::new();
                crc.update(&out);
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out
            })
            .map_err(|e| Error::InvalidArgument(format!("change-tracking body: {e}")))
    }

    /// Parse a file's bytes; the error is a reason for a one-line message.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Tracking, String> {
        let (content, tail) = bytes
            .split_last_chunk::<4>()
            .ok_or("shorter than its header")?;
        let mut crc = flate2::Crc::new();
        crc.update(content);
        if crc.sum() != u32::from_le_bytes(*tail) {
            return Err("checksum mismatch (torn or damaged)".into());
        }
        let rest = content
            .strip_prefix(CTK_MAGIC.as_slice())
            .ok_or("not a vcb change-tracking file (bad magic)")?;
        let (hlen, rest) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        let hlen = u32::from_le_bytes(*hlen) as usize;
        if hlen > MAX_HEADER || hlen > rest.len() {
            return Err(format!("header length {hlen} is out of range"));
        }
        let (json, rest) = rest.split_at(hlen);
        let h: Header = serde_json::from_slice(json).map_err(|e| format!("header: {e}"))?;
        if h.version != CTK_VERSION {
            return Err(format!(
                "version {} is not supported (this vcb reads {CTK_VERSION})",
                h.version
            ));
        }
        let (blen, body) = rest
            .split_first_chunk::<8>()
            .ok_or("truncated body length")?;
        if u64::from_le_bytes(*blen) != body.len() as u64 {
            return Err("body length does not match the file".into());
        }
        let t = Tracking::from_header(h)?;
        let want = t.gens.len() * 4;
        let mut raw = Vec::with_capacity(want);
        flate2::read::ZlibDecoder::new(body)
            .take(want as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|e| format!("body: {e}"))?;
        if raw.len() != want {
            return Err(format!("body holds {} bytes, {want} expected", raw.len()));
        }
        t.with_gens(&raw)
    }

    fn from_header(h: Header) -> std::result::Result<Tracking, String> {
        let epoch = format!("{}/0", h.epoch)
            .parse::<ChangeId>()
            .map_err(|_| format!("epoch {:?} is not a UUID", h.epoch))?
            .epoch;
        let cid = u32::from_str_radix(&h.cid, 16).map_err(|_| format!("CID {:?}", h.cid))?;
        if !h.block_size.is_power_of_two() || !(4096..=1 << 32).contains(&h.block_size) {
            return Err(format!("block size {} is out of range", h.block_size));
        }
        if h.capacity.div_ceil(h.block_size) > MAX_BLOCKS * 4 {
            return Err(format!(
                "{} bytes in {}-byte blocks are too many blocks",
                h.capacity, h.block_size
            ));
        }
        if h.sequence == 0 || h.sequence >= u64::from(u32::MAX) {
            return Err(format!("sequence {} is out of range", h.sequence));
        }
        if h.leaf.is_empty() || h.leaf.contains('/') {
            return Err(format!("leaf name {:?} is not a file name", h.leaf));
        }
        Ok(Tracking {
            epoch,
            seq: h.sequence,
            capacity: h.capacity,
            block_size: h.block_size,
            leaf: h.leaf,
            cid,
            state: h.state,
            gens: vec![0; blocks(h.capacity, h.block_size)],
        })
    }

    fn with_gens(mut self, raw: &[u8]) -> std::result::Result<Tracking, String> {
        for (g, b) in self.gens.iter_mut().zip(raw.chunks_exact(4)) {
            let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if u64::from(v) > self.seq {
                return Err(format!(
                    "a block's generation {v} is above the sequence {}",
                    self.seq
                ));
            }
            *g = v;
        }
        Ok(self)
    }
}

fn blocks(capacity: u64, block_size: u64) -> usize {
    usize::try_from(capacity.div_ceil(block_size)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
