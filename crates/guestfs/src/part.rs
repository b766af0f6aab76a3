//! MBR (with extended and logical partitions) and GPT partition tables.
//!
//! Written here rather than with `mbrman`/`gpt`: those crates read through `Read + Seek`
//! and are made to edit tables; vcb only needs the list of byte ranges, from a shared
//! [`Device`], with every hostile case (loops of extended partitions, entries past the disk,
//! absurd entry counts) answered by an error instead of an allocation. The code is small.

use crate::device::{le, read_vec, Device};
use crate::{Error, Result};

const SECTOR: u64 = 512;
/// Logical partitions followed before a chain of extended boot records is called a loop.
const MAX_LOGICAL: usize = 128;

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number as Linux names it (MBR: 1–4 primary, 5… logical; GPT: entry index + 1).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// MBR type byte, or 0 on GPT.
    pub mbr_type: u8,
    /// GPT type GUID, lower case text, or empty on MBR.
    pub type_guid: String,
    /// GPT unique partition GUID (what Windows' MountedDevices names for GPT disks).
    pub guid: String,
    /// GPT partition name.
    pub name: String,
}

/// Which table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// A DOS partition table; the disk signature.
    Mbr(u32),
    /// A GUID partition table.
    Gpt,
}

/// Read the partition table of `dev`; `None` when the disk has none.
///
/// # Errors
/// Read errors; [`Error::Corrupt`] for a table that has a signature but makes no sense.
pub fn read_table(dev: &dyn Device) -> Result<Option<(Table, Vec<Partition>)>> {
    if dev.size() < SECTOR * 2 {
        return Ok(None);
    }
    let mbr = read_vec(dev, 0, SECTOR)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(None);
    }
    // A file system on the whole disk: its boot sector also ends in 55 AA, and its boot
    // code where a table's entries would be.
    if crate::ntfs::detect(dev) || crate::fat::detect(dev) {
        return Ok(None);
    }
    let entries: Vec<[u8; 16]> = (0..4)
        .map(|i| {
            let mut e = [0u8; 16];
            e.copy_from_slice(&mbr[446 + i * 16..462 + i * 16]);
            e
        })
        .collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        return read_gpt(dev).map(|p| Some((Table::Gpt, p)));
    }
    // A FAT or NTFS boot sector also ends in 55 AA: a table's status bytes are 0 or 0x80.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (kind, first, count) = (e[4], u64::from(le::u32(e, 8)), u64::from(le::u32(e, 12)));
        if kind == 0 || count == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            read_logical(dev, first, &mut parts)?;
            continue;
        }
        parts.push(mbr_partition(dev, i as u32 + 1, kind, first, count)?);
    }
    parts.sort_by_key(|p| p.number);
    Ok(Some((Table::Mbr(le::u32(&mbr, 440)), parts)))
}

fn mbr_partition(
    dev: &dyn Device,
    number: u32,
    kind: u8,
    first: u64,
    count: u64,
) -> Result<Partition> {
    let (start, len) = (first * SECTOR, count * SECTOR);
    if start.saturating_add(len) > dev.size() {
        return Err(Error::corrupt(
            format!("partition {number}"),
            format!(
                "{len} bytes at {start} run past the end of the disk ({} bytes)",
                dev.size()
            ),
        ));
    }
    Ok(Partition {
        number,
        start,
        len,
        mbr_type: kind,
        type_guid: String::new(),
        guid: String::new(),
        name: String::new(),
    })
}

/// Follow the chain of extended boot records from the extended partition at `base` (LBA).
fn read_logical(dev: &dyn Device, base: u64, parts: &mut Vec<Partition>) -> Result<()> {
    let mut ebr_lba = base;
    for n in 0..MAX_LOGICAL {
        let Some(at) = ebr_lba
            .checked_mul(SECTOR)
            .filter(|a| a + SECTOR <= dev.size())
        else {
            return Err(Error::corrupt(
                "extended partition",
                format!("boot record at sector {ebr_lba} is past the disk"),
            ));
        };
        let ebr = read_vec(dev, at, SECTOR)?;
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            return Err(Error::corrupt(
                "extended partition",
                format!("no boot record signature at sector {ebr_lba}"),
            ));
        }
        let (kind, rel, count) = (
            ebr[446 + 4],
            u64::from(le::u32(&ebr, 446 + 8)),
            u64::from(le::u32(&ebr, 446 + 12)),
        );
        if kind != 0 && count != 0 {
            parts.push(mbr_partition(
                dev,
                5 + n as u32,
                kind,
                ebr_lba + rel,
                count,
            )?);
        }
        let next = u64::from(le::u32(&ebr, 462 + 8));
        if ebr[462 + 4] == 0 || next == 0 {
            return Ok(());
        }
        ebr_lba = base + next;
    }
    Err(Error::Limit {
        what: "extended partition".into(),
        why: format!("more than {MAX_LOGICAL} logical partitions (a loop?)"),
    })
}

fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le::u32(b, 0),
        le::u16(b, 4),
        le::u16(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

fn read_gpt(dev: &dyn Device) -> Result<Vec<Partition>> {
    let last = dev.size() / SECTOR - 1;
    let primary = gpt_header(dev, 1);
    let header = match primary {
        Ok(h) => h,
        Err(first) => gpt_header(dev, last).map_err(|_| first)?,
    };
    let (entries_lba, count, size) = (
        le::u64(&header, 72),
        le::u32(&header, 80),
        le::u32(&header, 84),
    );
    if !(128..=4096).contains(&size)
        || count > 16384
        || u64::from(count) * u64::from(size) > 4 << 20
    {
        return Err(Error::corrupt(
            "GPT",
            format!("{count} entries of {size} bytes"),
        ));
    }
    let Some(at) = entries_lba.checked_mul(SECTOR) else {
        return Err(Error::corrupt("GPT", "entry array past the disk"));
    };
    let table = read_vec(dev, at, u64::from(count) * u64::from(size))?;
    if crc32fast::hash(&table) != le::u32(&header, 88) {
        return Err(Error::corrupt(
            "GPT",
            "partition entry array checksum mismatch",
        ));
    }
    let mut parts = Vec::new();
    for (i, e) in table.chunks(size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, end) = (le::u64(e, 32), le::u64(e, 40));
        if end < first || end > last {
            return Err(Error::corrupt(
                format!("GPT partition {}", i + 1),
                format!("sectors {first}..{end} are not on the disk"),
            ));
        }
        let name: Vec<u16> = (0..36)
            .map(|k| le::u16(e, 56 + k * 2))
            .take_while(|&c| c != 0)
            .collect();
        parts.push(Partition {
            number: i as u32 + 1,
            start: first * SECTOR,
            len: (end - first + 1) * SECTOR,
            mbr_type: 0,
            type_guid: guid_text(&e[..16]),
            guid: guid_text(&e[16..32]),
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(parts)
}

fn gpt_header(dev: &dyn Device, lba: u64) -> Result<Vec<u8>> {
    let mut h = read_vec(dev, lba * SECTOR, SECTOR)?;
    if &h[..8] != b"EFI PART" {
        return Err(Error::corrupt(
            "GPT",
            format!("no header signature at sector {lba}"),
        ));
    }
    let hsize = le::u32(&h, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(Error::corrupt("GPT", format!("header size {hsize}")));
    }
    let want = le::u32(&h, 16);
    h[16..20].fill(0);
    if crc32fast::hash(&h[..hsize]) != want {
        return Err(Error::corrupt(
            "GPT",
            format!("header checksum mismatch at sector {lba}"),
        ));
    }
    Ok(h)
}
