//! XFS (v5, and v4 where the structures are the same): inodes, extent lists and extent
//! btrees, short-form, block, leaf, node and btree directories, local and remote symlinks.
//!
//! No Rust crate reads XFS. Directories of every non-short form are read the same way: the
//! data blocks below the 32 GiB leaf offset of the directory's block map hold every entry,
//! so leaf, node and free-index blocks never need to be interpreted.

use crate::device::{be, read_vec, Device};
use crate::runs::{self, Run, RunCache};
use crate::vfs::{Attr, DirEntry, FileSystem, Kind, Time};
use crate::{Error, Result};
use std::sync::Arc;

mod dir;

const INCOMPAT_FTYPE: u32 = 0x1;
const INCOMPAT_NREXT64: u32 = 0x20;
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80;
const DIFLAG2_BIGTIME: u64 = 1 << 3;
const DIFLAG2_NREXT64: u64 = 1 << 4;
const LEAF_OFFSET: u64 = 32 << 30;
const MAX_BTREE_LEVELS: u16 = 9;

/// An XFS file system.
pub struct Xfs {
    dev: Arc<dyn Device>,
    block: u64,
    dir_block: u64,
    ag_blocks: u64,
    ag_count: u64,
    agblklog: u32,
    inopblog: u32,
    inode_size: u64,
    root: u64,
    v5: bool,
    ftype: bool,
    nrext64: bool,
    label: String,
    uuid: String,
    runs: RunCache,
}

/// Whether `dev` starts with an XFS superblock.
pub fn detect(dev: &dyn Device) -> bool {
    dev.size() >= 512 && read_vec(dev, 0, 4).is_ok_and(|m| m == b"XFSB")
}

fn what(ino: u64) -> String {
    format!("xfs inode {ino}")
}

/// A parsed inode: its core fields and fork.
struct Inode {
    raw: Vec<u8>,
    fork_at: usize,
    fork_len: usize,
}

impl Inode {
    fn mode(&self) -> u16 {
        be::u16(&self.raw, 2)
    }
    fn format(&self) -> u8 {
        self.raw[5]
    }
    fn size(&self) -> u64 {
        be::u64(&self.raw, 56)
    }
    fn fork(&self) -> &[u8] {
        &self.raw[self.fork_at..self.fork_at + self.fork_len]
    }
}

