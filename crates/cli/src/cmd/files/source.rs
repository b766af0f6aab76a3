//! Opening a backup's disks for file access: a backup folder (verified against its
//! catalog, with its incremental chain) or a repository point.

use anyhow::{bail, Context, Result};
use backup::restore::RestoreSource;
use guestfs::{Device, DiskDevice, FileSystem};
use std::sync::Arc;

/// A volume of an opened backup.
pub(crate) struct Vol {
    pub number: u32,
    pub disk: String,
    pub place: String,
    pub size: u64,
    pub fs: std::result::Result<Arc<dyn FileSystem>, guestfs::Error>,
}

/// A backup opened for file access.
pub(crate) struct Opened {
    /// How the user named it.
    pub name: String,
    /// Its volumes.
    pub volumes: Vec<Vol>,
    /// The source, kept open while its disks are read.
    _source: Box<dyn RestoreSource>,
}

impl Opened {
    /// The file system of volume `key`: its number, label or UUID.
    pub fn volume(&self, key: &str) -> Result<Arc<dyn FileSystem>> {
        let found = self
            .volumes
            .iter()
            .find(|v| v.number.to_string() == key)
            .or_else(|| {
                self.volumes.iter().find(|v| {
                    v.fs.as_ref().is_ok_and(|fs| {
                        fs.label().as_deref() == Some(key) || fs.uuid().as_deref() == Some(key)
                    })
                })
            });
        let Some(v) = found else {
            bail!(
                "{}: no volume {key:?} (`vcb files ls {}` lists them)",
                self.name,
                self.name
            );
        };
        match &v.fs {
            Ok(fs) => Ok(Arc::clone(fs)),
            Err(e) => bail!("{}: volume {}: {e}", self.name, v.number),
        }
    }
}

/// Open `spec`: a backup folder or `repo:REPO#POINT`.
pub(crate) fn open_source(spec: &str, remote: &crate::cmd::backup::RemoteArgs) -> Result<Opened> {
    if let Some(r) = crate::cmd::backup::repo_spec(spec) {
        let Some((repo_spec, point)) = r.rsplit_once('#') else {
            bail!("{spec}: name the point: repo:REPO#POINT (a point id, or a VM name for its latest point)");
        };
        let repo = crate::cmd::repo::access::RepoAccess::new(repo_spec, remote).open()?;
        let point = repo.find_point(point)?;
        let mut o = open_point(&repo, point)?;
        o.name = spec.to_string();
        return Ok(o);
    }
    let dir = backup::LocalDir::new(spec);
    let catalog = backup::restore::read_catalog(&dir)
        .with_context(|| format!("{spec}: not a backup folder"))?;
    let files = backup::restore::verify_open_chain(&dir, &catalog)?;
    open_disks(spec, Box::new(files), &catalog)
}

/// Open a point of `repo`.
pub(crate) fn open_point(repo: &repo::Repository, point: repo::Point) -> Result<Opened> {
    let name = format!("{}#{}", repo.location(), point.id);
    let (src, catalog) = backup::restore::RepoSource::open(repo, point)?;
    open_disks(&name, Box::new(src), &catalog)
}

fn open_disks(name: &str, src: Box<dyn RestoreSource>, catalog: &vmx::Catalog) -> Result<Opened> {
    let mut devices: Vec<Arc<dyn Device>> = Vec::new();
    let mut nodes = Vec::new();
    for d in catalog.disks.iter().filter(|d| d.backed_up) {
        let Some(file) = d.filename.as_deref() else {
            continue;
        };
        let disk = src
            .open_disk(file)
            .with_context(|| format!("{name}: disk {file}"))?;
        devices.push(Arc::new(DiskDevice::new(disk)));
        nodes.push(d.node.to_string());
    }
    let volumes = guestfs::volumes(&devices)
        .with_context(|| format!("{name}: partition table"))?
        .into_iter()
        .map(|v| Vol {
            number: v.number,
            disk: v
                .on_disk
                .map(|(i, _)| nodes[i].clone())
                .unwrap_or_else(|| "lvm".into()),
            place: v.place.split_once(" partition ").map_or_else(
                || {
                    if v.on_disk.is_some() {
                        "whole disk".to_string()
                    } else {
                        v.place.clone()
                    }
                },
                |(_, p)| format!("partition {p}"),
            ),
            size: v.size,
            fs: v.fs,
        })
        .collect();
    Ok(Opened {
        name: name.to_string(),
        volumes,
        _source: src,
    })
}
