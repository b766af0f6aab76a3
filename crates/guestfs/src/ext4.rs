//! ext2, ext3 and ext4: block maps and extent trees, linear and hashed directories (read
//! block by block: hash-tree index blocks look like empty entries), inline data, fast and
//! slow symlinks.
//!
//! Written here rather than with `ext4-view`: vcb needs inode numbers and link counts (to
//! keep hard links), holes (to keep sparse files sparse) and reads through `&self` from
//! many threads; ext4-view hides the first two and is single-threaded (`Rc`).

use crate::device::{le, read_vec, Device};
use crate::runs::{self, Run, RunCache};
use crate::vfs::{Attr, DirEntry, FileSystem, Kind, Time};
use crate::{Error, Result};
use std::sync::Arc;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_KNOWN: u32 =
    0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000;
const FLAG_EXTENTS: u32 = 0x8_0000;
const FLAG_INLINE: u32 = 0x1000_0000;
const MAX_TREE_DEPTH: u32 = 5;

/// An ext2/3/4 file system.
pub struct Ext4 {
    dev: Arc<dyn Device>,
    block: u64,
    inodes_per_group: u64,
    inode_size: u64,
    inode_count: u64,
    groups: Vec<u64>,
    filetype: bool,
    label: String,
    uuid: String,
    runs: RunCache,
}

/// Whether `dev` holds an ext2/3/4 superblock.
pub fn detect(dev: &dyn Device) -> bool {
    dev.size() >= 2048 && read_vec(dev, 1024, 1024).is_ok_and(|sb| le::u16(&sb, 56) == 0xEF53)
}

fn what(ino: u64) -> String {
    format!("ext4 inode {ino}")
}

