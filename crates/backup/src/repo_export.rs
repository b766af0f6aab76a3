//! `vcb repo export`: a repository point written out as a classic VCB backup folder
//! (catalog + compacted VMDKs), so every tool and restore path that reads folders works
//! on it.

use crate::dest::Destination;
use crate::error::Result;
use crate::export::sink::{FolderSink, Sink};
use crate::export::ExportFormat;
use crate::observer::{Event, Observer};
use crate::restore::{RepoSource, RestoreSource};

/// Write the point `spec` of `repo` into `dest` (which must not exist yet). Returns the
/// catalog written.
///
/// # Errors
/// Repository errors (a damaged or missing object stops the export and the incomplete
/// folder is removed), destination errors.
pub fn export_point(
    repo: &repo::Repository,
    spec: &str,
    dest: &mut dyn Destination,
    format: ExportFormat,
    obs: &mut dyn Observer,
) -> Result<vmx::Catalog> {
    let point = repo.find_point(spec)?;
    let (source, catalog) = RepoSource::open(repo, point)?;
    dest.create()?;
    let mut sink = FolderSink::new(dest);
    let written = write(&source, &catalog, &mut sink, format, obs);
    if written.is_err() {
        sink.discard(obs);
    }
    written
}

fn write(
    source: &RepoSource,
    catalog: &vmx::Catalog,
    sink: &mut FolderSink<'_>,
    format: ExportFormat,
    obs: &mut dyn Observer,
) -> Result<vmx::Catalog> {
    let mut files = Vec::new();
    for f in &catalog.files {
        let mut r = source.reader(&f.name)?;
        let written = sink.put_file(&f.name, &mut r)?;
        obs.event(&Event::FileCopied {
            name: f.name.clone(),
            size_bytes: written.size_bytes,
        });
        files.push(written);
    }
    for d in catalog.disks.iter().filter(|d| d.backed_up) {
        if obs.cancelled() {
            return Err(crate::Error::Cancelled);
        }
        let Some(name) = d.filename.as_deref() else {
            continue;
        };
        let mut disk = source.open_disk(name)?;
        sink.put_named(name, &mut *disk, format, obs)?;
    }
    files.extend(sink.disks_done()?);
    let mut out = catalog.clone();
    out.files = files;
    sink.commit(&out, obs)?;
    Ok(out)
}
