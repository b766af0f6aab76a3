//! One link of a chain: a descriptor and the extents it lists.

use crate::confine::{open_file, resolve, Confinement, FileSource, Role};
use crate::cowd::CowdExtent;
use crate::descriptor::{Access, Descriptor, ExtentType};
use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent, ZeroExtent};
use crate::fileio::PathFile;
use crate::flat::FlatExtent;
use crate::magic::{COWD_MAGIC, KDMV_MAGIC, SECTOR};
use crate::sparse::SparseExtent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a disk.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open the top link for writing (parents are always read-only).
    pub writable: bool,
    /// Where extent and parent files may lie (see [`crate::confine`]). The default
    /// confines them to each descriptor's folder: descriptors are untrusted input.
    pub confinement: Confinement,
    /// Open every file of the chain through this instead of the file system.
    pub source: Option<Arc<dyn FileSource>>,
}

impl OpenOptions {
    /// Read-only, confined.
    pub fn read_only() -> Self {
        OpenOptions::default()
    }

    /// Writable top link, confined.
    pub fn writable() -> Self {
        OpenOptions {
            writable: true,
            ..Default::default()
        }
    }

    /// These options with `confinement`.
    pub fn confined(mut self, confinement: Confinement) -> Self {
        self.confinement = confinement;
        self
    }
}

/// Where the descriptor of a link is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorStore {
    /// A standalone text file.
    Standalone,
    /// Embedded in the hosted sparse extent file (monolithicSparse, streamOptimized).
    Embedded,
}

/// An opened link.
pub struct Link {
    pub(crate) path: PathBuf,
    pub(crate) descriptor: Descriptor,
    pub(crate) store: DescriptorStore,
    pub(crate) extents: Vec<Box<dyn Extent>>,
    /// Start offset (bytes) of each extent, plus the total at the end.
    pub(crate) starts: Vec<u64>,
    pub(crate) access: Vec<Access>,
    pub(crate) writable: bool,
    /// Whether the CID was already renewed for writes in this session.
    pub(crate) cid_renewed: bool,
}

/// Read the descriptor of the disk at `path`, standalone or embedded. `path` is the
/// caller's own (symbolic links are followed); it must be a regular file.
pub fn read_descriptor(path: &Path) -> Result<(Descriptor, DescriptorStore)> {
    let file = crate::confine::open_regular_following(path, false)?;
    descriptor_of(&PathFile::from_file(file, path, false)?)
}