impl Xfs {
    /// Open the file system on `dev`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a superblock that makes no sense; [`Error::Unsupported`] for
    /// features vcb does not read (a real-time or external log device is fine: not read).
    pub fn open(dev: Arc<dyn Device>) -> Result<Xfs> {
        let sb = read_vec(dev.as_ref(), 0, 512)?;
        if &sb[..4] != b"XFSB" {
            return Err(Error::corrupt("xfs", "no superblock magic"));
        }
        let block = u64::from(be::u32(&sb, 4));
        let (agblklog, inopblog, dirblklog) =
            (u32::from(sb[124]), u32::from(sb[123]), u32::from(sb[192]));
        let inode_size = u64::from(be::u16(&sb, 104));
        let v5 = be::u16(&sb, 100) & 0xF == 5;
        let incompat = if v5 { be::u32(&sb, 216) } else { 0 };
        let ag_blocks = u64::from(be::u32(&sb, 84));
        let ag_count = u64::from(be::u32(&sb, 88));
        let sane = (512..=65536).contains(&block)
            && block.is_power_of_two()
            && (256..=2048).contains(&inode_size)
            && inode_size.is_power_of_two()
            && block.checked_shr(inopblog) == Some(inode_size)
            && agblklog < 32
            && ag_blocks > 0
            && ag_blocks <= 1 << agblklog
            && dirblklog < 8;
        if !sane {
            return Err(Error::corrupt(
                "xfs superblock",
                format!("block {block}, inode {inode_size}, {ag_blocks} blocks per group"),
            ));
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::unsupported(
                "xfs",
                format!("incompatible features {:#x}", incompat & !INCOMPAT_KNOWN),
            ));
        }
        let ftype = incompat & INCOMPAT_FTYPE != 0 || be::u32(&sb, 200) & 0x200 != 0;
        Ok(Xfs {
            block,
            dir_block: block << dirblklog,
            ag_blocks,
            ag_count,
            agblklog,
            inopblog,
            inode_size,
            root: be::u64(&sb, 56),
            v5,
            ftype,
            nrext64: incompat & INCOMPAT_NREXT64 != 0,
            label: String::from_utf8_lossy(&sb[108..120])
                .trim_end_matches('\0')
                .to_string(),
            uuid: crate::ext4::format_uuid(&sb[32..48]),
            runs: RunCache::default(),
            dev,
        })
    }

    /// Byte offset of a file system block number (AG number in the high bits).
    fn fsb(&self, fsb: u64) -> Result<u64> {
        let (ag, bno) = (fsb >> self.agblklog, fsb & ((1 << self.agblklog) - 1));
        let byte = (ag < self.ag_count && bno < self.ag_blocks)
            .then(|| {
                ag.checked_mul(self.ag_blocks)?
                    .checked_add(bno)?
                    .checked_mul(self.block)
            })
            .flatten();
        byte.ok_or_else(|| Error::corrupt("xfs", format!("block {fsb} is not in the file system")))
    }

    fn inode(&self, ino: u64) -> Result<Inode> {
        let per_block_bits = self.inopblog;
        let block = self
            .fsb(ino >> per_block_bits)
            .map_err(|_| Error::corrupt(what(ino), "not an inode number"))?;
        let at = block + (ino & ((1 << per_block_bits) - 1)) * self.inode_size;
        let raw = read_vec(self.dev.as_ref(), at, self.inode_size)?;
        if be::u16(&raw, 0) != 0x494E {
            return Err(Error::corrupt(what(ino), "no inode magic"));
        }
        let version = raw[4];
        let core = if version >= 3 { 176 } else { 100 };
        if version >= 3 && be::u64(&raw, 152) != ino {
            return Err(Error::corrupt(
                what(ino),
                format!("says it is inode {}", be::u64(&raw, 152)),
            ));
        }
        let forkoff = usize::from(raw[82]) * 8;
        let fork_len = if forkoff == 0 {
            raw.len() - core
        } else {
            forkoff
        };
        if core + fork_len > raw.len() {
            return Err(Error::corrupt(
                what(ino),
                format!("data fork of {fork_len} bytes"),
            ));
        }
        Ok(Inode {
            raw,
            fork_at: core,
            fork_len,
        })
    }

    fn extent_count(&self, ino: &Inode) -> u64 {
        if self.nrext64 && be::u64(&ino.raw, 120) & DIFLAG2_NREXT64 != 0 {
            be::u64(&ino.raw, 24)
        } else {
            u64::from(be::u32(&ino.raw, 76))
        }
    }

    fn push_extent(&self, ino: u64, rec: &[u8], out: &mut Vec<Run>) -> Result<()> {
        let (l0, l1) = (be::u64(rec, 0), be::u64(rec, 8));
        let unwritten = l0 >> 63 == 1;
        let startoff = (l0 >> 9) & ((1 << 54) - 1);
        let startblock = ((l0 & 0x1FF) << 43) | (l1 >> 21);
        let count = l1 & ((1 << 21) - 1);
        let phys = self.fsb(startblock)?;
        if self.fsb(startblock + count.saturating_sub(1)).is_err() {
            return Err(Error::corrupt(
                what(ino),
                format!("extent of {count} blocks at {startblock} leaves its group"),
            ));
        }
        let Some(logical) = startoff.checked_mul(self.block) else {
            return Err(Error::corrupt(
                what(ino),
                format!("extent at file block {startoff}"),
            ));
        };
        out.push(Run {
            logical,
            len: count * self.block,
            physical: (!unwritten).then_some(phys),
        });
        if out.len() > runs::MAX_RUNS {
            return Err(Error::Limit {
                what: what(ino),
                why: "too many extents".into(),
            });
        }
        Ok(())
    }

    fn file_runs(&self, ino: u64, inode: &Inode) -> Result<Arc<Vec<Run>>> {
        self.runs.get(ino, || {
            let mut out = Vec::new();
            let fork = inode.fork();
            match inode.format() {
                2 => {
                    let n = self.extent_count(inode) as usize;
                    if n * 16 > fork.len() {
                        return Err(Error::corrupt(
                            what(ino),
                            format!("{n} extents do not fit the inode"),
                        ));
                    }
                    for rec in fork[..n * 16].chunks(16) {
                        self.push_extent(ino, rec, &mut out)?;
                    }
                }
                3 => {
                    let (level, n) = (be::u16(fork, 0), usize::from(be::u16(fork, 2)));
                    let max = (fork.len() - 4) / 16;
                    if level == 0 || level > MAX_BTREE_LEVELS || n > max {
                        return Err(Error::corrupt(
                            what(ino),
                            format!("btree root of level {level} with {n} records"),
                        ));
                    }
                    for k in 0..n {
                        let ptr = be::u64(fork, 4 + max * 8 + k * 8);
                        self.btree_block(ino, ptr, level - 1, &mut out)?;
                    }
                }
                f => {
                    return Err(Error::corrupt(
                        what(ino),
                        format!("data fork format {f} for file data"),
                    ))
                }
            }
            runs::normalize(&what(ino), out)
        })
    }

    fn btree_block(&self, ino: u64, fsb: u64, level: u16, out: &mut Vec<Run>) -> Result<()> {
        let data = read_vec(self.dev.as_ref(), self.fsb(fsb)?, self.block)?;
        let magic_ok = if self.v5 {
            &data[..4] == b"BMA3"
        } else {
            &data[..4] == b"BMAP"
        };
        let head = if self.v5 { 72 } else { 24 };
        let (lvl, n) = (be::u16(&data, 4), usize::from(be::u16(&data, 6)));
        if !magic_ok || lvl != level {
            return Err(Error::corrupt(
                what(ino),
                format!("extent btree block {fsb} (level {lvl}, expected {level})"),
            ));
        }
        if level == 0 {
            if head + n * 16 > data.len() {
                return Err(Error::corrupt(
                    what(ino),
                    format!("btree leaf with {n} records"),
                ));
            }
            for rec in data[head..head + n * 16].chunks(16) {
                self.push_extent(ino, rec, out)?;
            }
            return Ok(());
        }
        let max = (data.len() - head) / 16;
        if n > max {
            return Err(Error::corrupt(
                what(ino),
                format!("btree node with {n} records"),
            ));
        }
        for k in 0..n {
            self.btree_block(ino, be::u64(&data, head + max * 8 + k * 8), level - 1, out)?;
        }
        Ok(())
    }
}

