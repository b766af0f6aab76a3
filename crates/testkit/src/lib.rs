//! Test helpers shared by the workspace's tests (a dev-dependency only): checks for
//! external tools ([`tools`]), a real OpenSSH server per test ([`sshd`]) and a real
//! SeaweedFS cluster per test ([`seaweed`]).

pub mod guestimg;
pub mod lvm;
pub mod seaweed;
pub mod sshd;
pub mod tools;
