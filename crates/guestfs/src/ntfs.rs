//! NTFS through the `ntfs` crate (resident and non-resident data, sparse runs, attribute
//! lists, B-tree indexes), behind vcb's interface: inode numbers are MFT record numbers.
//!
//! Compressed (LZNT1) data, which the crate does not decode, is expanded by
//! [`crate::lznt1`] from the attribute's data runs.

use crate::device::Device;
use crate::vfs::{Attr, DirEntry, FileSystem, Kind, Time};
use crate::{Error, Result};
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs as Volume, NtfsReadSeek};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

const ROOT: u64 = 5;
/// MFT records below this are the file system's own ($MFT, $Bitmap, ..., reserved).
const FIRST_USER_RECORD: u64 = 24;

/// An NTFS file system.
pub struct Ntfs {
    dev: Arc<dyn Device>,
    layouts: std::sync::Mutex<std::collections::HashMap<u64, Arc<Layout>>>,
    volume: Volume,
    label: Option<String>,
}

/// Whether `dev` starts with an NTFS boot sector.
pub fn detect(dev: &dyn Device) -> bool {
    let mut b = [0u8; 8];
    dev.size() >= 512 && dev.read_at(3, &mut b).is_ok() && &b == b"NTFS    "
}

/// Where a file's data is.
enum Layout {
    /// No data stream.
    Empty,
    /// Non-resident, plain: read straight from its runs (sparse runs read as zeros).
    Plain {
        size: u64,
        runs: Vec<crate::runs::Run>,
    },
    /// Non-resident, LZNT1-compressed in compression units.
    Compressed {
        size: u64,
        runs: Vec<crate::runs::Run>,
    },
    /// Resident, or spread over an attribute list: read through the crate.
    Crate { size: u64 },
}

/// `std::io` over a [`Device`], for the crate.
struct Cursor<'a> {
    dev: &'a dyn Device,
    pos: u64,
}

impl Read for Cursor<'_> {
    /// Past the end of the volume reads zeros: the crate turns a short read inside one of
    /// its structures into a panic (`unreachable!`), while zeros fail its own checks.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.dev.size().saturating_sub(self.pos)) as usize;
        if n > 0 {
            self.dev
                .read_at(self.pos, &mut buf[..n])
                .map_err(std::io::Error::other)?;
        }
        buf[n..].fill(0);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
}

/// Run a call into the `ntfs` crate, turning a panic inside it (it has `unreachable!` on
/// I/O errors it did not expect) into an error for this one operation.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::corrupt(
            what,
            "the NTFS reader failed on this structure",
        ))
    })
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let next = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.dev.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = next.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

fn err(ino: u64, e: ntfs::NtfsError) -> Error {
    Error::corrupt(format!("ntfs record {ino}"), e.to_string())
}

/// The data runs of a non-resident attribute as byte runs (sparse runs without a position).
fn byte_runs(
    ino: u64,
    data_runs: ntfs::attribute_value::NtfsDataRuns<'_, '_>,
    size: u64,
) -> Result<Vec<crate::runs::Run>> {
    let mut out = Vec::new();
    let mut logical = 0u64;
    for run in data_runs {
        let run = run.map_err(|e| err(ino, e))?;
        let len = run.allocated_size();
        out.push(crate::runs::Run {
            logical,
            len,
            physical: run.data_position().value().map(std::num::NonZeroU64::get),
        });
        logical = logical.saturating_add(len);
        if out.len() > crate::runs::MAX_RUNS || logical > size.saturating_add(1 << 30) {
            return Err(Error::Limit {
                what: format!("ntfs record {ino}"),
                why: "data runs far past the file's size".into(),
            });
        }
    }
    Ok(out)
}

/// The crate allocates an index record of the size the directory's $INDEX_ROOT names
/// before looking at it: a hostile size would be gigabytes. Real ones are 4 KiB (a power of
/// two from 512 to 64 KiB is allowed).
fn check_index_record_size(ino: u64, file: &ntfs::NtfsFile<'_>, fs: &mut Cursor<'_>) -> Result<()> {
    use ntfs::structured_values::NtfsIndexRoot;
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(fs) {
        let item = item.map_err(|e| err(ino, e))?;
        let attribute = item.to_attribute().map_err(|e| err(ino, e))?;
        if attribute.ty().ok() != Some(ntfs::NtfsAttributeType::IndexRoot) {
            continue;
        }
        let root = attribute
            .resident_structured_value::<NtfsIndexRoot>()
            .map_err(|e| err(ino, e))?;
        let size = root.index_record_size();
        if !(512..=65536).contains(&size) || !size.is_power_of_two() {
            return Err(Error::corrupt(
                format!("ntfs record {ino}"),
                format!("index records of {size} bytes"),
            ));
        }
    }
    Ok(())
}

fn nt_time(t: ntfs::NtfsTime) -> Time {
    // 100 ns intervals since 1601-01-01.
    let ticks = t.nt_timestamp();
    let secs = (ticks / 10_000_000) as i64 - 11_644_473_600;
    Time {
        secs,
        nanos: ((ticks % 10_000_000) * 100) as u32,
    }
}

