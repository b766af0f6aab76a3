//! Creating disks in every format vcb writes.
//!
//! | format              | createType                  | files                                   |
//! |---------------------|-----------------------------|-----------------------------------------|
//! | zeroedthick         | vmfs                        | NAME.vmdk + NAME-flat.vmdk (blocks reserved) |
//! | eagerzeroedthick    | vmfs (+ddb.vcb.provisioning)| NAME.vmdk + NAME-flat.vmdk (zeros written) |
//! | thin                | vmfs (+ddb.thinProvisioned) | NAME.vmdk + NAME-flat.vmdk (holes)       |
//! | monoflat            | monolithicFlat              | NAME.vmdk + NAME-flat.vmdk               |
//! | 2gbflat             | twoGbMaxExtentFlat          | NAME.vmdk + NAME-f001.vmdk ...           |
//! | monosparse          | monolithicSparse            | NAME.vmdk (KDMV, descriptor embedded)    |
//! | 2gbsparse           | twoGbMaxExtentSparse        | NAME.vmdk + NAME-s001.vmdk ...           |
//! | streamOptimized     | streamOptimized             | NAME.vmdk (write-once, via convert)      |
//! | rdm / rdmp          | vmfsRawDeviceMap / vmfsPassthroughRawDeviceMap | NAME.vmdk + NAME-rdm(p).vmdk → device |
//! | raw                 | vmfsRaw                     | NAME.vmdk + NAME-raw.vmdk → device       |
//!
//! Device mappings are symbolic links beside the descriptor, the way an RDM mapping file on
//! VMFS stands for its LUN: reading the mapping file reads the device.

use crate::descriptor::{Access, CreateType, Descriptor, ExtentLine, ExtentType};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{SECTOR, SPLIT_EXTENT_BYTES};
use fsio::sync_dir;
use std::path::{Path, PathBuf};

/// Disk formats vcb creates (vmkfstools `-d` names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// ESX preallocated: blocks reserved, zeroed lazily ("preallocated", the default).
    ZeroedThick,
    /// ESX preallocated with zeros written at creation.
    EagerZeroedThick,
    /// ESX thin: a flat file with holes.
    Thin,
    /// Hosted: twoGbMaxExtentSparse.
    TwoGbSparse,
    /// Hosted: monolithicSparse.
    MonoSparse,
    /// Hosted: monolithicFlat.
    MonoFlat,
    /// Hosted: twoGbMaxExtentFlat.
    TwoGbFlat,
    /// Compressed, write-once export format.
    StreamOptimized,
    /// Raw device mapping, virtual compatibility.
    Rdm(PathBuf),
    /// Raw device mapping, physical compatibility (pass-through).
    RdmPassthrough(PathBuf),
    /// A raw device used directly.
    Raw(PathBuf),
}