impl Ext4 {
    /// Open the file system on `dev`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a superblock or group table that makes no sense;
    /// [`Error::Unsupported`] for incompatible features vcb does not read.
    pub fn open(dev: Arc<dyn Device>) -> Result<Ext4> {
        let sb = read_vec(dev.as_ref(), 1024, 1024)?;
        if le::u16(&sb, 56) != 0xEF53 {
            return Err(Error::corrupt("ext4", "no superblock magic"));
        }
        let log = le::u32(&sb, 24);
        if log > 6 {
            return Err(Error::corrupt(
                "ext4 superblock",
                format!("block size 2^{} KiB", log),
            ));
        }
        let block = 1024u64 << log;
        let incompat = le::u32(&sb, 96);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::unsupported(
                "ext4",
                format!("incompatible features {:#x}", incompat & !INCOMPAT_KNOWN),
            ));
        }
        if incompat & INCOMPAT_META_BG != 0 {
            return Err(Error::unsupported("ext4", "meta_bg"));
        }
        let inode_size = if le::u32(&sb, 76) == 0 {
            128
        } else {
            u64::from(le::u16(&sb, 88))
        };
        let ipg = u64::from(le::u32(&sb, 40));
        let bpg = u64::from(le::u32(&sb, 32));
        let mut blocks = u64::from(le::u32(&sb, 4));
        let desc = if incompat & INCOMPAT_64BIT != 0 {
            blocks |= u64::from(le::u32(&sb, 0x150)) << 32;
            u64::from(le::u16(&sb, 254)).max(32)
        } else {
            32
        };
        if !(128..=block).contains(&inode_size)
            || !inode_size.is_power_of_two()
            || ipg == 0
            || bpg == 0
            || desc > 1024
        {
            return Err(Error::corrupt(
                "ext4 superblock",
                format!("inode size {inode_size}, {ipg} inodes and {bpg} blocks per group"),
            ));
        }
        if blocks.saturating_mul(block) > dev.size() {
            return Err(Error::corrupt(
                "ext4 superblock",
                format!(
                    "{blocks} blocks of {block} bytes do not fit the volume ({} bytes)",
                    dev.size()
                ),
            ));
        }
        let first_data = u64::from(le::u32(&sb, 20));
        let count = blocks.saturating_sub(first_data).div_ceil(bpg);
        if count == 0 || count > 1 << 22 {
            return Err(Error::corrupt(
                "ext4 superblock",
                format!("{count} block groups"),
            ));
        }
        let table = read_vec(dev.as_ref(), (first_data + 1) * block, count * desc)?;
        let groups = table
            .chunks(desc as usize)
            .map(|d| {
                let hi = if desc >= 64 {
                    u64::from(le::u32(d, 0x28)) << 32
                } else {
                    0
                };
                hi | u64::from(le::u32(d, 8))
            })
            .collect();
        let uuid = &sb[104..120];
        Ok(Ext4 {
            block,
            inodes_per_group: ipg,
            inode_size,
            inode_count: u64::from(le::u32(&sb, 0)),
            groups,
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            label: String::from_utf8_lossy(&sb[120..136])
                .trim_end_matches('\0')
                .to_string(),
            uuid: format_uuid(uuid),
            runs: RunCache::default(),
            dev,
        })
    }

    fn inode(&self, ino: u64) -> Result<Vec<u8>> {
        if ino == 0 || ino > self.inode_count {
            return Err(Error::corrupt(
                what(ino),
                format!("not an inode number (the volume has {})", self.inode_count),
            ));
        }
        let (group, index) = (
            (ino - 1) / self.inodes_per_group,
            (ino - 1) % self.inodes_per_group,
        );
        let table = *self
            .groups
            .get(group as usize)
            .ok_or_else(|| Error::corrupt(what(ino), "in no block group"))?;
        let at = table
            .checked_mul(self.block)
            .and_then(|t| t.checked_add(index * self.inode_size))
            .ok_or_else(|| Error::corrupt(what(ino), "inode table past the volume"))?;
        read_vec(self.dev.as_ref(), at, self.inode_size)
    }

    fn file_runs(&self, ino: u64, raw: &[u8]) -> Result<Arc<Vec<Run>>> {
        self.runs.get(ino, || {
            let size = inode_size(raw);
            let flags = le::u32(raw, 32);
            let mut out = Vec::new();
            if flags & FLAG_EXTENTS != 0 {
                self.extent_node(ino, &raw[40..100], MAX_TREE_DEPTH, &mut out)?;
            } else {
                let blocks = size.div_ceil(self.block);
                let mut next = 0u64;
                for (i, depth) in [(12usize, 1u32), (13, 2), (14, 3)] {
                    if next >= blocks {
                        break;
                    }
                    if i == 12 {
                        for d in 0..12u64 {
                            push_block(
                                &mut out,
                                d,
                                u64::from(le::u32(raw, 40 + d as usize * 4)),
                                self.block,
                            );
                        }
                        next = 12;
                    }
                    let ptr = u64::from(le::u32(raw, 40 + i * 4));
                    self.indirect(ino, ptr, depth, &mut next, blocks, &mut out)?;
                }
            }
            runs::normalize(&what(ino), out)
        })
    }

    fn indirect(
        &self,
        ino: u64,
        ptr: u64,
        depth: u32,
        next: &mut u64,
        blocks: u64,
        out: &mut Vec<Run>,
    ) -> Result<()> {
        let per = self.block / 4;
        let span = per.pow(depth);
        if ptr == 0 {
            *next += span;
            return Ok(());
        }
        let data = read_vec(
            self.dev.as_ref(),
            ptr.saturating_mul(self.block),
            self.block,
        )?;
        for k in 0..per as usize {
            if *next >= blocks {
                break;
            }
            let p = u64::from(le::u32(&data, k * 4));
            if depth == 1 {
                push_block(out, *next, p, self.block);
                *next += 1;
            } else {
                self.indirect(ino, p, depth - 1, next, blocks, out)?;
            }
            if out.len() > runs::MAX_RUNS {
                return Err(Error::Limit {
                    what: what(ino),
                    why: "too many blocks".into(),
                });
            }
        }
        Ok(())
    }

    fn extent_node(
        &self,
        ino: u64,
        node: &[u8],
        depth_left: u32,
        out: &mut Vec<Run>,
    ) -> Result<()> {
        if le::u16(node, 0) != 0xF30A {
            return Err(Error::corrupt(what(ino), "extent header magic missing"));
        }
        let (entries, depth) = (le::u16(node, 2) as usize, u32::from(le::u16(node, 6)));
        if depth > depth_left || 12 + entries * 12 > node.len() {
            return Err(Error::corrupt(
                what(ino),
                format!("extent node of depth {depth} with {entries} entries"),
            ));
        }
        for e in node[12..12 + entries * 12].chunks(12) {
            let logical = u64::from(le::u32(e, 0));
            if depth == 0 {
                let raw_len = u64::from(le::u16(e, 4));
                let (len, unwritten) = if raw_len > 32768 {
                    (raw_len - 32768, true)
                } else {
                    (raw_len, false)
                };
                let start = (u64::from(le::u16(e, 6)) << 32) | u64::from(le::u32(e, 8));
                out.push(Run {
                    logical: logical * self.block,
                    len: len * self.block,
                    // A start past 2^64 bytes is no position; the read fails past the volume.
                    physical: (!unwritten).then_some(start.saturating_mul(self.block)),
                });
                if out.len() > runs::MAX_RUNS {
                    return Err(Error::Limit {
                        what: what(ino),
                        why: "too many extents".into(),
                    });
                }
            } else {
                let leaf = (u64::from(le::u16(e, 8)) << 32) | u64::from(le::u32(e, 4));
                let child = read_vec(
                    self.dev.as_ref(),
                    leaf.saturating_mul(self.block),
                    self.block,
                )?;
                self.extent_node(ino, &child, depth - 1, out)?;
            }
        }
        Ok(())
    }

    /// The bytes of an inline-data inode: i_block then the `system.data` attribute.
    fn inline_data(&self, ino: u64, raw: &[u8]) -> Result<Vec<u8>> {
        let mut data = raw[40..100].to_vec();
        let extra = u64::from(le::u16(raw, 128));
        let start = (128 + extra) as usize;
        if raw.len() > start + 4 && le::u32(raw, start) == 0xEA02_0000 {
            let base = start + 4;
            let mut pos = base;
            while pos + 16 <= raw.len() && le::u32(raw, pos) != 0 {
                let (name_len, index) = (raw[pos] as usize, raw[pos + 1]);
                let (voff, vsize) = (
                    le::u16(raw, pos + 2) as usize,
                    le::u32(raw, pos + 8) as usize,
                );
                if index == 7 && raw.get(pos + 16..pos + 16 + name_len) == Some(b"data") {
                    let value = raw.get(base + voff..base + voff + vsize).ok_or_else(|| {
                        Error::corrupt(what(ino), "inline data attribute past the inode")
                    })?;
                    data.extend_from_slice(value);
                    break;
                }
                pos += (16 + name_len).div_ceil(4) * 4;
            }
        }
        Ok(data)
    }

    fn read_all(&self, ino: u64, raw: &[u8], limit: u64) -> Result<Vec<u8>> {
        let size = inode_size(raw);
        if size > limit {
            return Err(Error::Limit {
                what: what(ino),
                why: format!("{size} bytes of directory or link"),
            });
        }
        if le::u32(raw, 32) & FLAG_INLINE != 0 {
            let mut d = self.inline_data(ino, raw)?;
            d.truncate(size as usize);
            return Ok(d);
        }
        let runs = self.file_runs(ino, raw)?;
        let mut buf = vec![0u8; size as usize];
        runs::read_runs(self.dev.as_ref(), &runs, size, 0, &mut buf)?;
        Ok(buf)
    }
}

