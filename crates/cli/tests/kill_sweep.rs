//! Issue 10: every multi-step write survives `kill -9` at any instant.
//!
//! Each operation runs under `strace`, which kills it (SIGKILL) at the N-th call of one
//! syscall (`-e inject=SYSCALL:signal=KILL:when=N`: the call itself does not happen),
//! for every N of every rename, unlink, fsync, truncate and a spread of the writes the
//! operation makes in a clean run. After each kill the next open (which finishes or
//! undoes an interrupted replacement) must find either the old or the new content,
//! with every file `qemu-img check` clean.

#[path = "backup_e2e/util.rs"]
#[allow(dead_code, unused_imports)]
mod util;

#[path = "kill_sweep/harness.rs"]
mod harness;
#[path = "kill_sweep/ops.rs"]
mod ops;
#[path = "kill_sweep/repo.rs"]
mod repo_sweep;
#[path = "kill_sweep/tracking.rs"]
mod tracking;
