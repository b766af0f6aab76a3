//! Crash-safe file writes through the workspace's one helper ([`fsio`]).

use crate::error::Result;
use std::fs::File;
use std::path::Path;

/// Write `path` atomically: `fill` writes the content into a unique temporary file which
/// is then synced and renamed over `path`. `private` files get mode 0600 (backup files:
/// they hold whole VMs).
pub(crate) fn write_atomic_with(
    path: &Path,
    private: bool,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let opts = if private {
        fsio::WriteOptions::PRIVATE
    } else {
        fsio::WriteOptions::default()
    };
    fsio::write_atomic_with(path, opts, fill)
}

/// fsync a folder so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    Ok(fsio::sync_dir(dir)?)
}
