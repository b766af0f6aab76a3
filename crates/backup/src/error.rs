//! The crate's typed error. Every variant names the file, folder or VM it concerns.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong backing up or restoring a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A failure of the workspace's durable file helpers (atomic writes, swaps).
    #[error(transparent)]
    File(#[from] fsio::Error),
    /// An operating-system error on a named file or folder.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// What was being done ("open", "write", "rename", ...).
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A virtual disk operation failed.
    #[error(transparent)]
    Disk(#[from] vmdk::Error),
    /// The host refused or failed an operation (lookup, snapshot, registration...).
    #[error(transparent)]
    Host(#[from] host::Error),
    /// The SSH/SFTP transport of a remote (`scp://`) destination failed.
    #[error(transparent)]
    Remote(#[from] sftp::Error),
    /// A repository error.
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// A dictionary file (.vmx, .vmsd, catalog) could not be read or written.
    #[error("{path}: {source}")]
    Dict {
        /// The file concerned.
        path: PathBuf,
        /// The parse or validation error.
        source: vmx::Error,
    },
    /// A destination string this build cannot use (an unknown URL scheme).
    #[error("{spec}: {reason}")]
    UnsupportedDestination {
        /// The destination as given.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The backup destination already exists (backups never overwrite).
    #[error("{path}: destination already exists{hint}")]
    DestinationExists {
        /// The destination folder.
        path: PathBuf,
        /// Extra advice (for example: it is an interrupted backup).
        hint: String,
    },
    /// The folder the destination is to be created in does not exist.
    #[error("{path}: the parent folder of the destination does not exist")]
    DestinationParentMissing {
        /// The destination folder.
        path: PathBuf,
    },
    /// A backup without its catalog, or still marked incomplete.
    #[error("{path}: incomplete backup ({reason}): refusing to restore from it")]
    IncompleteBackup {
        /// The backup folder.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A file of the backup differs from what its catalog records.
    #[error("{location}: {name}: {what} mismatch (catalog says {expected}, found {found}): the backup is damaged or was tampered with")]
    Tampered {
        /// The backup folder.
        location: String,
        /// The file inside the backup.
        name: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// The catalog's value.
        expected: String,
        /// The value found.
        found: String,
    },
    /// A file the catalog needs is not in the backup.
    #[error("{location}: {name}: missing from the backup")]
    MissingFile {
        /// The backup folder.
        location: String,
        /// The file inside the backup.
        name: String,
    },
    /// A path from a catalog, .vmx or descriptor would leave the place it belongs to.
    #[error("{what} {name:?}: {reason}")]
    UnsafePath {
        /// Which entry the name came from.
        what: String,
        /// The offending name.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A hook script failed (a pre-freeze failure aborts the backup before any snapshot).
    #[error("hook {path} failed ({status}){stderr}")]
    HookFailed {
        /// The hook.
        path: PathBuf,
        /// Exit status or signal.
        status: String,
        /// What it wrote to stderr (prefixed with `: `), possibly empty.
        stderr: String,
    },
    /// A physical-compatibility RDM cannot be snapshotted, so the VM cannot be backed up whole.
    #[error("{vm}: disk {node} is a physical-compatibility RDM of {device} and cannot be snapshotted: nothing was changed (use --skip-physical-rdm to back up the other disks)")]
    PhysicalRdm {
        /// The VM's display name.
        vm: String,
        /// The disk's node (`scsi0:1`).
        node: String,
        /// The mapped device.
        device: PathBuf,
    },
    /// Restoring would touch something that exists and the policy says abort.
    #[error("{what} already exists: restore aborted before changing anything")]
    ConflictAbort {
        /// The existing file or VM.
        what: String,
    },
    /// The conflict policy is `prompt` but nobody can answer.
    #[error("{what} already exists and no answer can be asked for (no terminal): pass -l overwrite|keep|abort")]
    CannotPrompt {
        /// The existing file or VM.
        what: String,
    },
    /// The guest could not be thawed after the backup snapshot.
    #[error("{vm}: COULD NOT THAW THE GUEST ({reason}): the backup failed; the next vcb command that locks the VM retries the thaw, or thaw it by hand")]
    ThawFailed {
        /// The VM.
        vm: String,
        /// Both thaw errors.
        reason: String,
    },
    /// The registered VM a restore would replace runs or is suspended.
    #[error("{vm} is {state}: a restore never replaces a running or suspended VM (power it off first, or pass --power-off)")]
    TargetRunning {
        /// The VM.
        vm: String,
        /// Its power state.
        state: String,
    },
    /// A catalog entry names something the target host does not have or is inconsistent.
    #[error("{location}: catalog: {reason}")]
    BadCatalog {
        /// The catalog file.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The operation was cancelled through a progress callback.
    #[error("cancelled")]
    Cancelled,
    /// The host agent (a backup from a proxy) failed or refused; its one-line cause.
    #[error("{0}")]
    Agent(String),
}

impl Error {
    /// Whether a remote destination refused to connect because the server's host key is
    /// not in known_hosts (callers can suggest accepting it).
    pub fn is_unknown_host_key(&self) -> bool {
        matches!(self, Error::Remote(sftp::Error::UnknownHostKey { .. }))
    }

    /// An I/O error on `path` during `op`.
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// A dictionary error in the file at `path`.
    pub fn dict(path: impl Into<PathBuf>, source: vmx::Error) -> Error {
        Error::Dict {
            path: path.into(),
            source,
        }
    }

    /// A refused path.
    pub fn unsafe_path(
        what: impl Into<String>,
        name: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::UnsafePath {
            what: what.into(),
            name: name.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_they_concern() {
        let e = Error::io(
            "/x/y",
            "open",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.to_string().starts_with("/x/y: open:"));
        let e = Error::Tampered {
            location: "/b".into(),
            name: "vm.vmx".into(),
            what: "sha256",
            expected: "aa".into(),
            found: "bb".into(),
        };
        assert!(e.to_string().contains("vm.vmx: sha256 mismatch"));
        let e = Error::unsafe_path("file.0.name", "../x", "leaves the backup folder");
        assert!(matches!(e, Error::UnsafePath { .. }));
        assert!(e.to_string().contains("\"../x\""));
    }
}
