//! Remote backup destinations (`scp://user@host[:port]:/path`, `sftp://`) over SFTP.
//!
//! [`Sftp`] implements [`Destination`]: the remote parent must exist, the VM folder is
//! created and marked incomplete first, every file is uploaded as `name.partial`, renamed
//! into place (posix-rename) and its size confirmed by `stat`; the catalog is written last
//! and the marker removed after it.
//!
//! Disks are streamed by default: the export produces each extent file in order
//! ([`vmdk::export_sparse`]) and [`Destination::put_stream`] sends it as it is produced
//! (an [`sftp::RemoteFile`] keeping many write requests in flight), hashing it on the
//! way; nothing is staged locally. Before the export, [`Destination::check_free_space`]
//! asks the server (`statvfs@openssh.com`) whether the allocated data of the VM's disks
//! fits, refusing the backup when it does not (a server without the extension gets a
//! warning). Only when `TEMPDIR` is set in backuptools.conf
//! ([`RemoteOptions::tempdir`]) are the disks converted into a local staging folder
//! there ([`Destination::local_dir`]) and uploaded by [`Destination::flush_local`]
//! before the catalog, as the seed did.
//!
//! Restores download the whole backup into a local temporary folder first
//! ([`download_backup`]) and then run the ordinary local restore, which verifies every
//! checksum before anything is written.

use crate::dest::{
    Destination, Entry, LocalDir, PutInfo, StreamFile, CATALOG_NAME, INCOMPLETE_MARKER,
};
use crate::error::{Error, Result};
use crate::hash::HashingReader;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How to reach remote destinations.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// Private key to authenticate with (`-i KEY`, `$VCB_SSH_KEY`).
    pub identity_file: Option<PathBuf>,
    /// Record an unknown host key in known_hosts instead of refusing it.
    pub accept_new_host_key: bool,
    /// backuptools.conf `TEMPDIR`: when set, backups stage their disks there before
    /// uploading them (otherwise they stream), and restores download into it (otherwise
    /// into the system temporary folder).
    pub tempdir: Option<PathBuf>,
}

impl RemoteOptions {
    /// The SSH settings these options stand for (also used for SFTP repositories).
    pub fn connect_options(&self) -> sftp::ConnectOptions {
        let mut opts = sftp::ConnectOptions::new(sftp::SshEnv::from_process());
        opts.identity_file = self.identity_file.clone();
        opts.accept_new_host_key = self.accept_new_host_key;
        opts
    }

    fn connect(&self, url: &sftp::RemoteUrl) -> Result<sftp::Session> {
        Ok(sftp::connect(url, &self.connect_options())?)
    }

    /// A new local temporary folder (removed when dropped).
    fn staging(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let base = self.tempdir.clone().unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)
            .map_err(|e| Error::io(&base, "create temporary folder in", e))
    }
}

/// A backup folder on an SFTP server.
pub struct Sftp {
    spec: String,
    url: sftp::RemoteUrl,
    session: sftp::Session,
    opts: RemoteOptions,
    /// Local folder the disks are converted into before upload (made by `create` when
    /// `TEMPDIR` is set; otherwise disks stream).
    staging: Option<tempfile::TempDir>,
    /// Whether `create` made the remote folder in this run.
    created: bool,
}

impl std::fmt::Debug for Sftp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sftp").field("spec", &self.spec).finish()
    }
}

impl Sftp {
    /// Connect to the server of `spec` (`scp://` or `sftp://`).
    ///
    /// # Errors
    /// [`Error::Remote`] for a bad URL, an unknown or changed host key, failed
    /// authentication or connection.
    pub fn open(spec: &str, opts: &RemoteOptions) -> Result<Sftp> {
        let url = sftp::RemoteUrl::parse(spec)?;
        let session = opts.connect(&url)?;
        Ok(Sftp {
            spec: spec.to_owned(),
            url,
            session,
            opts: opts.clone(),
            staging: None,
            created: false,
        })
    }

    /// `stat` on the server this destination is connected to.
    pub(crate) fn session_stat(&self, path: &str) -> sftp::Result<sftp::FileStat> {
        self.session.stat(path)
    }

    fn remote_of(&self, name: &str) -> Result<String> {
        vmx::validate_relative_name(name)
            .map_err(|e| Error::unsafe_path("backup file name", name, e.to_string()))?;
        Ok(self.url.join(name))
    }

    fn here(&self) -> PathBuf {
        PathBuf::from(&self.spec)
    }

