//! Describing a disk (`info`) and checking it (`check`, `chain_consistent`).

use crate::check::CheckReport;
use crate::create::DiskFormat;
use crate::descriptor::ExtentType;
use crate::disk::Disk;
use crate::error::Result;
use crate::extent::BlockState;
use crate::link::{read_descriptor, OpenOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One link as `info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    /// Descriptor path.
    pub path: PathBuf,
    /// createType.
    pub create_type: String,
    /// CID (hex).
    pub cid: String,
    /// parentCID (hex; ffffffff = none).
    pub parent_cid: String,
    /// parentFileNameHint.
    pub parent_hint: Option<String>,
    /// Extent files.
    pub files: Vec<PathBuf>,
    /// Bytes the link's files occupy on the host file system.
    pub file_bytes: u64,
}

/// What `vcb disk info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    /// The top descriptor.
    pub path: PathBuf,
    /// vcb's format name (`thin`, `2gbsparse`, ...) when recognised.
    pub format: Option<String>,
    /// createType of the top link.
    pub create_type: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Bytes holding data across the chain.
    pub allocated: u64,
    /// Bytes recorded as zero.
    pub zero: u64,
    /// `ddb.adapterType`.
    pub adapter: Option<String>,
    /// The chain, top first.
    pub chain: Vec<LinkInfo>,
}

/// Describe the disk at `path`.
pub fn info(path: &Path, opts: &OpenOptions) -> Result<DiskInfo> {
    let mut disk = Disk::open(
        path,
        &OpenOptions {
            writable: false,
            ..opts.clone()
        },
    )?;
    let runs = disk.allocation()?;
    let sum = |s: BlockState| runs.iter().filter(|r| r.state == s).map(|r| r.len).sum();
    let top = disk.links()[0].descriptor().clone();
    let chain = disk
        .links()
        .iter()
        .map(|l| {
            let d = l.descriptor();
            LinkInfo {
                path: l.path().to_path_buf(),
                create_type: d.create_type.to_string(),
                cid: format!("{:08x}", d.cid),
                parent_cid: format!("{:08x}", d.parent_cid),
                parent_hint: d.parent_file_name_hint.clone(),
                files: l.files(),
                file_bytes: l.allocated_file_bytes(),
            }
        })
        .collect();
    Ok(DiskInfo {
        path: path.to_path_buf(),
        format: DiskFormat::of_descriptor(&top).map(|f| f.name()),
        create_type: top.create_type.to_string(),
        capacity: disk.capacity(),
        allocated: sum(BlockState::Data),
        zero: sum(BlockState::Zero),
        adapter: top.ddb_value("ddb.adapterType").map(str::to_string),
        chain,
    })
}

/// Check that the chain at `path` opens: parents present, CIDs linked, capacities equal,
/// no loops. Returns the chain's descriptor paths, top first.
pub fn chain_consistent(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    let disk = Disk::open(
        path,
        &OpenOptions {
            writable: false,
            ..opts.clone()
        },
    )?;
    Ok(disk
        .links()
        .iter()
        .map(|l| l.path().to_path_buf())
        .collect())
}

/// Check (and with `repair`, fix) the metadata of every extent of the disk at `path` (its
/// own link), and the chain below it.
pub fn check(path: &Path, repair: bool, opts: &OpenOptions) -> Result<CheckReport> {
    crate::replace::recover_folder(&crate::confine::canonical_dir(path)?)?;
    if repair {
        crate::busy::refuse_busy(path, "repair")?;
    }
    let (d, store) = read_descriptor(path)?;
    let mut report = CheckReport::default();
    for e in &d.extents {
        let Some(name) = &e.file else { continue };
        let file = if store == crate::link::DescriptorStore::Embedded {
            path.to_path_buf()
        } else {
            crate::confine::resolve_extent(path, e.kind, name, opts)?
        };
        if !file.exists() {
            report.problem(format!(
                "{}: extent file {} is missing",
                path.display(),
                file.display()
            ));
            continue;
        }
        match e.kind {
            ExtentType::Sparse => report.merge(crate::sparse::check(&file, repair)?),
            ExtentType::VmfsSparse => report.merge(crate::cowd::check(&file, repair)?),
            ExtentType::Flat | ExtentType::Vmfs => {
                let need = (e.offset_sectors + e.sectors) * 512;
                let have = crate::flat::device_size(&file)?;
                if have < need {
                    report.problem(format!(
                        "{}: flat extent is {have} bytes, shorter than the {need} the descriptor declares",
                        file.display()
                    ));
                    if repair {
                        crate::fileio::PathFile::open(&file, true)?.set_len(need)?;
                        report.repaired(format!(
                            "{}: extended to {need} bytes (the tail reads as zeros)",
                            file.display()
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if let Err(e) = chain_consistent(path, opts) {
        report.problem(e.to_string());
    }
    Ok(report)
}

/// Compatibility mode of a raw device mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RdmMode {
    /// Virtual compatibility (snapshots possible).
    Virtual,
    /// Physical compatibility (pass-through; no snapshots).
    Physical,
    /// A raw device used directly (vmfsRaw).
    Raw,
}

/// The device a mapping file stands for and its mode; an error when `path` is no mapping.
pub fn rdm_target(path: &Path) -> Result<(RdmMode, PathBuf)> {
    use crate::descriptor::CreateType;
    let (d, _) = read_descriptor(path)?;
    let mode = match d.create_type {
        CreateType::VmfsRawDeviceMap => RdmMode::Virtual,
        CreateType::VmfsPassthroughRawDeviceMap => RdmMode::Physical,
        CreateType::VmfsRaw => RdmMode::Raw,
        other => {
            return Err(crate::Error::InvalidArgument(format!(
                "{}: not a raw device mapping (createType {other})",
                path.display()
            )))
        }
    };
    let name = d
        .extents
        .iter()
        .find_map(|e| e.file.clone())
        .ok_or_else(|| crate::Error::corrupt(path, "mapping without an extent file"))?;
    let map = crate::confine::resolve(
        path,
        &name,
        crate::confine::Role::RdmExtent,
        &OpenOptions::default(),
    )?;
    let target = std::fs::read_link(&map).unwrap_or(map);
    Ok((mode, target))
}
