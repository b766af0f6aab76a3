//! The NBD protocol, client side: what vcb needs to read a QEMU export's block status
//! (QEMU's dirty bitmaps are published as the `qemu:dirty-bitmap:<name>` meta context).
//!
//! Written by hand: the protocol is small and stable (its spec is
//! `doc/proto.md` of the NBD project), the Rust crates that speak it are either async-only
//! or lack meta contexts, and vcb needs only a blocking client over a Unix socket here.
//! Everything a server sends is bounded before it is read: option replies to 64 KiB,
//! structured reply chunks to 1 MiB, and block status is asked for in 256 MiB pieces.

mod client;
mod proto;
mod server;
mod stream;
mod transmission;

pub use client::{Client, Extent, Tls};
pub use proto::{BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};
pub use server::{serve_connection, serve_unix, Backend, Export, Exports, Server, ServerConfig};

/// What can go wrong talking NBD.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("NBD {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server broke the protocol.
    #[error("NBD server: {0}")]
    Protocol(String),
    /// The server refused a request.
    #[error("NBD server refused {what}: {message}")]
    Refused {
        /// The request.
        what: String,
        /// The server's message (or error code).
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
