//! The disks of a backup: which are exported and how, and the conversion itself.

use crate::dest::{Destination, StreamFile};
use crate::error::{Error, Result};
use crate::observer::Observer;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use vmx::{CatalogFile, DiskNode};

/// How an exported disk is laid out in the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// `-M 0`: twoGbMaxExtentSparse, split in 2 GB extents (the default).
    #[default]
    Split2Gb,
    /// `-M 1`: one monolithicSparse file.
    Monolithic,
}

impl ExportFormat {
    /// The vmdk format written.
    pub fn disk_format(self) -> vmdk::DiskFormat {
        match self {
            ExportFormat::Split2Gb => vmdk::DiskFormat::TwoGbSparse,
            ExportFormat::Monolithic => vmdk::DiskFormat::MonoSparse,
        }
    }
}

/// What kind of disk sits at a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKind {
    /// A virtual disk (flat, thin, sparse...) with its provisioning (`thin`...).
    Virtual {
        /// The vmkfstools format name of the base link.
        format: String,
    },
    /// A virtual-compatibility RDM: snapshotted and exported like a virtual disk.
    VirtualRdm {
        /// The mapped device.
        device: PathBuf,
    },
    /// A physical-compatibility RDM (or raw device): cannot be snapshotted.
    PhysicalRdm {
        /// The mapped device.
        device: PathBuf,
    },
}

/// One disk of the VM as the backup sees it.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    /// Where it is attached.
    pub node: DiskNode,
    /// The link the .vmx names before the backup snapshot (the chain's top).
    pub top: PathBuf,
    /// The chain's bottom link: the disk's identity and provisioning.
    pub base: PathBuf,
    /// What it is.
    pub kind: DiskKind,
    /// `independent-*` disks are left out of snapshots.
    pub independent: bool,
    /// Capacity in bytes (0 for a physical RDM, not opened).
    pub capacity_bytes: u64,
    /// Why the disk is left out of this backup (an independent disk of a running VM).
    pub skipped: Option<String>,
}

impl DiskPlan {
    /// The disk's name inside the backup: `scsi0-0-0-<base stem>.vmdk`.
    pub fn backup_name(&self) -> String {
        let file = self
            .base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file.strip_suffix(".vmdk").unwrap_or(&file);
        format!("{}-0-{stem}.vmdk", self.node.file_prefix())
    }

    /// The catalog's `format` value.
    pub fn catalog_format(&self) -> String {
        match &self.kind {
            DiskKind::Virtual { format } => format.clone(),
            DiskKind::VirtualRdm { .. } => "rdm".to_owned(),
            DiskKind::PhysicalRdm { .. } => "rdmp".to_owned(),
        }
    }
}

/// Classify a disk whose top link is `top`. A physical RDM is not opened (its device may
/// be in use); everything else is opened with `opts` (read-only, the host's confinement)
/// to find the chain's base.
pub fn plan_disk(
    node: DiskNode,
    top: &Path,
    independent: bool,
    opts: &vmdk::OpenOptions,
) -> Result<DiskPlan> {
    let plan = |base: PathBuf, kind, capacity_bytes| DiskPlan {
        node,
        top: top.to_path_buf(),
        base,
        kind,
        independent,
        capacity_bytes,
        skipped: None,
    };
    if let Ok((mode, device)) = vmdk::rdm_target(top) {
        if mode != vmdk::RdmMode::Virtual {
            return Ok(plan(top.to_path_buf(), DiskKind::PhysicalRdm { device }, 0));
        }
    }
    let disk = vmdk::Disk::open(top, opts)?;
    let capacity = disk.capacity();
    let base = disk
        .links()
        .last()
        .map_or_else(|| top.to_path_buf(), |l| l.path().to_path_buf());
    drop(disk);
    if let Ok((vmdk::RdmMode::Virtual, device)) = vmdk::rdm_target(&base) {
        return Ok(plan(base, DiskKind::VirtualRdm { device }, capacity));
    }
    let (desc, _) = vmdk::read_descriptor(&base)?;
    let format =
        vmdk::DiskFormat::of_descriptor(&desc).map_or_else(|| "thin".to_owned(), |f| f.name());
    Ok(plan(base, DiskKind::Virtual { format }, capacity))
}

/// Convert `source` (a static chain, or a repository's disk) into a new compacted disk
/// at `dst`. Returns the files written (descriptor and extents).
pub fn export_disk(
    source: &mut dyn vmdk::DiskSource,
    dst: &Path,
    format: ExportFormat,
    obs: &mut dyn Observer,
) -> Result<Vec<PathBuf>> {
    let spec = vmdk::CreateSpec {
        adapter: source.adapter(),
        ..vmdk::CreateSpec::new(0, format.disk_format())
    };
    convert_observed(source, dst, dst, &spec, obs, "compact file")?;
    Ok(vmdk::link_files(dst)?)
}

