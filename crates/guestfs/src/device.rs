//! Block devices the readers work on: a whole disk, a partition, a logical volume.
//!
//! Every reader takes `&self` so one disk can serve many volumes and the FUSE server's
//! threads; a disk source (which reads through `&mut self`) sits behind a mutex with a
//! small cache of 64 KiB blocks, which is what file system metadata reads hit.

use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Something with bytes at offsets.
pub trait Device: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; reading past the end is an error.
    ///
    /// # Errors
    /// [`Error::Read`] when the range is outside the device or the storage fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Check that `len` bytes at `offset` fit a device of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Read {
            offset,
            message: format!("{len} bytes from here run past the end ({size} bytes)"),
        }),
    }
}

const CACHE_BLOCK: u64 = 64 * 1024;
const CACHE_BLOCKS: usize = 512;

/// A disk (any vmdk chain or a repository point's disk) as a [`Device`].
pub struct DiskDevice {
    size: u64,
    inner: Mutex<CachedDisk>,
}

struct CachedDisk {
    disk: Box<dyn vmdk::DiskSource>,
    blocks: HashMap<u64, (u64, Arc<Vec<u8>>)>,
    clock: u64,
}

impl DiskDevice {
    /// Wrap `disk`.
    pub fn new(disk: Box<dyn vmdk::DiskSource>) -> DiskDevice {
        DiskDevice {
            size: disk.capacity(),
            inner: Mutex::new(CachedDisk {
                disk,
                blocks: HashMap::new(),
                clock: 0,
            }),
        }
    }
}

impl CachedDisk {
    fn block(&mut self, index: u64, size: u64) -> Result<Arc<Vec<u8>>> {
        self.clock += 1;
        if let Some(entry) = self.blocks.get_mut(&index) {
            entry.0 = self.clock;
            return Ok(Arc::clone(&entry.1));
        }
        let start = index * CACHE_BLOCK;
        let len = CACHE_BLOCK.min(size - start) as usize;
        let mut data = vec![0u8; len];
        self.disk
            .read_at(start, &mut data)
            .map_err(|e| Error::Read {
                offset: start,
                message: e.to_string(),
            })?;
        if self.blocks.len() >= CACHE_BLOCKS {
            if let Some(oldest) = self.blocks.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                self.blocks.remove(&oldest);
            }
        }
        let data = Arc::new(data);
        self.blocks.insert(index, (self.clock, Arc::clone(&data)));
        Ok(data)
    }
}

impl Device for DiskDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buf.len() as u64 >= CACHE_BLOCK {
            // File data: straight from the disk, not through (and not evicting) the cache.
            return inner.disk.read_at(offset, buf).map_err(|e| Error::Read {
                offset,
                message: e.to_string(),
            });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = inner.block(pos / CACHE_BLOCK, self.size)?;
            let within = (pos % CACHE_BLOCK) as usize;
            let n = (block.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(())
    }
}

/// A byte range of another device (a partition).
pub struct Slice {
    dev: Arc<dyn Device>,
    start: u64,
    len: u64,
}

impl Slice {
    /// `len` bytes of `dev` from `start`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the range is not inside `dev`.
    pub fn new(dev: Arc<dyn Device>, start: u64, len: u64) -> Result<Slice> {
        match start.checked_add(len) {
            Some(end) if end <= dev.size() => Ok(Slice { dev, start, len }),
            _ => Err(Error::corrupt(
                "volume",
                format!(
                    "{len} bytes at {start} run past the end of the disk ({} bytes)",
                    dev.size()
                ),
            )),
        }
    }
}

impl Device for Slice {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.len, offset, buf.len())?;
        self.dev.read_at(self.start + offset, buf)
    }
}

/// A raw image file as a device.
pub struct FileDevice {
    file: std::fs::File,
    size: u64,
}

impl FileDevice {
    /// Open `path` read-only.
    ///
    /// # Errors
    /// [`Error::Read`] when it cannot be opened.
    pub fn open(path: &std::path::Path) -> Result<FileDevice> {
        let fail = |e: std::io::Error| Error::Read {
            offset: 0,
            message: format!("{}: {e}", path.display()),
        };
        let file = std::fs::File::open(path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        Ok(FileDevice { file, size })
    }
}

impl Device for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset).map_err(|e| {
            Error::Read {
                offset,
                message: e.to_string(),
            }
        })
    }
}

/// A byte vector as a device (tests, fuzzing).
pub struct MemDevice(pub Vec<u8>);

impl Device for MemDevice {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.0.len() as u64, offset, buf.len())?;
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

/// Read `len` bytes at `offset` into a new vector, refusing absurd lengths.
pub(crate) fn read_vec(dev: &dyn Device, offset: u64, len: u64) -> Result<Vec<u8>> {
    check_range(dev.size(), offset, 0)?;
    if len > 64 << 20 {
        return Err(Error::Limit {
            what: format!("metadata at byte {offset}"),
            why: format!("{len} bytes is more than one structure may take"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    dev.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// Little-endian field readers over a byte slice that never panic: short input reads zeros.
pub(crate) mod le {
    /// u16 at `at`.
    pub fn u16(b: &[u8], at: usize) -> u16 {
        let mut a = [0u8; 2];
        if let Some(s) = b.get(at..at + 2) {
            a.copy_from_slice(s);
        }
        u16::from_le_bytes(a)
    }
    /// u32 at `at`.
    pub fn u32(b: &[u8], at: usize) -> u32 {
        let mut a = [0u8; 4];
        if let Some(s) = b.get(at..at + 4) {
            a.copy_from_slice(s);
        }
        u32::from_le_bytes(a)
    }
    /// u64 at `at`.
    pub fn u64(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        if let Some(s) = b.get(at..at + 8) {
            a.copy_from_slice(s);
        }
        u64::from_le_bytes(a)
    }
}

/// Big-endian field readers (XFS), panic-free like [`le`].
pub(crate) mod be {
    /// u16 at `at`.
    pub fn u16(b: &[u8], at: usize) -> u16 {
        let mut a = [0u8; 2];
        if let Some(s) = b.get(at..at + 2) {
            a.copy_from_slice(s);
        }
        u16::from_be_bytes(a)
    }
    /// u32 at `at`.
    pub fn u32(b: &[u8], at: usize) -> u32 {
        let mut a = [0u8; 4];
        if let Some(s) = b.get(at..at + 4) {
            a.copy_from_slice(s);
        }
        u32::from_be_bytes(a)
    }
    /// u64 at `at`.
    pub fn u64(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        if let Some(s) = b.get(at..at + 8) {
            a.copy_from_slice(s);
        }
        u64::from_be_bytes(a)
    }
}
