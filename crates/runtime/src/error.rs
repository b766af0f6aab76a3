//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

use vmx::DiskNode;

/// Everything that can go wrong while running a VM. Each variant names the file, socket,
/// command or disk node involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or socket.
        path: PathBuf,
        /// What was being done (`read`, `connect`, `create`...).
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The .vmx could not be parsed or has a value of the wrong form.
    #[error("{path}: {source}")]
    Vmx {
        /// The .vmx file.
        path: PathBuf,
        /// The cause.
        source: vmx::Error,
    },
    /// A disk operation (creating or deleting a redo log, reading a descriptor) failed.
    #[error("{what}: {source}")]
    Vmdk {
        /// What was being done, with the disk's path.
        what: String,
        /// The cause.
        source: vmdk::Error,
    },
    /// The .vmx asks for something this runtime cannot map to QEMU.
    #[error("{vmx}: {key}: {reason}")]
    Unsupported {
        /// The .vmx file.
        vmx: PathBuf,
        /// The key (or key prefix) concerned.
        key: String,
        /// Why.
        reason: String,
    },
    /// The QEMU program could not be started at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// QEMU started but exited (or never answered) before the VM was up.
    #[error("{vmx}: QEMU failed to start ({status}): {output}\ncommand: {command}")]
    StartFailed {
        /// The .vmx file.
        vmx: PathBuf,
        /// The command line, shell-quoted.
        command: String,
        /// Exit status, or `no answer on the QMP socket after N s`.
        status: String,
        /// What QEMU wrote to vmware.log during the attempt.
        output: String,
    },
    /// The operation needs a running VM.
    #[error("{vmx}: the VM is not running")]
    NotRunning {
        /// The .vmx file.
        vmx: PathBuf,
    },
    /// The operation needs a VM that is off, and it runs.
    #[error("{vmx}: the VM is already running (QEMU pid {pid})")]
    AlreadyRunning {
        /// The .vmx file.
        vmx: PathBuf,
        /// QEMU's process id.
        pid: u32,
    },
    /// The operation needs a suspended VM and there is no suspend file.
    #[error("{vmx}: the VM is not suspended ({vmss} does not exist)")]
    NotSuspended {
        /// The .vmx file.
        vmx: PathBuf,
        /// The suspend file looked for.
        vmss: PathBuf,
    },
    /// The operation needs a VM without a suspend file, and it has one.
    #[error("{vmx}: the VM is suspended ({vmss}); resume it or discard its suspended state")]
    SuspendedState {
        /// The .vmx file.
        vmx: PathBuf,
        /// The suspend file.
        vmss: PathBuf,
    },
    /// QEMU answered a QMP command with an error.
    #[error("{socket}: QMP {command}: {class}: {desc}")]
    Qmp {
        /// The QMP socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`...).
        class: String,
        /// QEMU's message.
        desc: String,
    },
    /// The guest agent answered a command with an error.
    #[error("{socket}: guest agent {command}: {class}: {desc}")]
    Agent {
        /// The guest agent socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// The agent's error class.
        class: String,
        /// The agent's message.
        desc: String,
    },
    /// A peer (QMP or guest agent) sent something that does not follow the protocol, or
    /// closed the connection.
    #[error("{socket}: {reason}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Something did not happen in time.
    #[error("{what}: no result after {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The VM has no disk at this node, or the running VM has no device for it.
    #[error("{vmx}: no disk at {node}")]
    UnknownDisk {
        /// The .vmx file.
        vmx: PathBuf,
        /// The node.
        node: DiskNode,
    },
    /// The running disk at this node has no redo log on top of its parent to commit.
    #[error("{vmx}: disk {node} runs on {top} which has no parent to commit into")]
    NothingToCommit {
        /// The .vmx file.
        vmx: PathBuf,
        /// The node.
        node: DiskNode,
        /// The file the disk writes into.
        top: PathBuf,
    },
    /// A QEMU block job (commit) failed or was cancelled by QEMU.
    #[error("{vmx}: block job {job}: {reason}")]
    JobFailed {
        /// The .vmx file.
        vmx: PathBuf,
        /// The job id.
        job: String,
        /// QEMU's error text.
        reason: String,
    },
    /// Saving or loading the memory state failed.
    #[error("{vmx}: migration to/from {vmss} {status}: {reason}")]
    Migration {
        /// The .vmx file.
        vmx: PathBuf,
        /// The suspend file.
        vmss: PathBuf,
        /// The final migration status.
        status: String,
        /// QEMU's error text.
        reason: String,
    },
    /// The progress callback asked to stop; nothing was left half done.
    #[error("cancelled: {what}")]
    Cancelled {
        /// What was cancelled.
        what: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn vmdk(what: impl Into<String>, source: vmdk::Error) -> Error {
        Error::Vmdk {
            what: what.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let e = Error::Qmp {
            socket: "/vm/.vcb-qmp.sock".into(),
            command: "blockdev-snapshot".into(),
            class: "GenericError".into(),
            desc: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "/vm/.vcb-qmp.sock: QMP blockdev-snapshot: GenericError: boom"
        );
        let e = Error::io("/vm/x", "read", std::io::Error::other("gone"));
        assert!(matches!(e, Error::Io { op: "read", .. }));
        assert_eq!(e.to_string(), "/vm/x: read: gone");
        let e = Error::Timeout {
            what: "shutdown of /vm/a.vmx".into(),
            after: Duration::from_secs(3),
        };
        assert!(e.to_string().contains("3s"));
    }
}
