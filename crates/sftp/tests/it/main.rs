//! Integration tests of vcb-sftp against a real OpenSSH server (`testkit::sshd`, with
//! the `sftp` views of it in `server.rs`).

mod auth;
mod failures;
mod roundtrip;
mod server;
mod util;