impl DiskFormat {
    /// Parse a vmkfstools `-d` value.
    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        let device = |prefix: &str| -> Option<PathBuf> {
            lower
                .strip_prefix(prefix)
                .map(|_| PathBuf::from(&s[prefix.len()..]))
                .filter(|p| !p.as_os_str().is_empty())
        };
        if let Some(d) = device("rdmp:") {
            return Ok(DiskFormat::RdmPassthrough(d));
        }
        if let Some(d) = device("rdm:") {
            return Ok(DiskFormat::Rdm(d));
        }
        if let Some(d) = device("raw:") {
            return Ok(DiskFormat::Raw(d));
        }
        Ok(match lower.as_str() {
            "zeroedthick" | "preallocated" | "thick" => DiskFormat::ZeroedThick,
            "eagerzeroedthick" => DiskFormat::EagerZeroedThick,
            "thin" => DiskFormat::Thin,
            "2gbsparse" | "twogbmaxextentsparse" => DiskFormat::TwoGbSparse,
            "monosparse" | "monolithicsparse" | "sparse" => DiskFormat::MonoSparse,
            "monoflat" | "monolithicflat" => DiskFormat::MonoFlat,
            "2gbflat" | "twogbmaxextentflat" => DiskFormat::TwoGbFlat,
            "streamoptimized" | "stream" => DiskFormat::StreamOptimized,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown disk format {s:?} (zeroedthick, eagerzeroedthick, thin, 2gbsparse, monosparse, monoflat, 2gbflat, streamoptimized, rdm:DEV, rdmp:DEV, raw:DEV)"
                )))
            }
        })
    }

    /// The vmkfstools name.
    pub fn name(&self) -> String {
        match self {
            DiskFormat::ZeroedThick => "zeroedthick".into(),
            DiskFormat::EagerZeroedThick => "eagerzeroedthick".into(),
            DiskFormat::Thin => "thin".into(),
            DiskFormat::TwoGbSparse => "2gbsparse".into(),
            DiskFormat::MonoSparse => "monosparse".into(),
            DiskFormat::MonoFlat => "monoflat".into(),
            DiskFormat::TwoGbFlat => "2gbflat".into(),
            DiskFormat::StreamOptimized => "streamoptimized".into(),
            DiskFormat::Rdm(d) => format!("rdm:{}", d.display()),
            DiskFormat::RdmPassthrough(d) => format!("rdmp:{}", d.display()),
            DiskFormat::Raw(d) => format!("raw:{}", d.display()),
        }
    }

    /// The createType written for this format.
    pub fn create_type(&self) -> CreateType {
        match self {
            DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick | DiskFormat::Thin => {
                CreateType::Vmfs
            }
            DiskFormat::TwoGbSparse => CreateType::TwoGbMaxExtentSparse,
            DiskFormat::MonoSparse => CreateType::MonolithicSparse,
            DiskFormat::MonoFlat => CreateType::MonolithicFlat,
            DiskFormat::TwoGbFlat => CreateType::TwoGbMaxExtentFlat,
            DiskFormat::StreamOptimized => CreateType::StreamOptimized,
            DiskFormat::Rdm(_) => CreateType::VmfsRawDeviceMap,
            DiskFormat::RdmPassthrough(_) => CreateType::VmfsPassthroughRawDeviceMap,
            DiskFormat::Raw(_) => CreateType::VmfsRaw,
        }
    }

    /// Whether the format maps a device rather than holding data.
    pub fn device(&self) -> Option<&Path> {
        match self {
            DiskFormat::Rdm(d) | DiskFormat::RdmPassthrough(d) | DiskFormat::Raw(d) => Some(d),
            _ => None,
        }
    }

    /// Recognise the format of an opened disk's top descriptor.
    pub fn of_descriptor(d: &Descriptor) -> Option<DiskFormat> {
        Some(match d.create_type {
            CreateType::Vmfs
            | CreateType::VmfsPreallocated
            | CreateType::VmfsEagerZeroedThick
            | CreateType::VmfsThin => {
                if d.ddb_value("ddb.thinProvisioned") == Some("1")
                    || d.create_type == CreateType::VmfsThin
                {
                    DiskFormat::Thin
                } else if d.ddb_value(PROVISIONING_KEY) == Some("eagerzeroedthick")
                    || d.create_type == CreateType::VmfsEagerZeroedThick
                {
                    DiskFormat::EagerZeroedThick
                } else {
                    DiskFormat::ZeroedThick
                }
            }
            CreateType::TwoGbMaxExtentSparse => DiskFormat::TwoGbSparse,
            CreateType::MonolithicSparse => DiskFormat::MonoSparse,
            CreateType::MonolithicFlat => DiskFormat::MonoFlat,
            CreateType::TwoGbMaxExtentFlat => DiskFormat::TwoGbFlat,
            CreateType::StreamOptimized => DiskFormat::StreamOptimized,
            _ => return None,
        })
    }
}

/// Disk database key recording eager zeroing (VMFS keeps it in file-system metadata; a
/// descriptor has no standard key for it).
pub const PROVISIONING_KEY: &str = "ddb.vcb.provisioning";

/// Virtual adapter recorded in `ddb.adapterType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// IDE.
    Ide,
    /// BusLogic SCSI.
    BusLogic,
    /// LSI Logic SCSI (the ESX default).
    #[default]
    LsiLogic,
    /// Legacy ESX.
    LegacyEsx,
}

