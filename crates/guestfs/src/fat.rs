//! FAT12, FAT16 and FAT32 with long (VFAT) names.
//!
//! Written here rather than with `fatfs`: that crate needs a writable stream it owns and
//! hands out directories that borrow it, while vcb serves one shared read-only volume to
//! many readers by inode number. An inode number here is the byte offset of the file's
//! short directory entry, so a stat needs no table.

use crate::device::{le, read_vec, Device};
use crate::runs::{self, Run, RunCache};
use crate::vfs::{Attr, DirEntry, FileSystem, Kind, Time};
use crate::{Error, Result};
use std::sync::Arc;

const ROOT: u64 = 1;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;
const MAX_DIR_BYTES: u64 = 65536 * 32;

/// A FAT file system.
pub struct Fat {
    dev: Arc<dyn Device>,
    bits: u32,
    cluster: u64,
    fat_at: u64,
    data_at: u64,
    clusters: u64,
    root_at: u64,
    root_len: u64,
    root_cluster: u32,
    label: String,
    serial: u32,
    runs: RunCache,
}

/// Whether `dev` starts with a FAT boot sector.
pub fn detect(dev: &dyn Device) -> bool {
    let Ok(b) = read_vec(dev, 0, 512.min(dev.size())) else {
        return false;
    };
    b.len() == 512
        && (b[0] == 0xEB || b[0] == 0xE9)
        && b[510] == 0x55
        && b[511] == 0xAA
        && (&b[54..59] == b"FAT12"
            || &b[54..59] == b"FAT16"
            || &b[82..87] == b"FAT32"
            || &b[54..57] == b"FAT")
}

impl Fat {
    /// Open the file system on `dev`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a boot sector whose geometry makes no sense.
    pub fn open(dev: Arc<dyn Device>) -> Result<Fat> {
        let b = read_vec(dev.as_ref(), 0, 512)?;
        let sector = u64::from(le::u16(&b, 11));
        let per_cluster = u64::from(b[13]);
        let reserved = u64::from(le::u16(&b, 14));
        let fats = u64::from(b[16]);
        let root_entries = u64::from(le::u16(&b, 17));
        let total = match le::u16(&b, 19) {
            0 => u64::from(le::u32(&b, 32)),
            n => u64::from(n),
        };
        let fat_size = match le::u16(&b, 22) {
            0 => u64::from(le::u32(&b, 36)),
            n => u64::from(n),
        };
        let sane = [512, 1024, 2048, 4096].contains(&sector)
            && per_cluster.is_power_of_two()
            && reserved > 0
            && fats > 0
            && fat_size > 0;
        let root_sectors = (root_entries * 32).div_ceil(sector.max(1));
        let data_sector = reserved + fats * fat_size + root_sectors;
        if !sane || total <= data_sector || total * sector > dev.size() {
            return Err(Error::corrupt(
                "FAT boot sector",
                format!("{sector}-byte sectors, {per_cluster} per cluster, {total} in all"),
            ));
        }
        let clusters = (total - data_sector) / per_cluster;
        let bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        let (serial_at, label_at) = if bits == 32 { (67, 71) } else { (39, 43) };
        Ok(Fat {
            bits,
            cluster: per_cluster * sector,
            fat_at: reserved * sector,
            data_at: data_sector * sector,
            clusters,
            root_at: (reserved + fats * fat_size) * sector,
            root_len: root_sectors * sector,
            root_cluster: le::u32(&b, 44),
            label: String::from_utf8_lossy(&b[label_at..label_at + 11])
                .trim()
                .to_string(),
            serial: le::u32(&b, serial_at),
            runs: RunCache::default(),
            dev,
        })
    }