    /// Upload `data` as `name.partial`, rename it to `name` and confirm its size.
    fn upload(&self, name: &str, data: &mut dyn Read) -> Result<u64> {
        let path = self.remote_of(name)?;
        let partial = format!("{path}.partial");
        let written = match self.session.upload(data, &partial, &mut ()) {
            Ok(n) => n,
            Err(e) => {
                let _ = self.session.remove_file(&partial);
                return Err(e.into());
            }
        };
        if let Err(e) = self.session.rename(&partial, &path) {
            let _ = self.session.remove_file(&partial);
            return Err(e.into());
        }
        let size = self.session.stat(&path)?.size_bytes;
        if size != written {
            return Err(Error::Tampered {
                location: self.spec.clone(),
                name: name.to_owned(),
                what: "size",
                expected: written.to_string(),
                found: size.to_string(),
            });
        }
        Ok(written)
    }

    fn list_into(&self, dir: &str, prefix: &str, out: &mut Vec<Entry>, depth: usize) -> Result<()> {
        if depth > 8 {
            return Ok(());
        }
        for e in self.session.list_dir(dir)? {
            if out.len() > sftp::MAX_DIR_ENTRIES {
                return Err(Error::UnsupportedDestination {
                    spec: self.spec.clone(),
                    reason: format!("more than {} files (refused)", sftp::MAX_DIR_ENTRIES),
                });
            }
            if e.name == "." || e.name == ".." {
                continue;
            }
            let rel = format!("{prefix}{}", e.name);
            match e.stat.kind {
                sftp::FileKind::Dir => self.list_into(
                    &format!("{dir}/{}", e.name),
                    &format!("{rel}/"),
                    out,
                    depth + 1,
                )?,
                sftp::FileKind::File => out.push(Entry {
                    name: rel,
                    size_bytes: e.stat.size_bytes,
                }),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Free bytes of the file system holding `path` (local side).
#[allow(clippy::unnecessary_cast)] // The field types differ between platforms.
fn local_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated string and `st` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Destination for Sftp {
    fn location(&self) -> String {
        self.spec.clone()
    }

    fn create(&mut self) -> Result<()> {
        let dir = self.url.path.clone();
        let parent = match dir.rsplit_once('/') {
            Some(("", _)) => "/".to_owned(),
            Some((p, _)) => p.to_owned(),
            None => {
                return Err(Error::DestinationParentMissing { path: self.here() });
            }
        };
        match self.session.stat(&parent) {
            Ok(st) if st.kind == sftp::FileKind::Dir => {}
            Ok(_) => return Err(Error::DestinationParentMissing { path: self.here() }),
            Err(e) if e.is_not_found() => {
                return Err(Error::DestinationParentMissing { path: self.here() })
            }
            Err(e) => return Err(e.into()),
        }
        if self.session.exists(&dir)? {
            let hint = if self.session.exists(&self.url.join(INCOMPLETE_MARKER))? {
                " (an incomplete backup left by an interrupted run: remove it or choose another destination)"
            } else {
                " (backups never overwrite: choose a new folder)"
            };
            return Err(Error::DestinationExists {
                path: self.here(),
                hint: hint.into(),
            });
        }
        let staging = match self.opts.tempdir {
            Some(_) => Some(self.opts.staging("vcb-backup-")?),
            None => None,
        };
        self.session.mkdir(&dir)?;
        self.created = true;
        self.staging = staging;
        let note = b"This backup is incomplete: it is being written or was interrupted. Do not restore from it.\n";
        self.upload(INCOMPLETE_MARKER, &mut &note[..])?;
        Ok(())
    }

    fn put(&mut self, name: &str, data: &mut dyn Read) -> Result<PutInfo> {
        let mut reader = HashingReader::new(data);
        self.upload(name, &mut reader)?;
        let (size_bytes, sha256) = reader.finish();
        Ok(PutInfo { size_bytes, sha256 })
    }

    fn get(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        use std::io::Seek;
        let path = self.remote_of(name)?;
        // Spooled to an unnamed local file, not memory: a hostile server may send a lot,
        // but never more than the size it states.
        let size = self.session.stat(&path)?.size_bytes;
        let mut spool = tempfile::tempfile().map_err(|e| Error::io(&path, "spool", e))?;
        self.session
            .download_at_most(&path, &mut spool, Some(size), &mut ())?;
        spool
            .rewind()
            .map_err(|e| Error::io(&path, "rewind spool", e))?;
        Ok(Box::new(spool))
    }

    fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.list_into(&self.url.path, "", &mut out, 0)?;
        out.retain(|e| e.name != INCOMPLETE_MARKER);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn check_complete(&self) -> Result<()> {
        let incomplete = |reason: &str| Error::IncompleteBackup {
            path: self.here(),
            reason: reason.into(),
        };
        match self.session.stat(&self.url.path) {
            Ok(st) if st.kind == sftp::FileKind::Dir => {}
            Ok(_) => return Err(incomplete("it is not a folder")),
            Err(e) => return Err(e.into()),
        }
        if self.session.exists(&self.url.join(INCOMPLETE_MARKER))? {
            return Err(incomplete(
                "it is marked incomplete: the backup was interrupted or is still running",
            ));
        }
        if !self.session.exists(&self.url.join(CATALOG_NAME))? {
            return Err(incomplete("it has no catalog"));
        }
        Ok(())
    }

    fn mark_complete(&mut self) -> Result<()> {
        match self.session.remove_file(&self.url.join(INCOMPLETE_MARKER)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn discard(&mut self) -> Result<()> {
        self.staging = None;
        if !self.created || !self.session.exists(&self.url.join(INCOMPLETE_MARKER))? {
            return Ok(());
        }
        self.session.remove_dir_all(&self.url.path)?;
        self.created = false;
        Ok(())
    }

    fn local_dir(&self) -> Option<&Path> {
        self.staging.as_ref().map(|t| t.path())
    }

    fn flush_local(&mut self) -> Result<()> {
        let Some(staging) = self.staging.as_ref().map(|t| t.path().to_path_buf()) else {
            return Ok(());
        };
        let staged = LocalDir::new(&staging).list()?;
        let total: u64 = staged.iter().map(|e| e.size_bytes).sum();
        if let Ok(Some(fs)) = self.session.statvfs(&self.url.path) {
            if fs.free_bytes < total {
                return Err(Error::io(
                    self.here(),
                    "upload disks to",
                    std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "the server has {} bytes free, the disks need {total}",
                            fs.free_bytes
                        ),
                    ),
                ));
            }
        }
        for e in staged {
            let local = staging.join(&e.name);
            let mut f =
                std::fs::File::open(&local).map_err(|err| Error::io(&local, "open", err))?;
            let n = self.upload(&e.name, &mut f)?;
            if n != e.size_bytes {
                return Err(Error::Tampered {
                    location: self.spec.clone(),
                    name: e.name.clone(),
                    what: "size",
                    expected: e.size_bytes.to_string(),
                    found: n.to_string(),
                });
            }
            // Free the local space as soon as the file is on the server.
            let _ = std::fs::remove_file(&local);
        }
        Ok(())
    }

    fn put_stream(&self, name: &str) -> Result<Box<dyn StreamFile + '_>> {
        let path = self.remote_of(name)?;
        let partial = format!("{path}.partial");
        let file = self.session.create_file(&partial)?;
        Ok(Box::new(SftpStream {
            dest: self,
            name: name.to_owned(),
            path,
            partial,
            file,
            hasher: sha2::Sha256::new(),
            size: 0,
        }))
    }

    fn check_free_space(&self, needed_bytes: u64) -> Result<Option<String>> {
        let Some(fs) = self.session.statvfs(&self.url.path)? else {
            return Ok(Some(format!(
                "{}: the server does not report free space (no statvfs@openssh.com): \
                 not checked whether {} of disk data fit",
                self.spec,
                mib(needed_bytes)
            )));
        };
        check_fits(&self.spec, fs.available_bytes, needed_bytes)?;
        Ok(None)
    }

    fn check_local_space(&self, needed_bytes: u64) -> Result<()> {
        let Some(dir) = self.local_dir() else {
            return Ok(());
        };
        match local_free_bytes(dir) {
            Some(free) if free < needed_bytes => Err(Error::io(
                dir,
                "stage disks in",
                std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "{free} bytes free, the disks may need up to {needed_bytes} (set TEMPDIR in backuptools.conf to stage elsewhere)"
                    ),
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// `n` bytes as MiB for messages.
fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
}

/// Refuse when `needed` bytes do not fit in `available` on the server of `spec`.
fn check_fits(spec: &str, available: u64, needed: u64) -> Result<()> {
    if needed <= available {
        return Ok(());
    }
    Err(Error::io(
        spec,
        "back up to",
        std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "not enough space on the server: {} available, the VM's disks hold {} of data",
                mib(available),
                mib(needed)
            ),
        ),
    ))
}

/// A file streamed to the server as `name.partial`: hashed as it goes, renamed into place
/// and its size confirmed by `finish`.
struct SftpStream<'s> {
    dest: &'s Sftp,
    name: String,
    path: String,
    partial: String,
    file: sftp::RemoteFile<'s>,
    hasher: sha2::Sha256,
    size: u64,
}

impl StreamFile for SftpStream<'_> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_at(self.size, data)?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<PutInfo> {
        let SftpStream {
            dest,
            name,
            path,
            partial,
            file,
            hasher,
            size,
        } = *self;
        let written = file.finish()?;
        dest.session.rename(&partial, &path)?;
        let found = dest.session.stat(&path)?.size_bytes;
        if written != size || found != size {
            return Err(Error::Tampered {
                location: dest.spec.clone(),
                name,
                what: "size",
                expected: size.to_string(),
                found: found.to_string(),
            });
        }
        Ok(PutInfo {
            size_bytes: size,
            sha256: hasher.finalize().into(),
        })
    }
}

/// A remote backup downloaded into a local temporary folder (removed when dropped).
pub struct Downloaded {
    local: LocalDir,
    spec: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Downloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloaded")
            .field("spec", &self.spec)
            .finish()
    }
}

