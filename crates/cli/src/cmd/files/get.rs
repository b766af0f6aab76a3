//! `vcb files get`: restore files and trees into a local folder.
//!
//! The guest's names are untrusted: a name with `/` or NUL, `.` or `..`, or an empty name
//! is refused for that entry. Everything is created by this process inside the target
//! folder, never through a symbolic link: files with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//! directories only under directories this run created (or the target itself), and a
//! name that already exists is an error for that entry, never an overwrite. Symlinks are
//! restored as links and never followed.

use super::source::Opened;
use super::{resolve, Resolved};
use anyhow::{bail, Context, Result};
use clap::Args;
use guestfs::{Attr, FileSystem, Kind};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `vcb files get SOURCE PATH... --to DIR`
#[derive(Args, Debug)]
pub struct GetArgs {
    /// A VM (a snapshot is taken and removed), a backup folder, `repo:REPO#POINT`, or a
    /// disk file (VMDK or raw).
    pub source: String,
    /// VOLUME/PATH of each file or directory to restore.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// The folder to restore into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

struct Restorer<'a> {
    fs: &'a dyn FileSystem,
    links: HashMap<u64, PathBuf>,
    dir_times: Vec<(PathBuf, Attr)>,
    is_root: bool,
    files: u64,
    bytes: u64,
    errors: u64,
}

pub(super) fn run(src: &Opened, a: &GetArgs) -> Result<()> {
    std::fs::create_dir_all(&a.to).with_context(|| format!("{}: create", a.to.display()))?;
    let target = std::fs::canonicalize(&a.to).with_context(|| a.to.display().to_string())?;
    let (mut files, mut bytes, mut errors) = (0, 0, 0);
    for path in &a.paths {
        let r: Resolved = resolve(src, path)?;
        let mut rs = Restorer {
            fs: r.fs.as_ref(),
            links: HashMap::new(),
            dir_times: Vec::new(),
            // SAFETY: geteuid has no preconditions.
            is_root: unsafe { libc::geteuid() } == 0,
            files: 0,
            bytes: 0,
            errors: 0,
        };
        let base = r
            .shown
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or(&r.shown)
            .to_string();
        let name = if r.ino == r.fs.root() {
            format!("volume-{}", r.shown.trim_matches('/'))
        } else {
            base
        };
        let dest =
            target.join(checked_name(name.as_bytes()).map_err(|e| anyhow::anyhow!("{path}: {e}"))?);
        rs.entry(&dest, &r.attr, path);
        if r.attr.kind == Kind::Dir {
            rs.tree(&dest, r.ino, path);
        }
        rs.finish_dirs();
        files += rs.files;
        bytes += rs.bytes;
        errors += rs.errors;
    }
    println!(
        "Restored {files} files ({}) into {}",
        crate::output::human_bytes(bytes),
        target.display()
    );
    if errors > 0 {
        bail!("{errors} entries could not be restored (see above)");
    }
    Ok(())
}