/// Export `source` as a new compacted disk named `name` straight into `dest`, each file
/// streamed as it is produced (no local file; see [`vmdk::export_sparse`]). Returns the
/// files written with their sizes and SHA-256, in order (the descriptor last).
pub fn stream_disk(
    source: &mut dyn vmdk::DiskSource,
    name: &str,
    format: ExportFormat,
    dest: &dyn Destination,
    obs: &mut dyn Observer,
) -> Result<Vec<CatalogFile>> {
    let spec = vmdk::CreateSpec {
        adapter: source.adapter(),
        ..vmdk::CreateSpec::new(0, format.disk_format())
    };
    let shown = PathBuf::from(format!("{}/{name}", dest.location()));
    let mut sink = DestSink {
        dest,
        current: None,
        failed: None,
        done: Vec::new(),
    };
    let mut progress = obs.converting(&shown, "compact file");
    let mut cancelled = false;
    let mut watch = Watch {
        inner: &mut *progress,
        cancelled: &mut cancelled,
    };
    let exported = vmdk::export_sparse(source, name, &spec, &mut sink, &mut watch);
    match (exported, sink.failed.take()) {
        (Ok(_), _) => Ok(sink.done),
        // The destination's own error says more than its text wrapped by vmdk.
        (Err(_), Some(e)) => Err(e),
        (Err(_), None) if cancelled => Err(Error::Cancelled),
        (Err(e), None) => Err(e.into()),
    }
}

/// Bytes the chain whose top is `source` holds as data (allocated, zeros included): an
/// upper bound of its compacted export, less its metadata.
pub fn allocated_bytes(source: &Path, opts: &vmdk::OpenOptions) -> Result<u64> {
    let mut disk = vmdk::Disk::open(source, opts)?;
    let capacity = disk.capacity();
    let (mut pos, mut data) = (0u64, 0u64);
    while pos < capacity {
        let run = disk.map(pos, capacity - pos)?;
        if run.len == 0 {
            break;
        }
        if run.state == vmdk::BlockState::Data {
            data += run.len;
        }
        pos += run.len;
    }
    Ok(data)
}

/// Feeds [`vmdk::export_sparse`]'s files into a destination's streams, keeping the
/// destination's first error (vmdk only sees its text).
struct DestSink<'a> {
    dest: &'a dyn Destination,
    current: Option<(String, Box<dyn StreamFile + 'a>)>,
    failed: Option<Error>,
    done: Vec<CatalogFile>,
}

impl DestSink<'_> {
    fn keep(&mut self, e: Error) -> std::io::Error {
        let text = e.to_string();
        self.current = None;
        self.failed.get_or_insert(e);
        std::io::Error::other(text)
    }
}

impl vmdk::ExportSink for DestSink<'_> {
    fn begin(&mut self, name: &str) -> std::io::Result<()> {
        match self.dest.put_stream(name) {
            Ok(f) => {
                self.current = Some((name.to_owned(), f));
                Ok(())
            }
            Err(e) => Err(self.keep(e)),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let Some((_, f)) = self.current.as_mut() else {
            return Err(std::io::Error::other("no file begun"));
        };
        match f.write(data) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.keep(e)),
        }
    }

    fn end(&mut self) -> std::io::Result<()> {
        let Some((name, f)) = self.current.take() else {
            return Err(std::io::Error::other("no file begun"));
        };
        match f.finish() {
            Ok(info) => {
                self.done.push(CatalogFile {
                    name,
                    size_bytes: info.size_bytes,
                    sha256: info.sha256,
                });
                Ok(())
            }
            Err(e) => Err(self.keep(e)),
        }
    }
}

/// Convert `src` into a new disk at `dst`, reporting through `obs.converting(shown, note)`
/// (`shown` is the name the user knows: the final one when `dst` is temporary); a cancel
/// from the observer becomes [`Error::Cancelled`].
pub(crate) fn convert_observed(
    src: &mut dyn vmdk::DiskSource,
    dst: &Path,
    shown: &Path,
    spec: &vmdk::CreateSpec,
    obs: &mut dyn Observer,
    note: &str,
) -> Result<()> {
    let mut progress = obs.converting(shown, note);
    let mut cancelled = false;
    let mut watch = Watch {
        inner: &mut *progress,
        cancelled: &mut cancelled,
    };
    match vmdk::convert(src, dst, spec, &mut watch) {
        Ok(()) => Ok(()),
        Err(_) if cancelled => Err(Error::Cancelled),
        Err(e) => Err(e.into()),
    }
}

/// Passes progress through and remembers whether the observer cancelled.
struct Watch<'a> {
    inner: &'a mut dyn vmdk::Progress,
    cancelled: &'a mut bool,
}

impl vmdk::Progress for Watch<'_> {
    fn start(&mut self, total_bytes: u64) {
        self.inner.start(total_bytes)
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        let flow = self.inner.advance(bytes);
        if flow.is_break() {
            *self.cancelled = true;
        }
        flow
    }
    fn warn(&mut self, w: &vmdk::Warning) {
        self.inner.warn(w)
    }
    fn finish(&mut self) {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_follow_vcb() {
        let p = DiskPlan {
            node: "scsi0:1".parse().unwrap(),
            top: "/ds/vm/vm-000001.vmdk".into(),
            base: "/ds/vm/vm_1.vmdk".into(),
            kind: DiskKind::Virtual {
                format: "thin".into(),
            },
            independent: false,
            capacity_bytes: 0,
            skipped: None,
        };
        assert_eq!(p.backup_name(), "scsi0-1-0-vm_1.vmdk");
        assert_eq!(p.catalog_format(), "thin");
    }
}
