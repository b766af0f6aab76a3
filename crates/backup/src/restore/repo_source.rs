//! Restoring a repository point: the point as a [`RestoreSource`].
//!
//! Before the restore plans or writes anything, the point is checked as a folder backup
//! is: its catalog parses and lists exactly the point's configuration files (names,
//! sizes, SHA-256s), every backed-up disk has an index that opens and matches its
//! capacity, every configuration file is read back and authenticated, and every chunk the
//! disks need exists. Disk data is authenticated chunk by chunk as it is copied; a chunk
//! that fails stops the restore while everything is still staged under hidden names, so
//! the target keeps its old files.

use super::verify::{parse_catalog, RestoreSource};
use super::{restore_from, RestoreOptions, RestoreReport};
use crate::error::{Error, Result};
use crate::observer::Observer;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A verified repository point.
#[derive(Debug)]
pub struct RepoSource {
    repo: repo::Repository,
    point: repo::Point,
    files: BTreeMap<String, repo::FileEntry>,
    disks: BTreeMap<String, repo::DiskEntry>,
}

impl RepoSource {
    /// Check `point` of `repo` (see the module doc) and return it with its catalog.
    ///
    /// # Errors
    /// [`Error::BadCatalog`] when the catalog and the point disagree, repository errors
    /// naming a damaged or missing object.
    pub fn open(repo: &repo::Repository, point: repo::Point) -> Result<(RepoSource, vmx::Catalog)> {
        let location = format!("{}#{}", repo.location(), point.id);
        let bad = |reason: String| Error::BadCatalog {
            location: location.clone(),
            reason,
        };
        let catalog = parse_catalog(point.catalog.as_bytes(), Path::new(&location))?;
        let files: BTreeMap<String, repo::FileEntry> = point
            .files
            .iter()
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        let disks: BTreeMap<String, repo::DiskEntry> = point
            .disks
            .iter()
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        if catalog.files.len() != files.len() {
            return Err(bad(
                "the catalog lists other files than the point holds".into()
            ));
        }
        for f in &catalog.files {
            super::plan::check_reserved(&f.name)?;
            let Some(entry) = files.get(&f.name) else {
                return Err(bad(format!("{}: listed but not stored", f.name)));
            };
            if entry.size != f.size_bytes || entry.sha256 != f.sha256_hex() {
                return Err(bad(format!(
                    "{}: size or SHA-256 differ from the point's",
                    f.name
                )));
            }
        }
        for d in catalog.disks.iter().filter(|d| d.backed_up) {
            let name = d
                .filename
                .as_deref()
                .ok_or_else(|| bad(format!("disk {} has no filename", d.node)))?;
            let Some(entry) = disks.get(name) else {
                return Err(bad(format!("disk {name}: not stored in the point")));
            };
            if d.capacity_bytes.is_some_and(|c| c != entry.capacity) {
                return Err(bad(format!(
                    "disk {name}: capacity differs from the point's"
                )));
            }
        }
        let source = RepoSource {
            repo: repo.clone(),
            point,
            files,
            disks,
        };
        source.check_data()?;
        Ok((source, catalog))
    }

    /// The point.
    pub fn point(&self) -> &repo::Point {
        &self.point
    }

    /// Reads every configuration file back (authenticated, SHA-256 checked) and makes sure
    /// every chunk of every disk exists.
    fn check_data(&self) -> Result<()> {
        for f in self.files.values() {
            let mut r = repo::BlobReader::new(&self.repo, f);
            std::io::copy(&mut r, &mut std::io::sink())
                .map_err(|e| Error::Repo(repo::Error::corrupt(&f.name, e.to_string())))?;
        }
        for d in self.disks.values() {
            let index = self.repo.load_index(&d.index)?;
            let mut ids: Vec<repo::crypto::Id> = index.chunk_ids().collect();
            ids.sort();
            ids.dedup();
            if let Some(id) = self.repo.missing_chunks(&ids)?.first() {
                return Err(Error::Repo(repo::Error::Missing {
                    object: id.chunk_name(),
                    what: format!("a chunk of disk {} of point {}", d.name, self.point.id),
                }));
            }
        }
        Ok(())
    }
}

impl RestoreSource for RepoSource {
    fn location(&self) -> String {
        format!("{}#{}", self.repo.location(), self.point.id)
    }

    fn count(&self) -> usize {
        self.files.len() + self.disks.len()
    }

    fn reader(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let entry = self.files.get(name).ok_or_else(|| Error::MissingFile {
            location: self.location(),
            name: name.to_owned(),
        })?;
        Ok(Box::new(repo::BlobReader::new(&self.repo, entry)))
    }

    fn open_disk(&self, name: &str) -> Result<Box<dyn vmdk::DiskSource>> {
        let entry = self.disks.get(name).ok_or_else(|| Error::MissingFile {
            location: self.location(),
            name: name.to_owned(),
        })?;
        Ok(Box::new(repo::RepoDisk::open(&self.repo, entry)?))
    }
}

/// Restore the point `spec` of `repo` (see [`repo::Repository::find_point`]) onto `host`
/// with every option a folder restore has.
///
/// # Errors
/// As for [`crate::restore_vm`], and repository errors.
pub fn restore_point(
    host: &mut host::Host,
    repo: &repo::Repository,
    spec: &str,
    opts: &RestoreOptions,
    obs: &mut dyn Observer,
) -> Result<RestoreReport> {
    let point = repo.find_point(spec)?;
    let (source, catalog) = RepoSource::open(repo, point)?;
    restore_from(host, &source, &catalog, opts, obs)
}
