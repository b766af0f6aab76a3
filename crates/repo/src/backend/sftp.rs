//! A repository on an SFTP server (OpenSSH), through vcb's own `sftp` crate.
//!
//! Every object is uploaded under a hidden temporary name, fsynced on the server
//! (`fsync@openssh.com`) and renamed into place: a plain SFTP rename, which OpenSSH
//! implements with link(2) and so never replaces an object (conditional create), or
//! `posix-rename@openssh.com` where an object is meant to be replaced.

use super::{check_name, err, Backend, ObjectMeta, PutMode};
use crate::error::{BackendKind, Error, Result};
use std::time::{Duration, UNIX_EPOCH};

/// Largest object read back (a chunk is at most 16 MiB; an index of a 64 TiB disk in
/// 4 MiB chunks is about 600 MiB, so indexes are the bound).
const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Entries a repository folder may hold (chunk folders of a 10-million-chunk
/// repository hold about 40,000 each).
const MAX_FOLDER_ENTRIES: usize = 10_000_000;

/// A repository folder on an SFTP server.
pub struct SftpBackend {
    session: sftp::Session,
    url: sftp::RemoteUrl,
    spec: String,
}

impl SftpBackend {
    /// Connect to the server of `spec` (`sftp://user@host[:port]/path` or `scp://…`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad URL; connection and authentication errors.
    pub fn connect(spec: &str, opts: &sftp::ConnectOptions) -> Result<SftpBackend> {
        let url =
            sftp::RemoteUrl::parse(spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut opts = opts.clone();
        opts.max_dir_entries = opts.max_dir_entries.max(MAX_FOLDER_ENTRIES);
        let session = sftp::connect(&url, &opts)
            .map_err(|e| err(spec, "connect", "", BackendKind::Other, e.to_string()))?;
        Ok(SftpBackend {
            session,
            url,
            spec: spec.to_owned(),
        })
    }

    fn path(&self, name: &str) -> Result<String> {
        check_name(name)?;
        Ok(self.url.join(name))
    }

    fn fail(&self, op: &'static str, name: &str, e: &sftp::Error) -> Error {
        let kind = match e {
            sftp::Error::Remote { kind, .. } => match kind {
                sftp::RemoteErrorKind::NotFound => BackendKind::NotFound,
                sftp::RemoteErrorKind::PermissionDenied => BackendKind::PermissionDenied,
                sftp::RemoteErrorKind::AlreadyExists => BackendKind::AlreadyExists,
                sftp::RemoteErrorKind::Failure if op == "put" => BackendKind::StorageFull,
                _ => BackendKind::Other,
            },
            sftp::Error::ParentMissing { .. } => BackendKind::NotFound,
            _ => BackendKind::Other,
        };
        err(&self.spec, op, name, kind, e.to_string())
    }

    /// Creates `dir` and its missing parents below the repository folder.
    fn make_dirs(&self, dir: &str) -> std::result::Result<(), sftp::Error> {
        match self.session.mkdir(dir) {
            Ok(()) => Ok(()),
            Err(sftp::Error::ParentMissing { parent, .. }) => {
                self.make_dirs(&parent)?;
                self.make_dirs(dir)
            }
            Err(e) if self.session.exists(dir).unwrap_or(false) => {
                let _ = e;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn upload(&self, tmp: &str, data: &[u8]) -> std::result::Result<(), sftp::Error> {
        match self.session.upload(data, tmp, &mut ()) {
            Err(sftp::Error::ParentMissing { parent, .. }) => {
                self.make_dirs(&parent)?;
                self.session.upload(data, tmp, &mut ()).map(drop)
            }
            other => other.map(drop),
        }
    }

    fn walk(
        &self,
        dir: &str,
        rel: &str,
        prefix: &str,
        each: &mut dyn FnMut(ObjectMeta) -> Result<()>,
    ) -> Result<()> {
        let mut entries = match self.session.list_dir(dir) {
            Ok(e) => e,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(self.fail("list", rel, &e)),
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries {
            if entry.name.starts_with('.') {
                continue;
            }
            let full = if rel.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel}/{}", entry.name)
            };
            match entry.stat.kind {
                sftp::FileKind::Dir => {
                    let as_dir = format!("{full}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        self.walk(&format!("{dir}/{}", entry.name), &full, prefix, each)?;
                    }
                }
                sftp::FileKind::File if full.starts_with(prefix) => each(ObjectMeta {
                    name: full,
                    size: entry.stat.size_bytes,
                    modified: UNIX_EPOCH
                        + Duration::from_secs(u64::from(entry.stat.mtime_secs.unwrap_or(0))),
                })?,
                _ => {}
            }
        }
        Ok(())
    }
}

impl Backend for SftpBackend {
    fn location(&self) -> String {
        self.spec.clone()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        let mut out = Vec::new();
        self.session
            .download_at_most(&path, &mut out, Some(MAX_OBJECT_BYTES), &mut ())
            .map_err(|e| self.fail("get", name, &e))?;
        Ok(out)
    }

    fn put(&self, name: &str, data: &[u8], mode: PutMode) -> Result<()> {
        let path = self.path(name)?;
        let tmp = {
            let (dir, file) = path.rsplit_once('/').unwrap_or(("", &path));
            format!("{dir}/.{file}.vcb-tmp-{:016x}", rand::random::<u64>())
        };
        self.upload(&tmp, data)
            .map_err(|e| self.fail("put", name, &e))?;
        let moved = match mode {
            PutMode::Overwrite => self.session.rename(&tmp, &path),
            PutMode::Create | PutMode::Data => self.session.rename_noreplace(&tmp, &path),
        };
        match moved {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.session.remove_file(&tmp);
                let exists = matches!(
                    e,
                    sftp::Error::Remote {
                        kind: sftp::RemoteErrorKind::AlreadyExists,
                        ..
                    }
                );
                if exists && mode == PutMode::Data {
                    return Ok(());
                }
                Err(self.fail("rename", name, &e))
            }
        }
    }

    fn delete(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        match self.session.remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(self.fail("delete", name, &e)),
        }
    }

    fn stat(&self, name: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(name)?;
        match self.session.stat(&path) {
            Ok(st) => Ok(Some(ObjectMeta {
                name: name.to_owned(),
                size: st.size_bytes,
                modified: UNIX_EPOCH + Duration::from_secs(u64::from(st.mtime_secs.unwrap_or(0))),
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.fail("stat", name, &e)),
        }
    }

    fn list(&self, prefix: &str, each: &mut dyn FnMut(ObjectMeta) -> Result<()>) -> Result<()> {
        self.walk(&self.url.path.clone(), "", prefix, each)
    }

    fn is_empty(&self) -> Result<bool> {
        match self.session.list_dir(&self.url.path) {
            Ok(entries) => Ok(entries.is_empty()),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(self.fail("list", "", &e)),
        }
    }

    fn create(&self) -> Result<()> {
        let root = self.url.path.clone();
        if !self.session.exists(&root).unwrap_or(false) {
            self.make_dirs(&root)
                .map_err(|e| self.fail("create folder", "", &e))?;
        }
        let mut subs: Vec<String> = [
            "keys", "points", "indexes", "sessions", "locks", "verify", "chunks",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        subs.extend((0..=255u8).map(|i| format!("chunks/{i:02x}")));
        for sub in subs {
            let dir = self.url.join(&sub);
            self.make_dirs(&dir)
                .map_err(|e| self.fail("create folder", &sub, &e))?;
        }
        Ok(())
    }
}
