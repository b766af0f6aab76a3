//! Integration tests of vcb-sftp against a real OpenSSH server (see `server.rs`).

mod auth;
mod failures;
mod roundtrip;
mod server;
mod util;