impl Ntfs {
    /// Open the file system on `dev`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a boot sector or MFT the crate rejects.
    pub fn open(dev: Arc<dyn Device>) -> Result<Ntfs> {
        guarded("ntfs boot sector", || Ntfs::open_inner(dev))
    }

    fn open_inner(dev: Arc<dyn Device>) -> Result<Ntfs> {
        let mut fs = Cursor {
            dev: dev.as_ref(),
            pos: 0,
        };
        let mut volume = Volume::new(&mut fs).map_err(|e| err(0, e))?;
        volume.read_upcase_table(&mut fs).map_err(|e| err(0, e))?;
        let label = volume
            .volume_name(&mut fs)
            .and_then(std::result::Result::ok)
            .map(|n| n.name().to_string_lossy())
            .filter(|n| !n.is_empty());
        Ok(Ntfs {
            volume,
            label,
            dev,
            layouts: Default::default(),
        })
    }

    fn cursor(&self) -> Cursor<'_> {
        Cursor {
            dev: self.dev.as_ref(),
            pos: 0,
        }
    }

    fn file(&self, fs: &mut Cursor<'_>, ino: u64) -> Result<ntfs::NtfsFile<'_>> {
        self.volume.file(fs, ino).map_err(|e| err(ino, e))
    }
}