/// Read the descriptor held by the open file `f`, standalone or embedded.
pub(crate) fn descriptor_of(f: &PathFile) -> Result<(Descriptor, DescriptorStore)> {
    let path = f.path();
    let len = f.len()?;
    let mut magic = [0u8; 4];
    if len >= 4 {
        f.read_exact_at(&mut magic, 0, "magic")?;
    }
    if magic == KDMV_MAGIC {
        return match crate::sparse::read_embedded_descriptor_of(f)? {
            Some(text) => Ok((
                Descriptor::parse(text.as_bytes(), path)?,
                DescriptorStore::Embedded,
            )),
            None => {
                // A bare sparse extent without descriptor: describe it as monolithicSparse.
                let cap = crate::sparse::header_capacity_bytes_of(f)?;
                let mut d = Descriptor::new(crate::descriptor::CreateType::MonolithicSparse);
                d.extents.push(crate::descriptor::ExtentLine {
                    access: Access::Rw,
                    sectors: cap / SECTOR,
                    kind: ExtentType::Sparse,
                    file: Some(file_name_of(path)),
                    offset_sectors: 0,
                });
                Ok((d, DescriptorStore::Embedded))
            }
        };
    }
    if magic == COWD_MAGIC {
        return Err(Error::unsupported(
            path,
            "a bare COWD redo-log extent: open its descriptor instead",
        ));
    }
    if len > crate::descriptor::MAX_DESCRIPTOR_BYTES as u64 {
        return Err(Error::NotVmdk {
            path: path.to_path_buf(),
        });
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact_at(&mut buf, 0, "descriptor")?;
    let looks_like_text = buf.starts_with(b"#")
        || buf
            .windows(10)
            .any(|w| w.eq_ignore_ascii_case(b"createType"));
    if !looks_like_text {
        return Err(Error::NotVmdk {
            path: path.to_path_buf(),
        });
    }
    Ok((Descriptor::parse(&buf, path)?, DescriptorStore::Standalone))
}

pub(crate) fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Resolve a file name from a descriptor (see [`crate::confine`]).
pub(crate) fn resolve_name(
    descriptor_path: &Path,
    name: &str,
    kind: &'static str,
    opts: &OpenOptions,
) -> Result<PathBuf> {
    let role = if kind == "parent" {
        Role::Parent
    } else {
        Role::Extent
    };
    resolve(descriptor_path, name, role, opts)
}

impl Link {
    /// Open one link (not its parents). `path` is the caller's: symbolic links in it are
    /// followed (a chain's parents are opened by [`Link::open_parent`] instead).
    pub fn open(path: &Path, writable: bool, opts: &OpenOptions) -> Result<Link> {
        let file = match &opts.source {
            Some(_) => open_file(path, Role::Parent, writable, opts)?,
            None => PathFile::from_file(
                crate::confine::open_regular_following(path, writable)?,
                path,
                writable,
            )?,
        };
        Link::open_file(file, writable, opts)
    }

    /// Open the parent descriptor `path` (resolved and confined from a child's hint):
    /// read-only, without following a symbolic link.
    pub(crate) fn open_parent(path: &Path, opts: &OpenOptions) -> Result<Link> {
        Link::open_file(open_file(path, Role::Parent, false, opts)?, false, opts)
    }

    fn open_file(file: PathFile, writable: bool, opts: &OpenOptions) -> Result<Link> {
        let path = file.path().to_path_buf();
        let (descriptor, store) = descriptor_of(&file)?;
        let embedded_data = store == DescriptorStore::Embedded;
        if embedded_data && descriptor.extents.len() != 1 {
            return Err(Error::unsupported(
                &path,
                "an embedded descriptor names more than one extent",
            ));
        }
        let mut own_file = embedded_data.then_some(file);
        let mut opened: Vec<PathBuf> = Vec::new();
        let mut extents: Vec<Box<dyn Extent>> = Vec::with_capacity(descriptor.extents.len());
        let mut starts = Vec::with_capacity(descriptor.extents.len() + 1);
        let mut access = Vec::with_capacity(descriptor.extents.len());
        let mut pos = 0u64;
        let sparse_count = descriptor
            .extents
            .iter()
            .filter(|l| l.kind == ExtentType::Sparse)
            .count();
        for line in &descriptor.extents {
            let len = line
                .sectors
                .checked_mul(SECTOR)
                .ok_or_else(|| Error::BadDescriptor {
                    path: path.clone(),
                    line: 0,
                    reason: "extent size overflows".into(),
                    text: line.sectors.to_string(),
                })?;
            let ext_writable = writable && line.access == Access::Rw;
            let extent: Box<dyn Extent> = match (line.kind, &line.file) {
                (ExtentType::Zero, _) => Box::new(ZeroExtent {
                    len_bytes: len,
                    descriptor: path.clone(),
                }),
                (_, None) => return Err(Error::corrupt(&path, "extent without a file name")),
                (kind, Some(name)) => {
                    // A monolithic sparse or stream file is one file whatever name its
                    // embedded descriptor gives (exports say "generated-stream.vmdk").
                    let file = match own_file.take() {
                        Some(f) => f,
                        None => open_extent(&path, name, kind, ext_writable, opts, &mut opened)?,
                    };
                    let budget = gt_cache_budget(sparse_count);
                    extent_of(&path, line, kind, file, len, budget)?
                }
            };
            starts.push(pos);
            access.push(line.access);
            pos = pos
                .checked_add(len)
                .ok_or_else(|| Error::corrupt(&path, "capacity overflows"))?;
            extents.push(extent);
        }
        if pos > crate::magic::MAX_CAPACITY_BYTES {
            return Err(Error::BadHeader {
                path,
                field: "capacity",
                value: pos,
                reason: "larger than 64 TiB",
            });
        }
        starts.push(pos);
        Ok(Link {
            path,
            descriptor,
            store,
            extents,
            starts,
            access,
            writable,
            cid_renewed: false,
        })
    }

    /// A read-only link over a raw image file.
    pub(crate) fn raw(path: &Path, len: u64) -> Result<Link> {
        let mut descriptor = Descriptor::new(crate::descriptor::CreateType::MonolithicFlat);
        descriptor.extents.push(crate::descriptor::ExtentLine {
            access: Access::RdOnly,
            sectors: len / SECTOR,
            kind: ExtentType::Flat,
            file: Some(file_name_of(path)),
            offset_sectors: 0,
        });
        let extent = FlatExtent::open(path, 0, len, false)?;
        Ok(Link {
            path: path.to_path_buf(),
            descriptor,
            store: DescriptorStore::Standalone,
            extents: vec![Box::new(extent)],
            starts: vec![0, len],
            access: vec![Access::RdOnly],
            writable: false,
            cid_renewed: false,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Index of the extent containing `offset` (which must be below capacity).
    pub(crate) fn extent_index(&self, offset: u64) -> usize {
        // starts is sorted; the last entry is the total.
        match self.starts[..self.starts.len() - 1].binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }

    /// State of the run at `offset` in this link alone.
    pub(crate) fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        let i = self.extent_index(offset);
        let rel = offset - self.starts[i];
        let avail = (self.starts[i + 1] - offset).min(max_len);
        if self.access[i] == Access::NoAccess {
            return Ok((BlockState::Data, avail));
        }
        let (state, len) = self.extents[i].map(rel, avail)?;
        Ok((state, len.clamp(1, avail)))
    }

    /// Read a range lying within one extent and in `Data` state.
    pub(crate) fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let i = self.extent_index(offset);
        if self.access[i] == Access::NoAccess {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
                reason: "NOACCESS extent cannot be read",
            });
        }
        self.extents[i].read_at(offset - self.starts[i], buf)
    }

    /// Give this link a new CID before its first write in a session, as VMware does, so any
    /// child created against the old content is detectably stale.
    pub(crate) fn renew_cid(&mut self) -> Result<()> {
        if self.cid_renewed {
            return Ok(());
        }
        self.descriptor.cid = crate::descriptor::random_cid();
        self.store_descriptor()?;
        self.cid_renewed = true;
        Ok(())
    }

    /// Write the in-memory descriptor back where it lives.
    pub(crate) fn store_descriptor(&self) -> Result<()> {
        write_descriptor(&self.path, self.store, &self.descriptor)
    }

    /// Write a range lying within one extent.
    pub(crate) fn write_extent(
        &mut self,
        offset: u64,
        data: &[u8],
        backing: &mut dyn Backing,
    ) -> Result<()> {
        let i = self.extent_index(offset);
        if !self.writable || self.access[i] != Access::Rw {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
                reason: "link or extent is not writable",
            });
        }
        let start = self.starts[i];
        let mut shifted = ShiftedBacking {
            inner: backing,
            shift: start,
        };
        self.extents[i].write_at(offset - start, data, &mut shifted)
    }

    /// End of the extent containing `offset`.
    pub(crate) fn extent_end(&self, offset: u64) -> u64 {
        self.starts[self.extent_index(offset) + 1]
    }

    /// Flush every extent.
    pub fn flush(&mut self) -> Result<()> {
        self.extents.iter_mut().try_for_each(|e| e.flush())
    }

    /// Close every extent cleanly.
    pub fn close(&mut self) -> Result<()> {
        self.extents.iter_mut().try_for_each(|e| e.close())
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The descriptor's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every file of this link: the descriptor (if standalone) and all extent files, unique.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        for e in &self.extents {
            for f in e.files() {
                if !v.contains(&f) {
                    v.push(f);
                }
            }
        }
        v
    }

    /// Bytes allocated on the host file system by this link's extent files.
    pub fn allocated_file_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.allocated_file_bytes()).sum()
    }
}

