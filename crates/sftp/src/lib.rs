//! SSH/SFTP transport for vcb's remote backup destinations (`scp://` and `sftp://`).
//!
//! # Model
//! A [`RemoteUrl`] names a user, host, port and absolute folder. [`connect`] resolves it
//! through the user's ssh config (`Host` aliases: `HostName`, `User`, `Port`,
//! `IdentityFile`), opens one SSH connection, verifies the server's host key against
//! known_hosts, authenticates **by key only** and starts the SFTP subsystem. The
//! resulting [`Session`] is a blocking client: file operations ([`Session::mkdir`],
//! [`Session::stat`], [`Session::list_dir`], [`Session::rename`], ...) and streaming
//! transfers ([`Session::upload`], [`Session::download`]) that keep many requests in
//! flight, as OpenSSH's `sftp` does. [`Session::create_file`] opens a [`RemoteFile`] for
//! writing by position (or in order, through [`std::io::Write`]) with the same window of
//! requests in flight, for producers that generate a file while it is sent.
//!
//! # Invariants
//! - Nothing is trusted silently: an unknown host key fails with
//!   [`Error::UnknownHostKey`] unless [`ConnectOptions::accept_new_host_key`] records it;
//!   a changed key always fails ([`Error::HostKeyChanged`]).
//! - Nothing prompts: passwords are never asked for and passphrase-protected key files
//!   are skipped (the agent can hold them).
//! - The crate never prints and never reads the process environment except in
//!   [`SshEnv::from_process`]; progress goes through [`Progress`].
//! - Every error names the `user@host:port` or `sftp://` location it concerns.
//!
//! # Example
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = sftp::RemoteUrl::parse("scp://backup@vault:/srv/vms")?;
//! let mut opts = sftp::ConnectOptions::new(sftp::SshEnv::from_process());
//! opts.identity_file = std::env::var_os("VCB_SSH_KEY").map(Into::into);
//! let session = sftp::connect(&url, &opts)?;
//! let vm_dir = url.join("vm37");
//! session.mkdir(&vm_dir)?;
//! let disk = std::fs::File::open("vm37-flat.vmdk")?;
//! let partial = format!("{vm_dir}/vm37-flat.vmdk.partial");
//! let written = session.upload(disk, &partial, &mut ())?;
//! session.rename(&partial, &format!("{vm_dir}/vm37-flat.vmdk"))?;
//! assert_eq!(session.stat(&format!("{vm_dir}/vm37-flat.vmdk"))?.size_bytes, written);
//! # Ok(())
//! # }
//! ```
//!
//! # Runtime
//! The SSH stack (`russh`, `russh-sftp`) is asynchronous; each [`Session`] owns a small
//! two-thread tokio runtime, so callers must not use it from inside another async
//! runtime.
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr, clippy::dbg_macro)]

mod connect;
mod error;
mod file;
mod known_hosts;
mod options;
mod progress;
mod session;
mod ssh_config;
mod transfer;
mod types;
mod url;

pub use connect::Target;
pub use error::{Error, RemoteErrorKind, Result};
pub use file::RemoteFile;
pub use options::{ConnectOptions, SshEnv};
pub use progress::Progress;
pub use session::{connect, Session, MAX_DIR_ENTRIES};
pub use types::{DirEntry, Extensions, FileKind, FileStat, FsStat};
pub use url::{RemoteUrl, Scheme};

/// Entry points for the fuzz targets (`fuzz/`): the parsers of local SSH files, which
/// are otherwise internal. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Checks a fixed key against known_hosts `text` for the host lookup `name`.
    pub fn known_hosts(text: &str, name: &str) {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        if let Ok(key) = russh::keys::PublicKey::from_openssh(key) {
            let _ = crate::known_hosts::check_text(text, name, &key);
        }
        let _ = crate::known_hosts::algorithms_in(text, name);
    }

    /// Looks `alias` up in the ssh config `text` (Include lines are met, not followed).
    pub fn ssh_config(text: &str, alias: &str) {
        let mut config = crate::ssh_config::HostConfig::default();
        let _ = crate::ssh_config::parse_into(text, alias, &mut config, &mut |_, _, _| true);
    }
}
