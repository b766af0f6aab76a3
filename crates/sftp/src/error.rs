//! The crate's typed error. Every variant names what it concerns: the URL, the local file,
//! `user@host:port`, or the remote path as an `sftp://` location.

use std::fmt;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a remote destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The destination string is not a usable `scp://` or `sftp://` URL.
    #[error("{input:?}: not a usable remote URL: {reason}")]
    BadUrl {
        /// The URL as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A line of an OpenSSH client configuration file could not be used.
    #[error("{path}:{line}: {reason}")]
    SshConfig {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A local file (key, known_hosts, ssh config) could not be read or written.
    #[error("{path}: {op}: {source}")]
    LocalIo {
        /// The local file.
        path: PathBuf,
        /// What was being done ("read", "append", ...).
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An identity file given explicitly cannot be used.
    #[error("{path}: cannot use this key: {reason}")]
    BadKey {
        /// The identity file.
        path: PathBuf,
        /// Why (unreadable, not a private key, passphrase-protected...).
        reason: String,
    },
    /// No user name in the URL or ssh config, and the local user is unknown.
    #[error("{host}: no user name given and the local user is unknown")]
    NoUser {
        /// The host being connected to.
        host: String,
    },
    /// The TCP connection could not be made.
    #[error("{host}:{port}: cannot connect: {source}")]
    Connect {
        /// Host name or address connected to.
        host: String,
        /// TCP port.
        port: u16,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server did not answer within the configured timeout.
    #[error("{location}: {op} timed out after {secs} s (no answer from the server)")]
    Timeout {
        /// `sftp://user@host:port/path` concerned (no path for `connect`).
        location: String,
        /// What was being waited for ("connect", "write", ...).
        op: &'static str,
        /// The timeout in seconds.
        secs: u64,
    },
    /// The server's host key is not recorded in the known_hosts file.
    #[error(
        "{host}:{port}: unknown host key {algorithm} {fingerprint} (not in {}); \
         check the fingerprint and accept it explicitly to record it",
        known_hosts.display()
    )]
    UnknownHostKey {
        /// Host name as written in the URL or ssh config (HostName).
        host: String,
        /// TCP port.
        port: u16,
        /// Key algorithm, e.g. `ssh-ed25519`.
        algorithm: String,
        /// `SHA256:` fingerprint, as `ssh-keygen -l` prints it.
        fingerprint: String,
        /// The known_hosts file consulted.
        known_hosts: PathBuf,
    },
    /// The server offers a different key than the one recorded for it.
    #[error(
        "{host}:{port}: HOST KEY CHANGED: the server offers {algorithm} {fingerprint} but {}:{line} \
         records a different key; refusing to connect (possible man-in-the-middle)",
        known_hosts.display()
    )]
    HostKeyChanged {
        /// Host name.
        host: String,
        /// TCP port.
        port: u16,
        /// Key algorithm offered by the server.
        algorithm: String,
        /// `SHA256:` fingerprint of the offered key.
        fingerprint: String,
        /// The known_hosts file holding the old key.
        known_hosts: PathBuf,
        /// 1-based line of the recorded key.
        line: usize,
    },
    /// The server's key is listed as revoked.
    #[error(
        "{host}:{port}: the server's host key {algorithm} {fingerprint} is REVOKED ({}:{line}); refusing to connect",
        known_hosts.display()
    )]
    HostKeyRevoked {
        /// Host name.
        host: String,
        /// TCP port.
        port: u16,
        /// Key algorithm offered by the server.
        algorithm: String,
        /// `SHA256:` fingerprint of the offered key.
        fingerprint: String,
        /// The known_hosts file holding the revocation.
        known_hosts: PathBuf,
        /// 1-based line of the revocation.
        line: usize,
    },
    /// No key was accepted by the server.
    #[error("{user}@{host}:{port}: key authentication failed (tried: {tried})")]
    AuthFailed {
        /// The remote user.
        user: String,
        /// Host name.
        host: String,
        /// TCP port.
        port: u16,
        /// What was offered, for the message (`none` when nothing could be).
        tried: String,
    },
    /// The SSH transport failed (key exchange, protocol error, channel refused).
    #[error("{host}:{port}: ssh: {detail}")]
    Ssh {
        /// Host name.
        host: String,
        /// TCP port.
        port: u16,
        /// The transport's own description.
        detail: String,
    },
    /// The SFTP server refused an operation.
    #[error("{location}: {op}: {kind} ({message})")]
    Remote {
        /// `sftp://user@host:port/path` of the file concerned.
        location: String,
        /// The operation ("open", "mkdir", "write", ...).
        op: &'static str,
        /// What the server's status code means.
        kind: RemoteErrorKind,
        /// The server's message.
        message: String,
    },
    /// The folder a file or folder was to be created in does not exist.
    #[error("{location}: {op}: the remote parent folder {parent} does not exist")]
    ParentMissing {
        /// `sftp://user@host:port/path` of the file or folder to create.
        location: String,
        /// The operation ("mkdir", "upload").
        op: &'static str,
        /// The missing parent folder.
        parent: String,
    },
    /// The connection dropped (server killed, network gone) during an operation.
    #[error("{location}: {op}: connection lost: {detail}")]
    Disconnected {
        /// `sftp://user@host:port/path` being worked on.
        location: String,
        /// The operation.
        op: &'static str,
        /// What the transport said.
        detail: String,
    },
    /// Reading the local data to upload, or writing downloaded data, failed.
    #[error("{location}: {op}: local stream: {source}")]
    LocalStream {
        /// `sftp://user@host:port/path` being transferred.
        location: String,
        /// "upload" or "download".
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server answered something a conforming server does not.
    #[error("{location}: {op}: protocol error: {detail}")]
    Protocol {
        /// `sftp://user@host:port/path` concerned.
        location: String,
        /// The operation.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The progress callback asked to stop.
    #[error("{location}: {op} cancelled")]
    Cancelled {
        /// `sftp://user@host:port/path` being transferred.
        location: String,
        /// The operation.
        op: &'static str,
    },
}

/// The meaning of an SFTP status code (SFTP version 3, the one OpenSSH speaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// `SSH_FX_NO_SUCH_FILE`.
    NotFound,
    /// `SSH_FX_PERMISSION_DENIED`.
    PermissionDenied,
    /// `SSH_FX_FAILURE`: OpenSSH's answer for most other errors (disk full, not empty...).
    Failure,
    /// `SSH_FX_OP_UNSUPPORTED`.
    Unsupported,
    /// The target of a creation already exists (OpenSSH says `SSH_FX_FAILURE`; a
    /// follow-up `stat` tells).
    AlreadyExists,
    /// Any other code.
    Other(u32),
}

impl fmt::Display for RemoteErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteErrorKind::NotFound => f.write_str("no such file or folder"),
            RemoteErrorKind::PermissionDenied => f.write_str("permission denied"),
            RemoteErrorKind::Failure => f.write_str("failed"),
            RemoteErrorKind::Unsupported => f.write_str("not supported by the server"),
            RemoteErrorKind::AlreadyExists => f.write_str("already exists"),
            RemoteErrorKind::Other(code) => write!(f, "SFTP status {code}"),
        }
    }
}

impl RemoteErrorKind {
    /// The kind for an SFTP status code.
    pub(crate) fn from_code(code: u32) -> RemoteErrorKind {
        match code {
            2 => RemoteErrorKind::NotFound,
            3 => RemoteErrorKind::PermissionDenied,
            4 => RemoteErrorKind::Failure,
            8 => RemoteErrorKind::Unsupported,
            other => RemoteErrorKind::Other(other),
        }
    }
}

impl Error {
    /// Whether this is the server saying the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Remote {
                kind: RemoteErrorKind::NotFound,
                ..
            }
        )
    }
}
