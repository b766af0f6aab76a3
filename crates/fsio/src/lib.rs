//! Durable file operations shared by every vcb crate.
//!
//! vcb writes metadata (descriptors, .vmx, .vmsd, inventories, catalogs, journals) and
//! replaces whole disks. Both must survive `kill -9` and power loss at any instant, and
//! both must never follow a symbolic link or open a device an attacker planted. This
//! crate is the one place those rules are implemented, so every crate gets the same
//! guarantees:
//!
//! - [`write_atomic`] / [`write_atomic_with`]: a unique temporary file (created with
//!   `O_EXCL`, so two writers never share one), written, fsynced, renamed over the
//!   target, and the folder fsynced. A crash leaves the old or the new file, never a mix.
//! - [`rename_noreplace`]: moves a file into a name only if that name is still free
//!   (`renameat2(RENAME_NOREPLACE)`), so a file that appeared after a check is never
//!   replaced.
//! - [`swap`]: replaces a set of files by another under a journal: old files aside, new
//!   files in, old files removed; [`swap::recover`] finishes or undoes a swap a killed
//!   process left half done.
//! - [`open_regular`]: opens a file without following a final symbolic link and refuses
//!   anything that is not a regular file (FIFOs would block, devices would leak data).
//! - [`check_private`]: the permission rule sshd's `StrictModes` applies to its
//!   configuration, for files whose contents are executed or trusted.
//!
//! Nothing here is clever; it is written by hand because the rules (which syscall, which
//! order, which fsync) are the project's own and must be identical everywhere.
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod atomic;
mod error;
mod open;
mod perms;
pub mod swap;

pub use atomic::{
    create_atomic, remove_stale_temps, rename_noreplace, sync_dir, temp_name, write_atomic,
    write_atomic_with, write_private, WriteOptions,
};
pub use error::{Error, Result};
pub use open::{open_regular, open_regular_following, OpenKind};
pub use perms::check_private;