impl FileSystem for Ntfs {
    fn format(&self) -> &'static str {
        "ntfs"
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn uuid(&self) -> Option<String> {
        Some(format!("{:016X}", self.volume.serial_number()))
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> Result<Attr> {
        guarded(&format!("ntfs record {ino}"), || {
            Ok(self.stat_with_target(ino)?.0)
        })
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        guarded(&format!("ntfs record {ino}"), || self.read_dir_inner(ino))
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        guarded(&format!("ntfs record {ino}"), || {
            self.read_inner(ino, offset, buf)
        })
    }

    fn data_ranges(&self, ino: u64) -> Result<Vec<(u64, u64)>> {
        guarded(&format!("ntfs record {ino}"), || {
            self.data_ranges_inner(ino)
        })
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
        guarded(&format!("ntfs record {ino}"), || {
            self.stat_with_target(ino)?.1.ok_or_else(|| {
                Error::unsupported(
                    format!("ntfs record {ino}"),
                    "links other than ntfs-3g's (reparse points)",
                )
            })
        })
    }
}

impl Ntfs {
    /// The attributes of `ino`, and its target when it is a symlink.
    fn stat_with_target(&self, ino: u64) -> Result<(Attr, Option<Vec<u8>>)> {
        let mut fs = self.cursor();
        let file = self.file(&mut fs, ino)?;
        let info = file.info().map_err(|e| err(ino, e))?;
        let flags = info.file_attributes();
        let kind = if file.is_directory() {
            Kind::Dir
        } else if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            Kind::Special
        } else {
            Kind::File
        };
        let size = match (kind, file.data(&mut fs, "")) {
            (Kind::File, Some(item)) => {
                let item = item.map_err(|e| err(ino, e))?;
                item.to_attribute().map_err(|e| err(ino, e))?.value_length()
            }
            _ => 0,
        };
        // ntfs-3g stores a symlink as an Interix one: a SYSTEM file holding "IntxLNK\x01"
        // and the target in UTF-16.
        let target = self.interix_target(ino, kind, flags, size)?;
        let (kind, size) = match &target {
            Some(t) => (Kind::Symlink, t.len() as u64),
            None => (kind, size),
        };
        let perm = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            _ if flags.contains(NtfsFileAttributeFlags::READ_ONLY) => 0o444,
            _ => 0o644,
        };
        let attr = Attr {
            ino,
            kind,
            size,
            perm,
            uid: 0,
            gid: 0,
            nlink: u32::from(file.hard_link_count()).max(1),
            mtime: nt_time(info.modification_time()),
            atime: nt_time(info.access_time()),
            ctime: nt_time(info.mft_record_modification_time()),
        };
        Ok((attr, target))
    }

    /// The target of an Interix symlink (UTF-8), when `ino` is one.
    fn interix_target(
        &self,
        ino: u64,
        kind: Kind,
        flags: NtfsFileAttributeFlags,
        size: u64,
    ) -> Result<Option<Vec<u8>>> {
        const MAGIC: &[u8; 8] = b"IntxLNK\x01";
        if kind != Kind::File
            || !flags.contains(NtfsFileAttributeFlags::SYSTEM)
            || !(10..=8 + 2 * 4096).contains(&size)
            || !size.is_multiple_of(2)
        {
            return Ok(None);
        }
        let mut data = vec![0u8; size as usize];
        let n = self.read_inner(ino, 0, &mut data)?;
        if n != data.len() || &data[..8] != MAGIC {
            return Ok(None);
        }
        let units: Vec<u16> = data[8..]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(Some(String::from_utf16_lossy(&units).into_bytes()))
    }

    fn read_dir_inner(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let mut fs = self.cursor();
        let file = self.file(&mut fs, ino)?;
        if !file.is_directory() {
            return Err(Error::NotADirectory(format!("ntfs record {ino}")));
        }
        check_index_record_size(ino, &file, &mut fs)?;
        let index = file.directory_index(&mut fs).map_err(|e| err(ino, e))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(entry) = entries.next(&mut fs) {
            let entry = entry.map_err(|e| err(ino, e))?;
            let Some(name) = entry.key() else { continue };
            let name = name.map_err(|e| err(ino, e))?;
            let child = entry.file_reference().file_record_number();
            if name.namespace() == NtfsFileNamespace::Dos || child < FIRST_USER_RECORD {
                continue;
            }
            if out.len() > 1 << 20 {
                return Err(Error::Limit {
                    what: format!("ntfs record {ino}"),
                    why: "over a million names".into(),
                });
            }
            out.push(DirEntry {
                name: name.name().to_string_lossy().into_bytes(),
                ino: child,
            });
        }
        Ok(out)
    }

    /// How the unnamed data stream of `ino` is stored, looked up once per file.
    fn layout(&self, ino: u64) -> Result<Arc<Layout>> {
        let lock = || {
            self.layouts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(l) = lock().get(&ino) {
            return Ok(Arc::clone(l));
        }
        use ntfs::attribute_value::NtfsAttributeValue as V;
        let mut fs = self.cursor();
        let file = self.file(&mut fs, ino)?;
        let layout = match file.data(&mut fs, "") {
            None => Layout::Empty,
            Some(item) => {
                let item = item.map_err(|e| err(ino, e))?;
                let attribute = item.to_attribute().map_err(|e| err(ino, e))?;
                let value = attribute.value(&mut fs).map_err(|e| err(ino, e))?;
                let (flags, size) = (attribute.flags().bits(), value.len());
                if flags & 0x00FE != 0 {
                    return Err(Error::unsupported(
                        format!("ntfs record {ino}"),
                        format!("data flags {flags:#x}"),
                    ));
                }
                match &value {
                    V::NonResident(nr) => {
                        let runs = byte_runs(ino, nr.data_runs(), size)?;
                        if flags & 0x0001 != 0 {
                            Layout::Compressed { size, runs }
                        } else {
                            Layout::Plain { size, runs }
                        }
                    }
                    V::AttributeListNonResident(_) if flags & 0x0001 != 0 => {
                        return Err(Error::unsupported(
                            format!("ntfs record {ino}"),
                            "compressed data in an attribute list",
                        ));
                    }
                    // Resident data (stored plainly even when flagged compressed) and data
                    // spread over an attribute list: read through the crate.
                    _ => Layout::Crate { size },
                }
            }
        };
        let layout = Arc::new(layout);
        let mut map = lock();
        if map.len() >= 256 {
            map.clear();
        }
        map.insert(ino, Arc::clone(&layout));
        Ok(layout)
    }

    fn read_inner(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match &*self.layout(ino)? {
            Layout::Empty => Ok(0),
            Layout::Plain { size, runs } => {
                crate::runs::read_runs(self.dev.as_ref(), runs, *size, offset, buf)
            }
            Layout::Compressed { size, runs } => crate::lznt1::read(
                self.dev.as_ref(),
                runs,
                u64::from(self.volume.cluster_size()),
                *size,
                offset,
                buf,
            ),
            Layout::Crate { size } => self.read_through_crate(ino, *size, offset, buf),
        }
    }

    fn read_through_crate(
        &self,
        ino: u64,
        size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if offset >= size {
            return Ok(0);
        }
        let mut fs = self.cursor();
        let file = self.file(&mut fs, ino)?;
        let Some(item) = file.data(&mut fs, "") else {
            return Ok(0);
        };
        let item = item.map_err(|e| err(ino, e))?;
        let attribute = item.to_attribute().map_err(|e| err(ino, e))?;
        let mut value = attribute.value(&mut fs).map_err(|e| err(ino, e))?;
        value
            .seek(&mut fs, SeekFrom::Start(offset))
            .map_err(|e| err(ino, e))?;
        let want = (buf.len() as u64).min(value.len().saturating_sub(offset)) as usize;
        let mut done = 0;
        while done < want {
            let n = value
                .read(&mut fs, &mut buf[done..want])
                .map_err(|e| err(ino, e))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Sparse runs of plain non-resident data are holes; everything else counts as data.
    fn data_ranges_inner(&self, ino: u64) -> Result<Vec<(u64, u64)>> {
        Ok(match &*self.layout(ino)? {
            Layout::Empty => vec![],
            Layout::Plain { size, runs } => crate::runs::data_ranges(runs, *size),
            Layout::Compressed { size, .. } | Layout::Crate { size } => {
                if *size == 0 {
                    vec![]
                } else {
                    vec![(0, *size)]
                }
            }
        })
    }
}