impl AdapterType {
    /// Parse a `-a` value.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ide" => AdapterType::Ide,
            "buslogic" => AdapterType::BusLogic,
            "lsilogic" => AdapterType::LsiLogic,
            "legacyesx" => AdapterType::LegacyEsx,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown adapter type {s:?} (ide, buslogic, lsilogic, legacyESX)"
                )))
            }
        })
    }

    /// Name as written in `ddb.adapterType`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::BusLogic => "buslogic",
            AdapterType::LsiLogic => "lsilogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Capacity in bytes (multiple of 512). Ignored for device mappings (the device's size).
    pub capacity_bytes: u64,
    /// Format.
    pub format: DiskFormat,
    /// Adapter recorded in the disk database.
    pub adapter: AdapterType,
    /// Extra disk database entries (e.g. carried over by convert).
    pub extra_ddb: Vec<(String, String)>,
}

impl CreateSpec {
    /// A spec with the default adapter.
    pub fn new(capacity_bytes: u64, format: DiskFormat) -> Self {
        CreateSpec {
            capacity_bytes,
            format,
            adapter: AdapterType::default(),
            extra_ddb: Vec::new(),
        }
    }
}

/// `base` name of a descriptor path: `dir/vm.vmdk` → (`dir`, `vm`).
pub(crate) fn split_name(path: &Path) -> Result<(PathBuf, String)> {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".vmdk").or(Some(n)))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a usable disk file name", path.display()))
        })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((dir, stem.to_string()))
}

pub(crate) fn base_ddb(capacity: u64, adapter: AdapterType) -> Vec<(String, String)> {
    let heads: u64 = if adapter == AdapterType::Ide { 16 } else { 255 };
    let cylinders = (capacity / SECTOR / (heads * 63)).clamp(1, 65535);
    vec![
        ("ddb.virtualHWVersion".into(), "4".into()),
        ("ddb.geometry.cylinders".into(), cylinders.to_string()),
        ("ddb.geometry.heads".into(), heads.to_string()),
        ("ddb.geometry.sectors".into(), "63".into()),
        ("ddb.adapterType".into(), adapter.as_str().into()),
        ("ddb.uuid".into(), crate::descriptor::random_ddb_uuid()),
        (
            "ddb.longContentID".into(),
            crate::descriptor::random_long_content_id(),
        ),
    ]
}

pub(crate) fn check_capacity(capacity: u64) -> Result<()> {
    if capacity == 0 || !capacity.is_multiple_of(SECTOR) {
        return Err(Error::InvalidArgument(format!(
            "capacity {capacity} bytes is not a positive multiple of 512"
        )));
    }
    if capacity > crate::magic::MAX_CAPACITY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "capacity {capacity} bytes exceeds the 64 TiB limit"
        )));
    }
    Ok(())
}

pub(crate) fn extent(kind: ExtentType, bytes: u64, file: String) -> ExtentLine {
    ExtentLine {
        access: Access::Rw,
        sectors: bytes / SECTOR,
        kind,
        file: Some(file),
        offset_sectors: 0,
    }
}

/// Sizes of the pieces of a split disk.
pub(crate) fn split_sizes(capacity: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut left = capacity;
    while left > 0 {
        let n = left.min(SPLIT_EXTENT_BYTES);
        v.push(n);
        left -= n;
    }
    v
}

/// Create a new disk at `path` (the descriptor, or the single file of monolithicSparse).
/// Nothing is overwritten: an existing file is an error. On failure no file remains.
pub fn create(path: &Path, spec: &CreateSpec) -> Result<()> {
    let mut created: Vec<PathBuf> = Vec::new();
    let result = create_inner(path, spec, &mut created);
    if result.is_err() {
        for f in created.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
    }
    result
}

