//! Test helpers shared by the workspace's tests (a dev-dependency only): checks for
//! external tools ([`tools`]) and a real OpenSSH server per test ([`sshd`]).

pub mod sshd;
pub mod tools;
