//! The crate's typed error. Every variant names the file it concerns.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong opening, reading, writing or creating a virtual disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A failure of the workspace's durable file helpers (atomic writes, swaps).
    #[error(transparent)]
    File(#[from] fsio::Error),
    /// A disk source that is not a VMDK file (a repository) failed; its message.
    #[error("{0}")]
    Source(String),
    /// An operating-system error on a named file.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done ("open", "read", "write", ...).
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ends before a structure it must contain.
    #[error(
        "{path}: truncated: {what} at byte {offset:#x} lies past end of file ({file_len} bytes)"
    )]
    Truncated {
        /// The file concerned.
        path: PathBuf,
        /// The structure that is missing.
        what: &'static str,
        /// Byte offset of the structure.
        offset: u64,
        /// Actual length of the file.
        file_len: u64,
    },
    /// Magic bytes do not match any known format.
    #[error("{path}: not a VMDK file (no descriptor, KDMV or COWD magic)")]
    NotVmdk {
        /// The file concerned.
        path: PathBuf,
    },
    /// A header field has a value this implementation refuses.
    #[error("{path}: invalid header: {field} = {value:#x}: {reason}")]
    BadHeader {
        /// The file concerned.
        path: PathBuf,
        /// The header field name as in VMware's documentation.
        field: &'static str,
        /// The offending value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A descriptor line could not be understood.
    #[error("{path}: descriptor line {line}: {reason}: {text:?}")]
    BadDescriptor {
        /// The file holding the descriptor.
        path: PathBuf,
        /// 1-based line number (0 when the problem concerns the whole descriptor).
        line: usize,
        /// What is wrong.
        reason: String,
        /// The line text (truncated to 120 characters).
        text: String,
    },
    /// An extent or parent file name leaves the disk's folder.
    #[error("{path}: {kind} {name:?} lies outside the disk's folder (refused; pass allow_outside_paths to permit)")]
    PathOutsideFolder {
        /// The descriptor naming the file.
        path: PathBuf,
        /// "extent" or "parent".
        kind: &'static str,
        /// The name found in the descriptor.
        name: String,
    },
    /// The disk may not be changed now (open in a running VM, or a parent of redo logs).
    #[error("{path}: {reason} (refused)")]
    DiskBusy {
        /// The disk.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A grain table entry points past the end of the extent file.
    #[error("{path}: GT {gt} entry {index} points past EOF (sector {sector:#x})")]
    GrainPastEof {
        /// The extent file.
        path: PathBuf,
        /// Grain table number (grain directory index).
        gt: u64,
        /// Entry within the table.
        index: u64,
        /// The sector the entry names.
        sector: u64,
    },
    /// A structural inconsistency in an extent's metadata.
    #[error("{path}: corrupt: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is inconsistent.
        reason: String,
    },
    /// The parent named by `parentFileNameHint` does not exist.
    #[error("{path}: parent disk {parent} not found")]
    MissingParent {
        /// The child's descriptor.
        path: PathBuf,
        /// The resolved parent path.
        parent: PathBuf,
    },
    /// The parent's CID differs from the child's `parentCID`.
    #[error("{path}: parentCID {expected:08x} does not match CID {found:08x} of parent {parent}: the parent virtual disk has been modified since the child was created")]
    ParentCidMismatch {
        /// The child's descriptor.
        path: PathBuf,
        /// The parent's descriptor.
        parent: PathBuf,
        /// parentCID recorded in the child.
        expected: u32,
        /// CID found in the parent.
        found: u32,
    },
    /// Parent and child capacities differ.
    #[error(
        "{path}: capacity {child} bytes differs from parent {parent} ({parent_capacity} bytes)"
    )]
    CapacityMismatch {
        /// The child's descriptor.
        path: PathBuf,
        /// The parent's descriptor.
        parent: PathBuf,
        /// The child's capacity in bytes.
        child: u64,
        /// The parent's capacity in bytes.
        parent_capacity: u64,
    },
    /// The chain refers back to a disk already in it.
    #[error("{path}: snapshot chain loops back to {parent}")]
    ChainLoop {
        /// The child's descriptor.
        path: PathBuf,
        /// The parent already in the chain.
        parent: PathBuf,
    },
    /// The chain is longer than any real one.
    #[error("{path}: snapshot chain deeper than {max} links")]
    ChainTooDeep {
        /// The top of the chain.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A read or write lies outside the disk.
    #[error("{path}: access of {len} bytes at offset {offset} is beyond the capacity ({capacity} bytes)")]
    OutOfRange {
        /// The disk.
        path: PathBuf,
        /// Byte offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Disk capacity in bytes.
        capacity: u64,
    },
    /// Writing was requested on something that cannot be written.
    #[error("{path}: read-only: {reason}")]
    ReadOnly {
        /// The disk or extent.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The request is valid VMDK but not supported by this operation.
    #[error("{path}: unsupported: {reason}")]
    Unsupported {
        /// The disk concerned.
        path: PathBuf,
        /// What is unsupported.
        reason: String,
    },
    /// A caller-supplied argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The destination of a create/convert/rename already exists.
    #[error("{path}: already exists")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The operation was cancelled through the progress callback.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