fn push_block(out: &mut Vec<Run>, logical: u64, phys: u64, block: u64) {
    if phys != 0 {
        out.push(Run {
            logical: logical * block,
            len: block,
            physical: Some(phys * block),
        });
    }
}

fn inode_size(raw: &[u8]) -> u64 {
    (u64::from(le::u32(raw, 108)) << 32) | u64::from(le::u32(raw, 4))
}

fn time(raw: &[u8], at: usize, extra_at: usize) -> Time {
    let secs = i64::from(le::u32(raw, at) as i32);
    let extra_size = le::u16(raw, 128) as usize;
    if raw.len() >= extra_at + 4 && 128 + extra_size >= extra_at + 4 {
        let extra = le::u32(raw, extra_at);
        return Time {
            secs: secs + (i64::from(extra & 3) << 32),
            nanos: (extra >> 2).min(999_999_999),
        };
    }
    Time { secs, nanos: 0 }
}

pub(crate) fn format_uuid(u: &[u8]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    if h.len() != 32 {
        return h;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl FileSystem for Ext4 {
    fn format(&self) -> &'static str {
        "ext4"
    }

    fn label(&self) -> Option<String> {
        Some(self.label.clone()).filter(|l| !l.is_empty())
    }

    fn uuid(&self) -> Option<String> {
        Some(self.uuid.clone())
    }

    fn root(&self) -> u64 {
        2
    }

    fn stat(&self, ino: u64) -> Result<Attr> {
        let raw = self.inode(ino)?;
        let mode = le::u16(&raw, 0);
        Ok(Attr {
            ino,
            kind: Kind::from_mode(mode),
            size: inode_size(&raw),
            perm: u32::from(mode & 0o7777),
            uid: u32::from(le::u16(&raw, 2)) | (u32::from(le::u16(&raw, 120)) << 16),
            gid: u32::from(le::u16(&raw, 24)) | (u32::from(le::u16(&raw, 122)) << 16),
            nlink: u32::from(le::u16(&raw, 26)),
            atime: time(&raw, 8, 140),
            ctime: time(&raw, 12, 132),
            mtime: time(&raw, 16, 136),
        })
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let raw = self.inode(ino)?;
        if Kind::from_mode(le::u16(&raw, 0)) != Kind::Dir {
            return Err(Error::NotADirectory(what(ino)));
        }
        let inline = le::u32(&raw, 32) & FLAG_INLINE != 0;
        let data = self.read_all(ino, &raw, 256 << 20)?;
        let mut out = Vec::new();
        // Inline directories start with the parent's inode number instead of "." and "..".
        let (start, block) = if inline {
            (4usize, data.len().max(4))
        } else {
            (0, self.block as usize)
        };
        let mut base = 0usize;
        while base < data.len() {
            let end = (base + block).min(data.len());
            let mut pos = if base == 0 { start } else { base };
            if inline && base == 0 && data.len() > 60 {
                self.entries(ino, &data[pos..60], &mut out)?;
                pos = 60;
            }
            self.entries(ino, &data[pos..end], &mut out)?;
            base = end;
        }
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let raw = self.inode(ino)?;
        let size = inode_size(&raw);
        if le::u32(&raw, 32) & FLAG_INLINE != 0 {
            let data = self.inline_data(ino, &raw)?;
            let d = &data[..data.len().min(size as usize)];
            return Ok(runs::read_bytes(d, offset, buf));
        }
        let runs = self.file_runs(ino, &raw)?;
        runs::read_runs(self.dev.as_ref(), &runs, size, offset, buf)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
        let raw = self.inode(ino)?;
        let size = inode_size(&raw);
        let flags = le::u32(&raw, 32);
        if size < 60 && flags & (FLAG_EXTENTS | FLAG_INLINE) == 0 {
            return Ok(raw[40..40 + size as usize].to_vec());
        }
        self.read_all(ino, &raw, 4096)
    }

    fn data_ranges(&self, ino: u64) -> Result<Vec<(u64, u64)>> {
        let raw = self.inode(ino)?;
        let size = inode_size(&raw);
        if le::u32(&raw, 32) & FLAG_INLINE != 0 {
            return Ok(if size == 0 { vec![] } else { vec![(0, size)] });
        }
        Ok(runs::data_ranges(&self.file_runs(ino, &raw)?, size))
    }
}

impl Ext4 {
    fn entries(&self, ino: u64, block: &[u8], out: &mut Vec<DirEntry>) -> Result<()> {
        let mut pos = 0usize;
        while pos + 8 <= block.len() {
            let (child, rec_len) = (
                u64::from(le::u32(block, pos)),
                le::u16(block, pos + 4) as usize,
            );
            let name_len = if self.filetype {
                block[pos + 6] as usize
            } else {
                le::u16(block, pos + 6) as usize
            };
            if rec_len < 8 || pos + rec_len > block.len() || 8 + name_len > rec_len {
                return Err(Error::corrupt(
                    what(ino),
                    format!("directory entry at byte {pos} of a block has length {rec_len}"),
                ));
            }
            let name = &block[pos + 8..pos + 8 + name_len];
            if child != 0 && name != b"." && name != b".." && !name.is_empty() {
                out.push(DirEntry {
                    name: name.to_vec(),
                    ino: child,
                });
            }
            pos += rec_len;
        }
        Ok(())
    }
}