/// Memory for cached grain tables of one link, shared by its sparse extents: a
/// descriptor listing many extents cannot multiply it.
const LINK_GT_CACHE_TABLES: usize = 32 * 1024;

/// Grain tables each of `sparse_count` sparse extents may cache.
fn gt_cache_budget(sparse_count: usize) -> usize {
    (LINK_GT_CACHE_TABLES / sparse_count.max(1)).clamp(1, crate::sparse::DEFAULT_MAX_TABLES)
}

/// Resolves and opens the file of an extent line. A sparse or COWD file (a whole-file
/// format) may appear in one extent line only.
fn open_extent(
    descriptor: &Path,
    name: &str,
    kind: ExtentType,
    writable: bool,
    opts: &OpenOptions,
    opened: &mut Vec<PathBuf>,
) -> Result<PathFile> {
    let role = match kind {
        ExtentType::VmfsRdm | ExtentType::VmfsRaw => Role::RdmExtent,
        _ => Role::Extent,
    };
    let file = resolve(descriptor, name, role, opts)?;
    if matches!(
        kind,
        ExtentType::Sparse | ExtentType::VmfsSparse | ExtentType::SeSparse
    ) {
        if opened.contains(&file) {
            return Err(Error::corrupt(
                descriptor,
                format!("{name:?} is named by more than one sparse extent"),
            ));
        }
        opened.push(file.clone());
    }
    open_file(&file, role, writable, opts)
}