fn create_inner(path: &Path, spec: &CreateSpec, created: &mut Vec<PathBuf>) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let (dir, name) = split_name(path)?;
    let capacity = match spec.format.device() {
        Some(dev) => {
            let size = crate::flat::device_size(dev)?;
            size - size % SECTOR
        }
        None => spec.capacity_bytes,
    };
    check_capacity(capacity)?;
    let mut d = Descriptor::new(spec.format.create_type());
    d.ddb = base_ddb(capacity, spec.adapter);
    for (k, v) in &spec.extra_ddb {
        d.set_ddb(k, v.clone());
    }
    match &spec.format {
        DiskFormat::ZeroedThick
        | DiskFormat::EagerZeroedThick
        | DiskFormat::Thin
        | DiskFormat::MonoFlat => {
            let flat_name = format!("{name}-flat.vmdk");
            let flat_path = dir.join(&flat_name);
            let f = PathFile::create_new(&flat_path)?;
            created.push(flat_path);
            match spec.format {
                DiskFormat::ZeroedThick => crate::flat::preallocate(&f, capacity)?,
                DiskFormat::EagerZeroedThick => write_zeros(&f, capacity)?,
                _ => f.set_len(capacity)?,
            }
            f.sync_all()?;
            let kind = if spec.format == DiskFormat::MonoFlat {
                ExtentType::Flat
            } else {
                ExtentType::Vmfs
            };
            d.extents.push(extent(kind, capacity, flat_name));
            if spec.format == DiskFormat::Thin {
                d.set_ddb("ddb.thinProvisioned", "1");
            }
            if spec.format == DiskFormat::EagerZeroedThick {
                d.set_ddb(PROVISIONING_KEY, "eagerzeroedthick");
            }
        }
        DiskFormat::TwoGbFlat | DiskFormat::TwoGbSparse => {
            let sparse = spec.format == DiskFormat::TwoGbSparse;
            for (i, size) in split_sizes(capacity).into_iter().enumerate() {
                let piece = format!("{name}-{}{:03}.vmdk", if sparse { 's' } else { 'f' }, i + 1);
                let piece_path = dir.join(&piece);
                if sparse {
                    crate::sparse::create(&piece_path, size, &sparse_opts(None))?;
                    created.push(piece_path);
                    d.extents.push(extent(ExtentType::Sparse, size, piece));
                } else {
                    let f = PathFile::create_new(&piece_path)?;
                    created.push(piece_path);
                    f.set_len(size)?;
                    f.sync_all()?;
                    d.extents.push(extent(ExtentType::Flat, size, piece));
                }
            }
        }
        DiskFormat::MonoSparse => {
            d.extents
                .push(extent(ExtentType::Sparse, capacity, format!("{name}.vmdk")));
            crate::sparse::create(path, capacity, &sparse_opts(Some(d.to_text())))?;
            created.push(path.to_path_buf());
            return Ok(sync_dir(&dir)?);
        }
        DiskFormat::StreamOptimized => {
            d.extents
                .push(extent(ExtentType::Sparse, capacity, format!("{name}.vmdk")));
            let w = crate::stream::StreamWriter::create(path, capacity, &d.to_text())?;
            created.push(path.to_path_buf());
            w.finish()?;
            return Ok(sync_dir(&dir)?);
        }
        DiskFormat::Rdm(dev) | DiskFormat::RdmPassthrough(dev) | DiskFormat::Raw(dev) => {
            let suffix = match spec.format {
                DiskFormat::Rdm(_) => "rdm",
                DiskFormat::RdmPassthrough(_) => "rdmp",
                _ => "raw",
            };
            let map_name = format!("{name}-{suffix}.vmdk");
            let map_path = dir.join(&map_name);
            let target = std::path::absolute(dev).map_err(|e| Error::io(dev, "resolve", e))?;
            std::os::unix::fs::symlink(&target, &map_path)
                .map_err(|e| Error::io(&map_path, "create mapping", e))?;
            created.push(map_path);
            let kind = if suffix == "raw" {
                ExtentType::VmfsRaw
            } else {
                ExtentType::VmfsRdm
            };
            d.extents.push(extent(kind, capacity, map_name));
        }
    }
    write_new_descriptor(path, &d, created)?;
    Ok(sync_dir(&dir)?)
}

fn sparse_opts(embedded: Option<String>) -> crate::sparse::CreateSparse {
    crate::sparse::CreateSparse {
        grain_sectors: crate::magic::DEFAULT_GRAIN_SECTORS,
        embedded_descriptor: embedded,
        zeroed_grain_gtes: false,
    }
}

