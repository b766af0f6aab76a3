//! vcb's deduplicating backup repository.
//!
//! A repository holds backup points of many VMs. Each point is a manifest naming the
//! VM's configuration files (as lists of chunks) and its disks (as indexes of fixed-size
//! chunks aligned to the disk's offsets, with the allocation map). Chunks are stored once
//! per repository under a keyed hash of their content, compressed with zstd and
//! encrypted with AES-256-GCM; all-zero and unallocated pieces are not stored at all.
//! The format is specified in `docs/repository.md`.
//!
//! - [`Repository`]: init, open (passphrase or paper key), keys, points, objects.
//! - [`BackupWriter`]: writes a point (disks from any [`vmdk::DiskSource`]).
//! - [`RepoDisk`] / [`BlobReader`]: read a point's disks and files back.
//! - [`verify`], [`check`], [`prune`], [`gc`], [`copy`]: integrity, retention, space,
//!   off-site copies.
//! - Backends: [`backend::Local`], [`backend::SftpBackend`], [`backend::S3`].
//!
//! Writers and the garbage collector may run at the same time; the protocol that keeps
//! the collector from deleting what a writer relies on is in [`session`].
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod backend;
pub mod check;
mod config;
pub mod copy;
pub mod crypto;
mod error;
pub mod gc;
pub mod index;
mod keyring;
pub mod keys;
pub mod markset;
mod pipeline;
pub mod point;
pub mod prune;
pub mod reader;
mod repository;
pub mod session;
mod tracked;
pub mod verify;
pub mod writer;

pub use backend::{Backend, BackendOptions, PutMode};
pub use config::{
    parse_config, read_config, Config, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, FORMAT_VERSION,
};
pub use error::{BackendKind, Error, Result};
pub use keys::KdfParams;
pub use point::{DiskEntry, FileEntry, Point, Stats, VerifyRecord, VmInfo};
pub use reader::{BlobReader, RepoDisk};
pub use repository::{InitOptions, Repository, Unlock};
pub use writer::{Advance, BackupWriter, DiskChanges, PointInfo, StoreProgress, WriterOptions};

/// Progress of long repository work (verify, check, gc, prune, copy), rendered by the
/// caller: named phases, each with an optional total, and counts.
pub trait Progress {
    /// A phase starts; `total` items (or bytes) will be counted when known.
    fn phase(&mut self, _name: &str, _total: Option<u64>) {}
    /// `n` more items done in the current phase.
    fn advance(&mut self, _n: u64) {}
    /// Whether the user asked to stop (checked between items).
    fn cancelled(&self) -> bool {
        false
    }
}

impl Progress for () {}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
