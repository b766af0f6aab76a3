//! The crate's one error type. Every variant that concerns a file names it.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on a standalone host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A failure of the workspace's durable file helpers (atomic writes, swaps).
    #[error(transparent)]
    File(#[from] fsio::Error),
    /// An operating-system error on a named file.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done (`read`, `write`, `rename`...).
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The root folder holds no `host.toml`.
    #[error("{root}: no host here (run `vcb host init` first)")]
    NotInitialized {
        /// The root folder.
        root: PathBuf,
    },
    /// `host init` on a root that already has a `host.toml`.
    #[error("{root}: a host already exists here")]
    AlreadyInitialized {
        /// The root folder.
        root: PathBuf,
    },
    /// A host configuration, inventory, journal or bundle file that cannot be used.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file written by a newer vcb.
    #[error("{path}: version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A .vmx or .vmsd file that cannot be parsed or used.
    #[error("{path}: {source}")]
    Vmx {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        source: vmx::Error,
    },
    /// A virtual disk operation failed.
    #[error("{op}: {source}")]
    Disk {
        /// What was being done.
        op: String,
        /// The disk error (it names the disk file).
        source: vmdk::Error,
    },
    /// A name or path given by the user that cannot be used.
    #[error("invalid {what} {name:?}: {reason}")]
    BadName {
        /// What the name is for (`datastore name`, `folder path`...).
        what: &'static str,
        /// The name.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// No datastore with this name.
    #[error("no datastore named {name:?}")]
    UnknownDatastore {
        /// The name.
        name: String,
    },
    /// A datastore with this name or folder exists already.
    #[error("datastore {name:?} already exists")]
    DatastoreExists {
        /// The name.
        name: String,
    },
    /// A datastore still holds registered VMs.
    #[error("datastore {name:?} holds {count} registered VM(s)")]
    DatastoreInUse {
        /// The name.
        name: String,
        /// How many VMs are registered on it.
        count: usize,
    },
    /// A folder or resource pool that does not exist.
    #[error("no {what} {path:?}")]
    UnknownContainer {
        /// `VM folder` or `resource pool`.
        what: &'static str,
        /// The path.
        path: String,
    },
    /// A .vmx or .vmsd names a disk or file outside every datastore of the host.
    #[error("{file}: {reason} (refused)")]
    OutsideDatastores {
        /// The .vmx, .vmsd or descriptor naming it.
        file: PathBuf,
        /// The name as written.
        name: String,
        /// Why it is refused (see [`crate::Confined`]).
        reason: String,
    },
    /// A disk that a chain uses as a parent would be written.
    #[error("{disk}: it is the parent of {child} (VM {vm}): a parent with children is never written (refused)")]
    SharedParent {
        /// The disk.
        disk: PathBuf,
        /// The link whose parent it is.
        child: PathBuf,
        /// The VM whose chain it is.
        vm: String,
    },
    /// A file a VM needs does not exist.
    #[error("{path}: {what} is missing")]
    MissingFile {
        /// The path.
        path: PathBuf,
        /// What it is (`disk`, `.vmx file`...).
        what: &'static str,
    },
    /// A search found no VM.
    #[error("no virtual machine matches {spec:?}")]
    VmNotFound {
        /// The name or specifier.
        spec: String,
    },
    /// A search for one VM found several.
    #[error("{spec:?} matches {count} virtual machines (morefs {morefs}); use moref:N")]
    AmbiguousVm {
        /// The name or specifier.
        spec: String,
        /// How many matched.
        count: usize,
        /// Their morefs, comma-separated.
        morefs: String,
    },
    /// A specifier that cannot be parsed.
    #[error("invalid VM specifier {text:?}: {reason}")]
    BadSpecifier {
        /// The specifier.
        text: String,
        /// Why.
        reason: String,
    },
    /// The moref names no registered VM.
    #[error("no registered VM has moref {moref}")]
    NotRegistered {
        /// The moref.
        moref: u32,
    },
    /// The .vmx is registered already.
    #[error("{vmx} is registered already (moref {moref})")]
    AlreadyRegistered {
        /// The .vmx datastore path.
        vmx: String,
        /// Its moref.
        moref: u32,
    },
    /// A VM with this display name is registered already.
    #[error("a VM named {name:?} is registered already")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// The VM folder to create exists already.
    #[error("{path}: exists already")]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// Another process holds the lock.
    #[error("VM is busy: {path} is locked by another process")]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// The operation cannot run in the VM's power state.
    #[error("{vm}: the VM is {state}; {reason}")]
    WrongPowerState {
        /// The VM's display name.
        vm: String,
        /// Its state.
        state: crate::PowerState,
        /// Why that is a problem.
        reason: &'static str,
    },
    /// No snapshot with this name or uid.
    #[error("{vm}: no snapshot {name:?}")]
    UnknownSnapshot {
        /// The VM's display name.
        vm: String,
        /// The name or uid asked for.
        name: String,
    },
    /// Several snapshots have this name.
    #[error("{vm}: {count} snapshots are named {name:?}; give the uid instead")]
    AmbiguousSnapshot {
        /// The VM's display name.
        vm: String,
        /// The name.
        name: String,
        /// How many have it.
        count: usize,
    },
    /// The disk files of a VM do not form the tree the .vmx and .vmsd describe.
    #[error("{path}: {reason}")]
    BadChain {
        /// The disk concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Running the VM (QEMU, its monitor or its guest agent) failed.
    #[error("{vm}: {source}")]
    Runtime {
        /// The VM's display name.
        vm: String,
        /// The runtime's error (boxed: it is large and rare).
        source: Box<runtime::Error>,
    },
    /// QEMU runs the VM on a disk chain the operation cannot work with while it runs.
    #[error("{vm}: {reason}")]
    LiveChain {
        /// The VM's display name.
        vm: String,
        /// What is in the way.
        reason: String,
    },
    /// The VM has no disk that can be snapshotted.
    #[error(
        "{vm}: no disk can be snapshotted (independent and physical-mode RDM disks are excluded)"
    )]
    NothingToSnapshot {
        /// The VM's display name.
        vm: String,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// An [`Error::Disk`].
    pub(crate) fn disk(op: impl Into<String>, source: vmdk::Error) -> Self {
        Error::Disk {
            op: op.into(),
            source,
        }
    }

    /// An [`Error::Vmx`].
    pub(crate) fn vmx(path: impl Into<PathBuf>, source: vmx::Error) -> Self {
        Error::Vmx {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::BadFile`].
    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::BadName`].
    pub(crate) fn bad_name(what: &'static str, name: &str, reason: impl Into<String>) -> Self {
        Error::BadName {
            what,
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file() {
        let e = Error::io("/r/host.toml", "read", std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "/r/host.toml: read: boom");
        let e = Error::Busy {
            path: "/ds/vm/.vcb-lock".into(),
        };
        assert!(e.to_string().starts_with("VM is busy"));
        let e = Error::OutsideDatastores {
            file: "/ds/vm/vm.vmx".into(),
            name: "/etc/passwd".into(),
            reason: "\"/etc/passwd\" lies outside the host's datastores".into(),
        };
        assert_eq!(
            e.to_string(),
            "/ds/vm/vm.vmx: \"/etc/passwd\" lies outside the host's datastores (refused)"
        );
    }
}
