//! Where a repository's objects live: one small trait, three implementations.
//!
//! A repository is a flat set of named objects (`config`, `keys/…`, `chunks/ab/…`,
//! `points/…`), written whole and never modified in place, so the same trait fits a local
//! folder ([`Local`]), an SFTP server ([`SftpBackend`]) and S3-compatible object storage
//! ([`S3`]). What each backend guarantees:
//!
//! - [`PutMode::Create`] is a conditional create: it fails with
//!   [`BackendKind::AlreadyExists`] rather than replace an object (a no-replace rename
//!   locally and over SFTP, `If-None-Match: *` on S3).
//! - [`PutMode::Data`] objects (chunks, indexes) are content-addressed: an existing one
//!   is left alone; they are durable only after [`Backend::sync`], which a writer calls
//!   before it writes the metadata that points at them.
//! - Listing is in name order and streams, so a listing of millions of chunks needs no
//!   memory proportional to their number.
//! - Modification times come from the storage's own clock; the garbage collector compares
//!   only such times with each other.

mod local;
mod s3;
mod sftp;

pub use local::Local;
pub use s3::{S3Options, S3};
pub use sftp::SftpBackend;

use crate::error::{BackendKind, Error, Result};
use std::time::SystemTime;

/// How [`Backend::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (atomically: readers see the old or the new object).
    Overwrite,
    /// Fail with [`BackendKind::AlreadyExists`] if it exists; durable on return.
    Create,
    /// Content-addressed data: keep an existing object; durable after [`Backend::sync`].
    Data,
}

/// An object found by a listing or a stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its name inside the repository (`chunks/ab/ab12…`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, by the storage's clock.
    pub modified: SystemTime,
}

/// The storage of one repository.
pub trait Backend: Send + Sync {
    /// The repository as the user wrote it (path or URL), for messages.
    fn location(&self) -> String;

    /// Read the whole object `name`.
    ///
    /// # Errors
    /// [`Error::Backend`] with [`BackendKind::NotFound`] when it does not exist.
    fn get(&self, name: &str) -> Result<Vec<u8>>;

    /// Write the object `name`.
    ///
    /// # Errors
    /// [`Error::Backend`]: [`BackendKind::AlreadyExists`] for [`PutMode::Create`] on an
    /// existing object, [`BackendKind::StorageFull`] when the storage is full.
    fn put(&self, name: &str, data: &[u8], mode: PutMode) -> Result<()>;

    /// Remove the object `name`; `Ok(false)` when it did not exist.
    ///
    /// # Errors
    /// [`Error::Backend`].
    fn delete(&self, name: &str) -> Result<bool>;

    /// The object's size and time, `None` when it does not exist.
    ///
    /// # Errors
    /// [`Error::Backend`].
    fn stat(&self, name: &str) -> Result<Option<ObjectMeta>>;

    /// Call `each` for every object whose name starts with `prefix` (a folder: ends with
    /// `/`), in name order. Stops at the first error `each` returns.
    ///
    /// # Errors
    /// [`Error::Backend`], or `each`'s error.
    fn list(&self, prefix: &str, each: &mut dyn FnMut(ObjectMeta) -> Result<()>) -> Result<()>;

    /// Make every [`PutMode::Data`] object written so far durable.
    ///
    /// # Errors
    /// [`Error::Backend`].
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Whether requests cross a network (more of them are then kept in flight).
    fn is_remote(&self) -> bool {
        true
    }

    /// Whether the repository's location is empty (or does not exist yet): `init`
    /// refuses anything else.
    ///
    /// # Errors
    /// [`Error::Backend`].
    fn is_empty(&self) -> Result<bool>;

    /// Prepare an empty location for a new repository (create folders).
    ///
    /// # Errors
    /// [`Error::Backend`].
    fn create(&self) -> Result<()>;
}

/// How to reach a repository that is not a local path.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// SSH settings for `sftp://` and `scp://` repositories.
    pub ssh: Option<::sftp::ConnectOptions>,
    /// Endpoint and credentials for `s3://` repositories.
    pub s3: S3Options,
}

/// Open the backend a user wrote: a local path, `file:///path`, `sftp://` or `scp://`
/// (user@host[:port]/path), or `s3://bucket/prefix`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown scheme or a bad URL; connection errors.
pub fn open(spec: &str, opts: &BackendOptions) -> Result<Box<dyn Backend>> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        return Ok(Box::new(S3::open(rest, &opts.s3)?));
    }
    if ::sftp::RemoteUrl::is_remote(spec) {
        let ssh = opts
            .ssh
            .clone()
            .unwrap_or_else(|| ::sftp::ConnectOptions::new(::sftp::SshEnv::from_process()));
        return Ok(Box::new(SftpBackend::connect(spec, &ssh)?));
    }
    let path = spec.strip_prefix("file://").unwrap_or(spec);
    if path.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "{spec}: unknown repository scheme (a path, sftp://, scp:// or s3://)"
        )));
    }
    if path.is_empty() {
        return Err(Error::InvalidArgument("empty repository path".into()));
    }
    Ok(Box::new(Local::new(path)))
}

/// Checks an object name: `/`-separated parts of safe characters, no `.`/`..`, no empty
/// part. Every name a backend receives passes this (names come from this crate, but one
/// rule keeps a bug from ever reaching outside the repository).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name:?}: not a repository object name"
        )))
    }
}

/// A backend error for `object`.
pub(crate) fn err(
    location: &str,
    op: &'static str,
    object: &str,
    kind: BackendKind,
    detail: impl Into<String>,
) -> Error {
    Error::Backend {
        location: location.to_owned(),
        op,
        object: object.to_owned(),
        kind,
        detail: detail.into(),
    }
}

/// The backend kind of a local I/O error.
pub(crate) fn io_kind(e: &std::io::Error) -> BackendKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => BackendKind::NotFound,
        std::io::ErrorKind::AlreadyExists => BackendKind::AlreadyExists,
        std::io::ErrorKind::PermissionDenied => BackendKind::PermissionDenied,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            BackendKind::StorageFull
        }
        _ => BackendKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_stay_inside() {
        for good in [
            "config",
            "chunks/ab/abcdef",
            "points/0a1b/2c3d-4e",
            "keys/k1",
        ] {
            check_name(good).unwrap();
        }
        for bad in [
            "", "../x", "a//b", "/abs", "a/./b", "a/..", ".hidden", "a b", "a\\b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
