//! Backup points: what one backup of one VM stored (the manifest, `points/<group>/<id>`).
//!
//! A point is written last, with a conditional create, after every chunk and index it
//! names is durable: a point that exists is complete, and an interrupted backup leaves
//! no point at all. Its JSON (inside an envelope of kind 3) holds the VMware catalog of
//! the backup as text (every field a folder backup's `catalog` has), the configuration
//! files as chunk lists, and each disk as the id of its index.

use serde::{Deserialize, Serialize};

/// Manifest format version.
pub const POINT_VERSION: u32 = 1;

/// The VM a group of points belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Display name at the time of the backup.
    pub name: String,
    /// BIOS uuid (`uuid.bios`), the group's key when present.
    #[serde(default)]
    pub uuid: Option<String>,
}

/// A configuration file of the VM, stored as chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name in the backup (as in the catalog).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex (the catalog's).
    pub sha256: String,
    /// Chunk ids in order, hex.
    pub chunks: Vec<String>,
}

/// A disk of the VM, stored as an index of chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// Where it is attached (`scsi0:0`).
    pub node: String,
    /// Its name in the backup (the catalog's `filename`, `scsi0-0-0-vm.vmdk`).
    pub name: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Controller type (`ddb.adapterType`).
    pub adapter: String,
    /// The index object's id, hex (`indexes/<id>`).
    pub index: String,
    /// Bytes the index maps as data (before zero detection).
    pub data_bytes: u64,
    /// The disk's change ID (changed-block tracking) as this point holds it: the next
    /// backup reads only what changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
}

/// What a backup read and stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes read from the source (allocated data).
    pub read_bytes: u64,
    /// Bytes of chunks the repository lacked (before compression).
    pub new_bytes: u64,
    /// Bytes of chunks the repository had already.
    pub reused_bytes: u64,
    /// Bytes of new chunks as stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// Bytes that were zero (not stored).
    pub zero_bytes: u64,
    /// New chunks stored.
    pub new_chunks: u64,
    /// Chunks reused.
    pub reused_chunks: u64,
}

impl Stats {
    /// Add `other` into `self`.
    pub fn add(&mut self, other: &Stats) {
        self.read_bytes += other.read_bytes;
        self.new_bytes += other.new_bytes;
        self.reused_bytes += other.reused_bytes;
        self.stored_bytes += other.stored_bytes;
        self.zero_bytes += other.zero_bytes;
        self.new_chunks += other.new_chunks;
        self.reused_chunks += other.reused_chunks;
    }
}

/// A backup point's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// Format version ([`POINT_VERSION`]).
    pub version: u32,
    /// The point's id (16 hex digits).
    pub id: String,
    /// The VM group's id (32 hex digits, a keyed hash of the VM's uuid).
    pub group: String,
    /// The VM.
    pub vm: VmInfo,
    /// When the backup snapshot was taken (seconds since the Unix epoch).
    pub time: u64,
    /// When the point was written (nanoseconds since the Unix epoch): orders points of
    /// the same second.
    #[serde(default)]
    pub written_ns: u64,
    /// The host the VM ran on (the catalog's).
    #[serde(default)]
    pub host: Option<String>,
    /// The machine that ran the backup.
    pub hostname: String,
    /// Whether the guest was quiesced for the snapshot.
    pub quiesced: bool,
    /// Power state at the time (`poweredOn`, `poweredOff`, `suspended`).
    pub power_state: String,
    /// The backup's catalog, in VMware's catalog syntax.
    pub catalog: String,
    /// Configuration files.
    pub files: Vec<FileEntry>,
    /// Disks.
    pub disks: Vec<DiskEntry>,
    /// The point whose chunks this backup compared against.
    #[serde(default)]
    pub parent: Option<String>,
    /// What the backup read and stored.
    #[serde(default)]
    pub stats: Stats,
    /// The vcb version that wrote it.
    #[serde(default)]
    pub tool_version: String,
}

impl Point {
    /// The object name of a point.
    pub fn object_name(group: &str, id: &str) -> String {
        format!("points/{group}/{id}")
    }

    /// This point's object name.
    pub fn name(&self) -> String {
        Point::object_name(&self.group, &self.id)
    }

    /// The key points are ordered by (oldest first).
    pub fn order_key(&self) -> (u64, u64, &str) {
        (self.time, self.written_ns, &self.id)
    }

    /// Every chunk id the point uses (files and disks' indexes are separate: see
    /// [`crate::Repository::point_chunks`]), from its files.
    pub fn file_chunks(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter().map(String::as_str))
    }
}

/// The result of a `verify` run, stored as `verify/<point id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// When it ran.
    pub time: u64,
    /// Share of the point's chunks read, percent (100: all).
    pub percent: u32,
    /// Chunks read and authenticated.
    pub chunks_checked: u64,
    /// Damaged or missing chunks found (at most 1000 listed).
    pub bad_chunks: Vec<String>,
    /// True when nothing was wrong.
    pub ok: bool,
}
