//! The crate's one error type.

/// What can go wrong reading a guest's disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk under the volume could not be read.
    #[error("reading the disk at byte {offset}: {message}")]
    Read {
        /// Byte offset on the device.
        offset: u64,
        /// The underlying failure.
        message: String,
    },
    /// On-disk structures that make no sense (a hostile or damaged image).
    #[error("{what}: {why}")]
    Corrupt {
        /// The structure (e.g. "ext4 inode 12").
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A feature the reader does not implement.
    #[error("{what}: {feature} is not supported")]
    Unsupported {
        /// The structure.
        what: String,
        /// The feature.
        feature: String,
    },
    /// No such file or directory.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A path component that is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A limit that protects memory or time was reached.
    #[error("{what}: {why}")]
    Limit {
        /// The structure.
        what: String,
        /// The limit.
        why: String,
    },
}

impl Error {
    /// A corrupt-structure error.
    pub fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            why: why.into(),
        }
    }

    /// An unsupported-feature error.
    pub fn unsupported(what: impl Into<String>, feature: impl Into<String>) -> Error {
        Error::Unsupported {
            what: what.into(),
            feature: feature.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
