//! The host agent, `vcb hostd`, and its client.
//!
//! The white paper's Consolidated Backup moves the work of a backup off the ESX host onto
//! a backup proxy, which reaches the host with `VCHOST`, `USERNAME` and `PASSWORD`. This
//! crate is both ends of that link:
//!
//! - [`server`]: an HTTPS JSON API (axum over rustls) with users and roles ([`users`]),
//!   expiring session tokens, slowed failed logins and an audit log ([`audit`]); backup
//!   sessions that quiesce and snapshot a VM and export each static disk over NBD with
//!   STARTTLS ([`nbd`]); restore sessions that receive new disks over NBD; leases that
//!   remove a snapshot whose client went away, also after the agent restarts.
//! - [`client`]: what the tools use from a proxy: login, the calls, and disk reads over
//!   NBD as a [`vmdk::DiskSource`], so a proxy backup runs through the same export
//!   pipeline as a local one.
//! - [`tls`] and [`trust`]: the self-signed certificate and how clients pin it.
//!
//! The HTTP client is a small HTTP/1.1 exchange over rustls written here: the API's
//! requests are short JSON documents on one connection each, and pinning a certificate
//! thumbprint needs a custom rustls verifier that general HTTP clients hide.

pub mod api;
pub mod audit;
pub mod client;
pub mod server;
pub mod tls;
pub mod trust;
pub mod users;

use std::path::{Path, PathBuf};

/// The agent's folder inside the host's root: certificate, key, users, audit log and
/// session records.
pub fn agent_dir(root: &Path) -> PathBuf {
    root.join("agent")
}

/// What can go wrong in the agent or its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Fs(#[from] fsio::Error),
    /// Bad input or state, said in one line.
    #[error("{0}")]
    Invalid(String),
    /// TLS setup or handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// The agent could not be reached or the connection broke.
    #[error("host agent {endpoint}: {text}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// What happened.
        text: String,
    },
    /// The agent answered with an error.
    #[error("host agent: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The agent's message.
        message: String,
    },
    /// Disk data over NBD.
    #[error(transparent)]
    Nbd(#[from] nbd::Error),
    /// A backup step.
    #[error(transparent)]
    Backup(#[from] backup::Error),
    /// A host operation.
    #[error(transparent)]
    Host(#[from] host::Error),
    /// A disk read on the proxy.
    #[error(transparent)]
    Disk(#[from] vmdk::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