/// Download every file of the complete remote backup `spec` into a local temporary
/// folder (under `opts.tempdir`, else the system one).
///
/// # Errors
/// [`Error::IncompleteBackup`], [`Error::Remote`], local I/O errors.
pub fn download_backup(spec: &str, opts: &RemoteOptions) -> Result<Downloaded> {
    let remote = Sftp::open(spec, opts)?;
    remote.check_complete()?;
    let entries = remote.list()?;
    let dir = opts.staging("vcb-restore-")?;
    let needed: u64 = entries.iter().map(|e| e.size_bytes).sum();
    if let Some(free) = local_free_bytes(dir.path()) {
        if free < needed {
            return Err(Error::io(
                dir.path(),
                "download backup into",
                std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("{free} bytes free, the backup needs {needed} (set TEMPDIR in backuptools.conf)"),
                ),
            ));
        }
    }
    for e in &entries {
        vmx::validate_relative_name(&e.name)
            .map_err(|err| Error::unsafe_path("backup file name", &e.name, err.to_string()))?;
        let local = dir.path().join(&e.name);
        if let Some(p) = local.parent() {
            std::fs::create_dir_all(p).map_err(|err| Error::io(p, "create folder", err))?;
        }
        let f = std::fs::File::create(&local).map_err(|err| Error::io(&local, "create", err))?;
        // The listing stated the size: the server may not send more.
        remote.session.download_at_most(
            &remote.url.join(&e.name),
            std::io::BufWriter::new(f),
            Some(e.size_bytes),
            &mut (),
        )?;
    }
    Ok(Downloaded {
        local: LocalDir::new(dir.path()),
        spec: spec.to_owned(),
        _dir: dir,
    })
}