/// Writes the descriptor of a new disk; a file that appeared at `path` since the checks
/// is never replaced.
fn write_new_descriptor(path: &Path, d: &Descriptor, created: &mut Vec<PathBuf>) -> Result<()> {
    fsio::create_atomic(path, d.to_text().as_bytes()).map_err(|e| match e {
        fsio::Error::Exists { path } => Error::AlreadyExists { path },
        e => e.into(),
    })?;
    created.push(path.to_path_buf());
    Ok(())
}

/// Write zeros over the whole file (eager zeroing), 1 MiB at a time.
pub(crate) fn write_zeros(f: &PathFile, len: u64) -> Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(zeros.len() as u64);
        f.write_all_at(&zeros[..n as usize], pos)?;
        pos += n;
    }
    f.set_len(len)
}

/// Format of a snapshot child (redo log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildFormat {
    /// ESX redo log: createType vmfsSparse, COWD extent `NAME-delta.vmdk`.
    VmfsSparse,
    /// Hosted (Workstation) child: monolithicSparse with parentFileNameHint.
    HostedSparse,
}

/// Create a child (redo log) of the disk at `parent` at `child`. The parent is only read:
/// its CID is recorded as the child's parentCID and its name as parentFileNameHint (relative
/// when both lie in one folder).
pub fn create_child(parent: &Path, child: &Path, format: ChildFormat) -> Result<()> {
    let hint = relative_hint(child, parent)?;
    create_child_hinted(parent, child, format, &hint)
}

/// [`create_child`] recording `hint` as the parent's name (for example
/// `../vm37-full/scsi0-0-0-vm37.vmdk`, so that a chain of backup folders can move as a
/// whole); `parent` is where the parent is now.
///
/// # Errors
/// As for [`create_child`].
pub fn create_child_hinted(
    parent: &Path,
    child: &Path,
    format: ChildFormat,
    hint: &str,
) -> Result<()> {
    let (pd, _) = crate::link::read_descriptor(parent)?;
    let capacity = pd.capacity_bytes();
    check_capacity(capacity)?;
    let (dir, name) = split_name(child)?;
    let hint = hint.to_owned();
    let create_type = match format {
        ChildFormat::VmfsSparse => CreateType::VmfsSparse,
        ChildFormat::HostedSparse => CreateType::MonolithicSparse,
    };
    let mut d = Descriptor::new(create_type);
    d.parent_cid = pd.cid;
    d.parent_file_name_hint = Some(hint);
    d.ddb = pd
        .ddb
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("ddb.thinProvisioned"))
        .cloned()
        .collect();
    d.set_ddb(
        "ddb.longContentID",
        crate::descriptor::random_long_content_id(),
    );
    let mut created = Vec::new();
    let result = (|| {
        if child.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists {
                path: child.to_path_buf(),
            });
        }
        match format {
            ChildFormat::VmfsSparse => {
                let delta = format!("{name}-delta.vmdk");
                let delta_path = dir.join(&delta);
                crate::cowd::create(&delta_path, capacity, crate::cowd::ESX_GRANULARITY_SECTORS)?;
                created.push(delta_path);
                d.extents
                    .push(extent(ExtentType::VmfsSparse, capacity, delta));
                write_new_descriptor(child, &d, &mut created)?;
            }
            ChildFormat::HostedSparse => {
                d.extents
                    .push(extent(ExtentType::Sparse, capacity, format!("{name}.vmdk")));
                crate::sparse::create(child, capacity, &sparse_opts(Some(d.to_text())))?;
                created.push(child.to_path_buf());
            }
        }
        Ok(sync_dir(&dir)?)
    })();
    if result.is_err() {
        for f in created.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
    }
    result
}

/// The parentFileNameHint a child at `child` should carry for `parent`: the bare file name
/// when both share a folder, else the parent's absolute path.
pub fn relative_hint(child: &Path, parent: &Path) -> Result<String> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, "resolve", e));
    let (c, p) = (abs(child)?, abs(parent)?);
    let name = crate::link::file_name_of(&p);
    if c.parent() == p.parent() {
        Ok(name)
    } else {
        Ok(p.to_string_lossy().into_owned())
    }
}
