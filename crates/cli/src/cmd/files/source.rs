//! Opening a backup's disks for file access: a backup folder (verified against its
//! catalog, with its incremental chain), a repository point, or one disk file (a VMDK
//! chain opened read-only, or a raw image).

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
    _source: Option<Box<dyn RestoreSource>>,
    /// The VM snapshot to remove once the disks are closed (fields drop in order).
    _release: Option<Release>,
}

/// Removes a snapshot `vcb files` took of a VM when dropped.
pub(crate) struct Release {
    host: host::Host,
    held: backup::HeldSnapshot,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut quiet = crate::cmd::backup::render::Render::new(1);
        if let Err(e) =
            backup::release_snapshot(&self.host, self.held.moref, Some(self.held.uid), &mut quiet)
        {
            eprintln!("vcb: {}: could not remove snapshot {} (vcbMounter's next run or `vcb vm snapshot remove` does): {e}", self.held.vm, self.held.uid);
        }
    }
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

/// Open `spec`: a backup folder, `repo:REPO#POINT`, a disk file, or a VM of the host.
pub(crate) fn open_source(
    spec: &str,
    remote: &crate::cmd::backup::RemoteArgs,
    root: Option<&std::path::Path>,
) -> Result<Opened> {
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
    if std::path::Path::new(spec).is_file() {
        return open_image(spec);
    }
    if !std::path::Path::new(spec).exists() && !spec.contains('/') {
        return open_vm(spec, root);
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

/// A VM of the local host (`--root`): a quiesced snapshot is taken, its static disks are
/// read, and the snapshot is removed when the returned value is dropped.
fn open_vm(spec: &str, root: Option<&std::path::Path>) -> Result<Opened> {
    use crate::cmd::backup::{backup_options, open_host, HostArgs};
    use crate::tools::conf::Overrides;
    let args = HostArgs {
        root: root.map(std::path::Path::to_path_buf),
        config: None,
    };
    let (host, conf) = open_host(&args, &Overrides::default())?;
    let opts = backup_options(backup::ExportFormat::Split2Gb, true, &conf);
    let held = backup::hold_snapshot(
        &host,
        spec,
        &opts,
        &mut crate::cmd::backup::render::Render::new(1),
    )?;
    let read = host.confined().disk_options(false);
    let release = Release { host, held };
    let mut o = open_held(spec, &release.held.disks, &read)?;
    o._release = Some(release);
    Ok(o)
}

/// The static disks of a held snapshot, opened read-only.
pub(crate) fn open_held(
    name: &str,
    disks: &[(String, std::path::PathBuf)],
    read: &vmdk::OpenOptions,
) -> Result<Opened> {
    let mut opened: Vec<(String, Box<dyn vmdk::DiskSource>)> = Vec::new();
    for (node, path) in disks {
        let disk = vmdk::Disk::open(path, read)
            .with_context(|| format!("{name}: disk {node} ({})", path.display()))?;
        opened.push((node.clone(), Box::new(disk)));
    }
    open_sources(name, opened)
}

/// Disks already opened (a host agent's NBD exports, for instance), by node.
pub(crate) fn open_sources(
    name: &str,
    disks: Vec<(String, Box<dyn vmdk::DiskSource>)>,
) -> Result<Opened> {
    let nodes: Vec<String> = disks.iter().map(|d| d.0.clone()).collect();
    let devices: Vec<Arc<dyn Device>> = disks
        .into_iter()
        .map(|(_, d)| Arc::new(DiskDevice::new(d)) as Arc<dyn Device>)
        .collect();
    build(name, &devices, &nodes, None)
}

/// A single disk file: a VMDK (any chain, opened read-only) or a raw image.
fn open_image(spec: &str) -> Result<Opened> {
    let path = std::path::Path::new(spec);
    let dev: Arc<dyn Device> = match vmdk::Disk::open(path, &vmdk::OpenOptions::read_only()) {
        Ok(disk) => Arc::new(DiskDevice::new(Box::new(disk))),
        Err(e)
            if path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("vmdk")) =>
        {
            return Err(e).with_context(|| format!("{spec}: open disk"));
        }
        Err(_) => Arc::new(guestfs::FileDevice::open(path)?),
    };
    build(spec, &[dev], &["disk".to_string()], None)
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
    build(name, &devices, &nodes, Some(src))
}

fn build(
    name: &str,
    devices: &[Arc<dyn Device>],
    nodes: &[String],
    src: Option<Box<dyn RestoreSource>>,
) -> Result<Opened> {
    let volumes = guestfs::volumes(devices)
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
        _release: None,
    })
}