    fn next(&self, cluster: u32) -> Result<Option<u32>> {
        let n = u64::from(cluster);
        let (value, end) = match self.bits {
            12 => {
                let raw = le::u16(&read_vec(self.dev.as_ref(), self.fat_at + n + n / 2, 2)?, 0);
                (
                    u32::from(if n % 2 == 1 { raw >> 4 } else { raw & 0xFFF }),
                    0xFF8,
                )
            }
            16 => (
                u32::from(le::u16(
                    &read_vec(self.dev.as_ref(), self.fat_at + n * 2, 2)?,
                    0,
                )),
                0xFFF8,
            ),
            _ => (
                le::u32(&read_vec(self.dev.as_ref(), self.fat_at + n * 4, 4)?, 0) & 0x0FFF_FFFF,
                0x0FFF_FFF8,
            ),
        };
        Ok((value < end).then_some(value))
    }

    /// The clusters of a chain as runs, at most `limit` bytes.
    fn chain(&self, what: &str, first: u32, limit: u64) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        let mut cur = Some(first);
        let mut logical = 0u64;
        while let Some(c) = cur {
            if logical >= limit {
                break;
            }
            if c < 2 || u64::from(c) >= self.clusters + 2 {
                return Err(Error::corrupt(
                    what,
                    format!("cluster chain reaches cluster {c}"),
                ));
            }
            if logical / self.cluster > self.clusters {
                return Err(Error::corrupt(what, "cluster chain loops"));
            }
            let phys = self.data_at + (u64::from(c) - 2) * self.cluster;
            out.push(Run {
                logical,
                len: self.cluster,
                physical: Some(phys),
            });
            logical += self.cluster;
            cur = self.next(c)?;
        }
        runs::normalize(what, out)
    }

    fn entry(&self, ino: u64) -> Result<Vec<u8>> {
        if ino < self.fat_at || ino + 32 > self.dev.size() {
            return Err(Error::corrupt(
                format!("FAT entry {ino}"),
                "not a directory entry",
            ));
        }
        read_vec(self.dev.as_ref(), ino, 32)
    }

    fn first_cluster(&self, e: &[u8]) -> u32 {
        let hi = if self.bits == 32 {
            u32::from(le::u16(e, 20)) << 16
        } else {
            0
        };
        hi | u32::from(le::u16(e, 26))
    }

    /// The runs of a directory's entries, and of a file's data.
    fn runs_of(&self, ino: u64) -> Result<Arc<Vec<Run>>> {
        self.runs.get(ino, || {
            if ino == ROOT {
                if self.bits == 32 {
                    return self.chain("FAT root directory", self.root_cluster, MAX_DIR_BYTES);
                }
                return Ok(vec![Run {
                    logical: 0,
                    len: self.root_len,
                    physical: Some(self.root_at),
                }]);
            }
            let e = self.entry(ino)?;
            let what = format!("FAT file at byte {ino}");
            let first = self.first_cluster(&e);
            if first == 0 {
                return Ok(vec![]);
            }
            let limit = if e[11] & ATTR_DIR != 0 {
                MAX_DIR_BYTES
            } else {
                u64::from(le::u32(&e, 28))
            };
            self.chain(&what, first, limit)
        })
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn fat_time(date: u16, time: u16) -> Time {
    if date == 0 {
        return Time::default();
    }
    let (y, m, d) = (
        1980 + i64::from(date >> 9),
        i64::from((date >> 5) & 0xF).clamp(1, 12),
        i64::from(date & 0x1F).max(1),
    );
    let secs = days_from_civil(y, m, d) * 86400
        + i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time & 0x1F) * 2;
    Time { secs, nanos: 0 }
}

fn short_name(e: &[u8]) -> Vec<u8> {
    let mut base: Vec<u8> = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let trim = |v: &[u8]| v.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
    let mut name: Vec<u8> = base[..trim(&base)].to_vec();
    if e[12] & 0x08 != 0 {
        name.make_ascii_lowercase();
    }
    let ext_len = trim(&e[8..11]);
    if ext_len > 0 {
        let mut ext = e[8..8 + ext_len].to_vec();
        if e[12] & 0x10 != 0 {
            ext.make_ascii_lowercase();
        }
        name.push(b'.');
        name.extend(ext);
    }
    name
}