fn time(raw: &[u8], at: usize, bigtime: bool) -> Time {
    if bigtime {
        let ns = be::u64(raw, at);
        let secs = (ns / 1_000_000_000) as i64 - (1i64 << 31);
        return Time {
            secs,
            nanos: (ns % 1_000_000_000) as u32,
        };
    }
    Time {
        secs: i64::from(be::u32(raw, at) as i32),
        nanos: be::u32(raw, at + 4).min(999_999_999),
    }
}

impl FileSystem for Xfs {
    fn format(&self) -> &'static str {
        "xfs"
    }

    fn label(&self) -> Option<String> {
        Some(self.label.clone()).filter(|l| !l.is_empty())
    }

    fn uuid(&self) -> Option<String> {
        Some(self.uuid.clone())
    }

    fn root(&self) -> u64 {
        self.root
    }

    fn stat(&self, ino: u64) -> Result<Attr> {
        let i = self.inode(ino)?;
        let raw = &i.raw;
        let bigtime = raw[4] >= 3 && be::u64(raw, 120) & DIFLAG2_BIGTIME != 0;
        let nlink = if raw[4] == 1 {
            u32::from(be::u16(raw, 6))
        } else {
            be::u32(raw, 16)
        };
        Ok(Attr {
            ino,
            kind: Kind::from_mode(i.mode()),
            size: i.size(),
            perm: u32::from(i.mode() & 0o7777),
            uid: be::u32(raw, 8),
            gid: be::u32(raw, 12),
            nlink,
            atime: time(raw, 32, bigtime),
            mtime: time(raw, 40, bigtime),
            ctime: time(raw, 48, bigtime),
        })
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let i = self.inode(ino)?;
        if Kind::from_mode(i.mode()) != Kind::Dir {
            return Err(Error::NotADirectory(what(ino)));
        }
        if i.format() == 1 {
            return self.short_dir(ino, i.fork(), i.size());
        }
        let runs = self.file_runs(ino, &i)?;
        let mut out = Vec::new();
        let mut read = 0u64;
        for r in runs
            .iter()
            .filter(|r| r.logical < LEAF_OFFSET && r.physical.is_some())
        {
            let mut off = r.logical - r.logical % self.dir_block;
            while off < (r.logical + r.len).min(LEAF_OFFSET) {
                read += self.dir_block;
                if read > 1 << 30 {
                    return Err(Error::Limit {
                        what: what(ino),
                        why: "directory over 1 GiB".into(),
                    });
                }
                let mut blk = vec![0u8; self.dir_block as usize];
                runs::read_runs(self.dev.as_ref(), &runs, u64::MAX, off, &mut blk)?;
                self.data_block_entries(ino, &blk, &mut out)?;
                off += self.dir_block;
            }
        }
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.inode(ino)?;
        if i.format() == 1 {
            let d = i
                .fork()
                .get(..i.size() as usize)
                .ok_or_else(|| Error::corrupt(what(ino), "local data larger than its fork"))?;
            return Ok(runs::read_bytes(d, offset, buf));
        }
        let runs = self.file_runs(ino, &i)?;
        runs::read_runs(self.dev.as_ref(), &runs, i.size(), offset, buf)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        let size = i.size();
        if size > 1024 {
            return Err(Error::corrupt(
                what(ino),
                format!("symlink of {size} bytes"),
            ));
        }
        if i.format() == 1 {
            return i
                .fork()
                .get(..size as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::corrupt(what(ino), "local symlink larger than its fork"));
        }
        let runs = self.file_runs(ino, &i)?;
        let mut blk = vec![0u8; self.block as usize];
        runs::read_runs(self.dev.as_ref(), &runs, self.block, 0, &mut blk)?;
        let head = if self.v5 {
            if &blk[..4] != b"XSLM" {
                return Err(Error::corrupt(
                    what(ino),
                    "remote symlink block without its magic",
                ));
            }
            56
        } else {
            0
        };
        blk.get(head..head + size as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::corrupt(what(ino), "symlink past its block"))
    }

    fn data_ranges(&self, ino: u64) -> Result<Vec<(u64, u64)>> {
        let i = self.inode(ino)?;
        if i.format() == 1 {
            return Ok(if i.size() == 0 {
                vec![]
            } else {
                vec![(0, i.size())]
            });
        }
        Ok(runs::data_ranges(&self.file_runs(ino, &i)?, i.size()))
    }
}
