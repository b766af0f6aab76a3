//! sshd's `StrictModes` for files vcb executes or trusts (backuptools.conf, hooks).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Refuses `path` unless it is owned by root or by the user running vcb and is not
/// writable by group or others, and the same holds for every folder above it (a
/// writable folder lets others replace the file). A folder above that is writable by
/// others but sticky (like `/tmp`) is accepted, as sshd accepts it.
///
/// # Errors
/// [`Error::Unsafe`] naming the file or folder and why; [`Error::Io`] when it cannot be
/// examined.
pub fn check_private(path: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, "resolve", e))?;
    let meta = std::fs::metadata(&abs).map_err(|e| Error::io(&abs, "stat", e))?;
    check_one(&abs, &meta, me, false)?;
    let mut dir = abs.parent();
    while let Some(d) = dir {
        let meta = std::fs::metadata(d).map_err(|e| Error::io(d, "stat", e))?;
        check_one(d, &meta, me, true)?;
        dir = d.parent();
    }
    Ok(())
}

fn check_one(path: &Path, meta: &std::fs::Metadata, me: u32, is_parent: bool) -> Result<()> {
    let unsafe_ = |reason: String| {
        Err(Error::Unsafe {
            path: path.to_path_buf(),
            reason,
        })
    };
    if meta.uid() != 0 && meta.uid() != me {
        return unsafe_(format!(
            "owned by uid {}, not by root or the user running vcb (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(is_parent && sticky) {
        return unsafe_(format!(
            "writable by {} (mode {:o})",
            if mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_other_writable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let f = dir.path().join("conf");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_private(&f).unwrap();
        for mode in [0o664, 0o646] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check_private(&f).unwrap_err();
            assert!(matches!(e, Error::Unsafe { .. }), "{e}");
            assert!(e.to_string().contains("writable by"), "{e}");
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_private(&f).unwrap_err();
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