impl Destination for Downloaded {
    fn location(&self) -> String {
        self.spec.clone()
    }
    fn create(&mut self) -> Result<()> {
        Err(Error::UnsupportedDestination {
            spec: self.spec.clone(),
            reason: "a downloaded backup is read-only".into(),
        })
    }
    fn put(&mut self, _name: &str, _data: &mut dyn Read) -> Result<PutInfo> {
        Err(Error::UnsupportedDestination {
            spec: self.spec.clone(),
            reason: "a downloaded backup is read-only".into(),
        })
    }
    fn get(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        self.local.get(name)
    }
    fn list(&self) -> Result<Vec<Entry>> {
        self.local.list()
    }
    fn check_complete(&self) -> Result<()> {
        self.local.check_complete()
    }
    fn mark_complete(&mut self) -> Result<()> {
        Ok(())
    }
    fn discard(&mut self) -> Result<()> {
        Ok(())
    }
    fn local_dir(&self) -> Option<&Path> {
        self.local.local_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_check_refuses_in_one_line() {
        check_fits("scp://u@h:/b/vm", 10 << 20, 10 << 20).unwrap();
        let e = check_fits("scp://u@h:/b/vm", 10 << 20, (10 << 20) + 1).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("scp://u@h:/b/vm: back up to: not enough space"),
            "{text}"
        );
        assert!(text.contains("10.0 MiB available"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        match e {
            Error::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull)
            }
            other => panic!("{other}"),
        }
    }
}