/// The extent of `kind` over the open `file`.
fn extent_of(
    descriptor: &Path,
    line: &crate::descriptor::ExtentLine,
    kind: ExtentType,
    file: PathFile,
    len: u64,
    gt_tables: usize,
) -> Result<Box<dyn Extent>> {
    Ok(match kind {
        ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
            let offset = line.offset_sectors.checked_mul(SECTOR).ok_or_else(|| {
                Error::corrupt(
                    descriptor,
                    format!("extent offset {} overflows", line.offset_sectors),
                )
            })?;
            Box::new(FlatExtent::from_file(file, offset, len)?)
        }
        ExtentType::Sparse => Box::new(SparseExtent::from_file(file, len, gt_tables)?),
        ExtentType::VmfsSparse => Box::new(CowdExtent::from_file(file, len)?),
        ExtentType::SeSparse => Box::new(crate::sesparse::SeSparseExtent::from_file(file, len)?),
        ExtentType::Zero => Box::new(ZeroExtent {
            len_bytes: len,
            descriptor: descriptor.to_path_buf(),
        }),
    })
}

/// Store a descriptor at `path`: atomically for a standalone file, in place for an embedded one.
pub fn write_descriptor(path: &Path, store: DescriptorStore, d: &Descriptor) -> Result<()> {
    match store {
        DescriptorStore::Standalone => Ok(fsio::write_atomic(path, d.to_text().as_bytes())?),
        DescriptorStore::Embedded => crate::sparse::write_embedded_descriptor(path, &d.to_text()),
    }
}

struct ShiftedBacking<'a> {
    inner: &'a mut dyn Backing,
    shift: u64,
}

impl Backing for ShiftedBacking<'_> {
    fn read_backing(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_backing(offset + self.shift, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let vm = t.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let d = vm.join("disk.vmdk");
        std::fs::write(&d, "").unwrap();
        let opts = OpenOptions::default();
        assert!(resolve_name(&d, "disk-flat.vmdk", "extent", &opts).is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", "x\0y"] {
            let e = resolve_name(&d, bad, "extent", &opts).unwrap_err();
            assert!(matches!(e, Error::PathOutsideFolder { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("outside the disk's folder"), "{e}");
        }
        let own = std::fs::canonicalize(&vm).unwrap().join("disk-flat.vmdk");
        assert!(resolve_name(&d, own.to_str().unwrap(), "extent", &opts).is_ok());
        let anywhere = OpenOptions::default().confined(Confinement::Anywhere);
        assert!(resolve_name(&d, "../other/x.vmdk", "parent", &anywhere).is_ok());
    }
}