fn lfn_checksum(e: &[u8]) -> u8 {
    e[..11]
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

impl FileSystem for Fat {
    fn format(&self) -> &'static str {
        "vfat"
    }

    fn label(&self) -> Option<String> {
        Some(self.label.clone()).filter(|l| !l.is_empty() && l != "NO NAME")
    }

    fn uuid(&self) -> Option<String> {
        Some(format!(
            "{:04X}-{:04X}",
            self.serial >> 16,
            self.serial & 0xFFFF
        ))
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> Result<Attr> {
        if ino == ROOT {
            return Ok(Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                mtime: Time::default(),
                atime: Time::default(),
                ctime: Time::default(),
            });
        }
        let e = self.entry(ino)?;
        let dir = e[11] & ATTR_DIR != 0;
        let perm = if dir {
            0o755
        } else if e[11] & 1 != 0 {
            0o444
        } else {
            0o644
        };
        Ok(Attr {
            ino,
            kind: if dir { Kind::Dir } else { Kind::File },
            size: if dir { 0 } else { u64::from(le::u32(&e, 28)) },
            perm,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: fat_time(le::u16(&e, 24), le::u16(&e, 22)),
            atime: fat_time(le::u16(&e, 18), 0),
            ctime: fat_time(le::u16(&e, 16), le::u16(&e, 14)),
        })
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        if ino != ROOT && self.entry(ino)?[11] & ATTR_DIR == 0 {
            return Err(Error::NotADirectory(format!("FAT file at byte {ino}")));
        }
        let runs = self.runs_of(ino)?;
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
        'runs: for r in runs.iter() {
            let Some(phys) = r.physical else { continue };
            let data = read_vec(self.dev.as_ref(), phys, r.len)?;
            for (k, e) in data.chunks(32).enumerate() {
                match e[0] {
                    0x00 => break 'runs,
                    0xE5 => {
                        lfn.clear();
                        continue;
                    }
                    _ => {}
                }
                if e[11] == ATTR_LFN {
                    let mut part = [0u16; 13];
                    for (i, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                        .iter()
                        .enumerate()
                    {
                        part[i] = le::u16(e, *at);
                    }
                    if e[0] & 0x40 != 0 {
                        lfn.clear();
                    }
                    lfn.push((e[13], part));
                    continue;
                }
                if e[11] & ATTR_VOLUME != 0 {
                    lfn.clear();
                    continue;
                }
                let short = short_name(e);
                let sum = lfn_checksum(e);
                let name = if !lfn.is_empty() && lfn.iter().all(|(c, _)| *c == sum) {
                    let units: Vec<u16> = lfn
                        .iter()
                        .rev()
                        .flat_map(|(_, p)| p.iter().copied())
                        .take_while(|&u| u != 0 && u != 0xFFFF)
                        .collect();
                    String::from_utf16_lossy(&units).into_bytes()
                } else {
                    short
                };
                lfn.clear();
                if name == b"." || name == b".." || name.is_empty() {
                    continue;
                }
                out.push(DirEntry {
                    name,
                    ino: phys + k as u64 * 32,
                });
            }
        }
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let attr = self.stat(ino)?;
        let runs = self.runs_of(ino)?;
        let have: u64 = runs.iter().map(|r| r.len).sum();
        if have < attr.size {
            return Err(Error::corrupt(
                format!("FAT file at byte {ino}"),
                format!("{} bytes but its cluster chain holds {have}", attr.size),
            ));
        }
        runs::read_runs(self.dev.as_ref(), &runs, attr.size, offset, buf)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
        Err(Error::corrupt(
            format!("FAT file at byte {ino}"),
            "FAT has no symbolic links",
        ))
    }
}
