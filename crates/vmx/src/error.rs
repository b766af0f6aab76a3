//! The crate's one error type.

use crate::node::DiskNode;

/// Everything that can go wrong while reading, validating or editing a VMware dictionary
/// file.
///
/// Line numbers are 1-based and count physical lines of the text handed to
/// [`Dict::parse`](crate::Dict::parse) (or, for a dictionary edited since, of its current
/// [`to_string`](std::string::ToString::to_string) output). The crate does no I/O, so the
/// caller adds the file's path when it reports an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is larger than [`MAX_INPUT_BYTES`](crate::MAX_INPUT_BYTES).
    #[error("input is {len_bytes} bytes, more than the limit of {max_bytes} bytes")]
    TooLarge {
        /// Size of the input.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A line is longer than [`MAX_LINE_BYTES`](crate::MAX_LINE_BYTES).
    #[error("line {line}: {len_bytes} bytes long, more than the limit of {max_bytes} bytes")]
    LineTooLong {
        /// The line (for a value being set: the line it would be written to).
        line: usize,
        /// Length of the line without its terminator.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The input is not valid UTF-8.
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 {
        /// First line holding an invalid byte sequence.
        line: usize,
    },
    /// A line that is neither blank, a comment nor `key = value`: no `=`, an empty key, a
    /// key with a `"` or control character, an unterminated quote, or text after the
    /// closing quote.
    #[error("line {line}: malformed entry {text:?}")]
    Malformed {
        /// The line.
        line: usize,
        /// The line's text (shortened to 80 characters).
        text: String,
    },
    /// The same key (compared case-insensitively) appears twice.
    #[error("line {line}: duplicate key {key:?} (first on line {first_line})")]
    DuplicateKey {
        /// The key as written on the second occurrence.
        key: String,
        /// Line of the second occurrence.
        line: usize,
        /// Line of the first occurrence.
        first_line: usize,
    },
    /// A value whose `|XX` escapes decode to bytes that are not UTF-8.
    #[error("line {line}: value of {key:?} decodes to invalid UTF-8")]
    InvalidEscape {
        /// The line.
        line: usize,
        /// The entry's key.
        key: String,
    },
    /// A key handed to a setter that could not be written and read back: empty, with
    /// surrounding whitespace, a leading `#`, or a `=`, `"` or control character.
    #[error("invalid key {key:?}")]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// A value that does not have the type or form its key requires.
    #[error("line {line}: {key} = {value:?}: {reason}")]
    InvalidValue {
        /// The line of the entry.
        line: usize,
        /// The entry's key.
        key: String,
        /// The (unescaped) value.
        value: String,
        /// What was expected, or why the value was refused.
        reason: String,
    },
    /// A key the file must have is missing.
    #[error("missing key {key:?}")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// Text that is not a UUID in either VMware's or the canonical form.
    #[error("invalid UUID {text:?}: expected 32 hex digits")]
    BadUuid {
        /// The text.
        text: String,
    },
    /// Text that is not a disk node such as `scsi0:1`.
    #[error("invalid disk node {text:?}: expected <scsi|ide|sata|nvme><n>:<unit>")]
    BadDiskNode {
        /// The text.
        text: String,
    },
    /// Text that is not a datastore path `[datastore] relative/path`.
    #[error("invalid datastore path {text:?}: {reason}")]
    BadDatastorePath {
        /// The text.
        text: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A file name that could leave the folder it is meant to stay in.
    #[error("unsafe file name {name:?}: {reason}")]
    UnsafeName {
        /// The name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Two snapshots share a uid.
    #[error("snapshot uid {uid} is used twice")]
    DuplicateSnapshotUid {
        /// The uid.
        uid: u64,
    },
    /// A snapshot names a parent that does not exist.
    #[error("snapshot {uid} has parent {parent}, which does not exist")]
    UnknownParent {
        /// The snapshot.
        uid: u64,
        /// The missing parent.
        parent: u64,
    },
    /// Following parents from a snapshot leads back to it.
    #[error("snapshot {uid} is its own ancestor")]
    SnapshotCycle {
        /// A snapshot on the cycle.
        uid: u64,
    },
    /// `snapshot.numSnapshots` disagrees with the snapshots present.
    #[error("snapshot.numSnapshots is {declared} but {found} snapshots are present")]
    SnapshotCountMismatch {
        /// The declared count.
        declared: u64,
        /// The number of `snapshotN` groups found.
        found: u64,
    },
    /// An operation named a snapshot uid that does not exist.
    #[error("no snapshot with uid {uid}")]
    UnknownSnapshot {
        /// The uid.
        uid: u64,
    },
    /// No uid is left for a new snapshot (`snapshot.lastUID` is at the maximum).
    #[error("snapshot uids are exhausted")]
    UidOverflow,
    /// A catalog whose major version this crate does not know.
    #[error("unsupported catalog version {found:?} (this build reads major version {supported})")]
    UnsupportedVersion {
        /// The version as written.
        found: String,
        /// The major version this build reads.
        supported: u32,
    },
    /// A catalog lists the same file name twice.
    #[error("file name {name:?} is listed twice")]
    DuplicateFileName {
        /// The name.
        name: String,
    },
    /// An operation named a disk node the VM does not have.
    #[error("the VM has no disk at {node}")]
    UnknownDisk {
        /// The node.
        node: DiskNode,
    },
    /// A disk was to be added at a node that already holds a device.
    #[error("{node} already holds a device")]
    NodeInUse {
        /// The node.
        node: DiskNode,
    },
}

impl Error {
    /// An [`Error::InvalidValue`] whose reason is `reason`'s message.
    pub(crate) fn invalid_value(
        line: usize,
        key: &str,
        value: &str,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::InvalidValue {
            line,
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// An [`Error::MissingKey`].
    pub(crate) fn missing(key: impl Into<String>) -> Self {
        Error::MissingKey { key: key.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_line_and_key() {
        let e = Error::invalid_value(7, "memsize", "lots", "expected an integer");
        assert_eq!(
            e.to_string(),
            "line 7: memsize = \"lots\": expected an integer"
        );
        let e = Error::DuplicateKey {
            key: "displayName".into(),
            line: 9,
            first_line: 2,
        };
        assert_eq!(
            e.to_string(),
            "line 9: duplicate key \"displayName\" (first on line 2)"
        );
    }

    #[test]
    fn missing_key_names_the_key() {
        assert!(matches!(Error::missing("uuid"), Error::MissingKey { key } if key == "uuid"));
    }
}
