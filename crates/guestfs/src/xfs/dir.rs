//! XFS directory blocks: the short form kept in the inode, and the data blocks of every
//! other form (block, leaf, node, btree), whose entries are all that vcb needs.

use super::{what, Xfs};
use crate::device::be;
use crate::vfs::DirEntry;
use crate::{Error, Result};

impl Xfs {
    pub(super) fn short_dir(&self, ino: u64, fork: &[u8], size: u64) -> Result<Vec<DirEntry>> {
        let data = fork.get(..size as usize).ok_or_else(|| {
            Error::corrupt(what(ino), "short-form directory larger than its fork")
        })?;
        let (count, i8count) = (
            usize::from(*data.first().unwrap_or(&0)),
            data.get(1).copied().unwrap_or(0),
        );
        let ino_len = if i8count > 0 { 8 } else { 4 };
        let mut pos = 2 + ino_len;
        let mut out = Vec::new();
        for _ in 0..count {
            let name_len = usize::from(
                *data
                    .get(pos)
                    .ok_or_else(|| Error::corrupt(what(ino), "short-form entry past the fork"))?,
            );
            let name_at = pos + 3;
            let ino_at = name_at + name_len + usize::from(self.ftype);
            let Some(name) = data.get(name_at..name_at + name_len) else {
                return Err(Error::corrupt(what(ino), "short-form name past the fork"));
            };
            if ino_at + ino_len > data.len() {
                return Err(Error::corrupt(
                    what(ino),
                    "short-form inode number past the fork",
                ));
            }
            let child = if ino_len == 8 {
                be::u64(data, ino_at)
            } else {
                u64::from(be::u32(data, ino_at))
            };
            out.push(DirEntry {
                name: name.to_vec(),
                ino: child,
            });
            pos = ino_at + ino_len;
        }
        Ok(out)
    }

    pub(super) fn data_block_entries(
        &self,
        ino: u64,
        blk: &[u8],
        out: &mut Vec<DirEntry>,
    ) -> Result<()> {
        let magic = &blk[..4];
        let (head, block_form) = match magic {
            b"XDB3" => (64, true),
            b"XDD3" => (64, false),
            b"XD2B" => (16, true),
            b"XD2D" => (16, false),
            _ => {
                return Err(Error::corrupt(
                    what(ino),
                    "directory block without a data magic",
                ))
            }
        };
        let mut end = blk.len();
        if block_form {
            let count = be::u32(blk, blk.len() - 8) as usize;
            end = blk
                .len()
                .checked_sub(8 + count * 8)
                .filter(|&e| e >= head)
                .ok_or_else(|| {
                    Error::corrupt(
                        what(ino),
                        format!("block directory with {count} leaf entries"),
                    )
                })?;
        }
        let mut pos = head;
        while pos + 8 <= end {
            if be::u16(blk, pos) == 0xFFFF {
                let len = usize::from(be::u16(blk, pos + 2));
                if len < 8 || len % 8 != 0 {
                    return Err(Error::corrupt(
                        what(ino),
                        format!("free directory space of {len} bytes"),
                    ));
                }
                pos += len;
                continue;
            }
            let child = be::u64(blk, pos);
            let name_len = usize::from(blk[pos + 8]);
            let name = blk
                .get(pos + 9..pos + 9 + name_len)
                .ok_or_else(|| Error::corrupt(what(ino), "name past the block"))?;
            if name_len == 0 {
                return Err(Error::corrupt(
                    what(ino),
                    "directory entry with an empty name",
                ));
            }
            if name != b"." && name != b".." {
                out.push(DirEntry {
                    name: name.to_vec(),
                    ino: child,
                });
            }
            pos += (9 + name_len + usize::from(self.ftype) + 2).div_ceil(8) * 8;
        }
        Ok(())
    }
}