/// A guest name that is safe as one component of a local path.
fn checked_name(name: &[u8]) -> std::result::Result<&OsStr, String> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(format!(
            "refused the name {:?} (not one plain path component)",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(OsStr::from_bytes(name))
}

impl Restorer<'_> {
    fn fail(&mut self, what: &str, e: impl std::fmt::Display) {
        eprintln!("vcb: {what}: {e}");
        self.errors += 1;
    }

    fn tree(&mut self, dest: &Path, ino: u64, shown: &str) {
        let mut pending = vec![(dest.to_path_buf(), ino, shown.to_string(), 0usize)];
        let mut seen = std::collections::HashSet::from([ino]);
        while let Some((dir, ino, shown, depth)) = pending.pop() {
            let entries = match self.fs.read_dir(ino) {
                Ok(e) => e,
                Err(e) => {
                    self.fail(&shown, e);
                    continue;
                }
            };
            for e in entries {
                let child_shown = format!("{shown}/{}", String::from_utf8_lossy(&e.name));
                let name = match checked_name(&e.name) {
                    Ok(n) => n,
                    Err(err) => {
                        self.fail(&child_shown, err);
                        continue;
                    }
                };
                let attr = match self.fs.stat(e.ino) {
                    Ok(a) => a,
                    Err(err) => {
                        self.fail(&child_shown, err);
                        continue;
                    }
                };
                let path = dir.join(name);
                if attr.kind == Kind::Dir
                    && (!seen.insert(e.ino) || depth >= guestfs::vfs::MAX_DEPTH)
                {
                    self.fail(
                        &child_shown,
                        "directory met twice or too deep (a loop?): not entered",
                    );
                    continue;
                }
                if self.entry(&path, &attr, &child_shown) && attr.kind == Kind::Dir {
                    pending.push((path, e.ino, child_shown, depth + 1));
                }
            }
        }
    }

    /// Create one entry; `true` when it was created.
    fn entry(&mut self, path: &Path, attr: &Attr, shown: &str) -> bool {
        let done = match attr.kind {
            Kind::Dir => std::fs::create_dir(path)
                .map_err(anyhow::Error::from)
                .map(|()| {
                    self.dir_times.push((path.to_path_buf(), attr.clone()));
                }),
            Kind::Symlink => self
                .fs
                .read_link(attr.ino)
                .map_err(anyhow::Error::from)
                .and_then(|t| {
                    std::os::unix::fs::symlink(OsStr::from_bytes(&t), path)?;
                    self.finish(path, attr, true)
                }),
            Kind::File => self.file(path, attr),
            Kind::Special => Err(anyhow::anyhow!(
                "devices, FIFOs and sockets are not restored"
            )),
        };
        match done {
            Ok(()) => true,
            Err(e) => {
                self.fail(shown, format!("{e:#}"));
                false
            }
        }
    }

    fn file(&mut self, path: &Path, attr: &Attr) -> Result<()> {
        if attr.nlink > 1 {
            if let Some(first) = self.links.get(&attr.ino) {
                std::fs::hard_link(first, path)?;
                return Ok(());
            }
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        for (start, len) in self.fs.data_ranges(attr.ino)? {
            let mut off = start;
            while off < start + len {
                let want = ((start + len - off) as usize).min(buf.len());
                let n = self.fs.read(attr.ino, off, &mut buf[..want])?;
                if n == 0 {
                    break;
                }
                std::os::unix::fs::FileExt::write_all_at(&f, &buf[..n], off)?;
                off += n as u64;
                self.bytes += n as u64;
            }
        }
        f.set_len(attr.size)?;
        f.sync_all()?;
        drop(f);
        self.files += 1;
        if attr.nlink > 1 {
            self.links.insert(attr.ino, path.to_path_buf());
        }
        self.finish(path, attr, false)
    }

    /// Owner (as root), mode and times, never through a symlink.
    fn finish(&self, path: &Path, attr: &Attr, symlink: bool) -> Result<()> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        if self.is_root {
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::lchown(c.as_ptr(), attr.uid, attr.gid) } != 0 {
                return Err(std::io::Error::last_os_error()).context("chown");
            }
        }
        if !symlink {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(attr.perm & 0o7777))?;
        }
        let ts = |t: guestfs::Time| libc::timespec {
            tv_sec: t.secs as libc::time_t,
            tv_nsec: i64::from(t.nanos) as _,
        };
        let times = [ts(attr.atime), ts(attr.mtime)];
        // SAFETY: valid path and two initialised timespecs.
        if unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("set times");
        }
        Ok(())
    }

    /// Directories get their mode and times last (writing into them changed the times).
    fn finish_dirs(&mut self) {
        for (path, attr) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            if let Err(e) = self.finish(&path, &attr, false) {
                self.fail(&path.display().to_string(), e);
            }
        }
    }
}
