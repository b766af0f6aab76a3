//! [`check()`]: verify a COWD file's metadata and optionally repair it.

use super::{
    gd_entries_needed, next_data_offset, small, CowdHeader, GT_BYTES, GT_SECTORS,
    MAX_LISTED_ENTRIES, OFF_FREE_SECTOR, OFF_UNCLEAN_SHUTDOWN,
};
use crate::check::CheckReport;
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{COWD_HEADER_BYTES, SECTOR};
use std::path::Path;

/// Check a COWD file's metadata and, with `repair`, fix what can be fixed:
/// uncleanShutdown set (cleared); GD entries past EOF or inside the metadata (replaced by a new
/// empty GT: those grains then read from the parent); GT entries past EOF or inside the
/// metadata (cleared); freeSector below the end of the used space, as qemu leaves it (raised);
/// freeSector past EOF (file extended).
///
/// # Errors
/// Those of [`CowdHeader::parse`]; [`Error::Truncated`] if the header or GD lies past EOF;
/// [`Error::Io`] on read or (repair) write failure.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    let file = PathFile::open(path, repair)?;
    let mut raw = vec![0u8; small(COWD_HEADER_BYTES)];
    file.read_exact_at(&mut raw, 0, "COWD header")?;
    let header = CowdHeader::parse(&raw, path)?;
    let mut checker = Checker::new(file, header, repair)?;
    checker.grain_tables()?;
    checker.header_fields()?;
    Ok(checker.report)
}

/// State of one [`check`] run.
struct Checker {
    file: PathFile,
    header: CowdHeader,
    repair: bool,
    report: CheckReport,
    file_len_bytes: u64,
    gd: Vec<u32>,
    gd_changed: bool,
    /// End of everything in use (GTs and grains), sectors.
    used_end_sector: u64,
    /// Where repair puts replacement GTs.
    next_free_sector: u64,
    /// A byte range known to be a hole (see [`CowdExtent`](super::CowdExtent)); forgotten on
    /// repair writes.
    hole: (u64, u64),
    /// Damaged entries listed one per line, and beyond that only counted.
    listed: u64,
    unlisted: u64,
}

impl Checker {
    fn new(file: PathFile, header: CowdHeader, repair: bool) -> Result<Self> {
        let file_len_bytes = file.len()?;
        let mut gd_raw = vec![0u8; small(u64::from(header.num_gd_entries) * 4)];
        file.read_exact_at(
            &mut gd_raw,
            u64::from(header.gd_offset_sectors) * SECTOR,
            "COWD grain directory",
        )?;
        let gd = gd_raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let used_end_sector = header.gd_end_sector();
        let next_free_sector = u64::from(header.free_sector).max(file_len_bytes.div_ceil(SECTOR));
        Ok(Checker {
            file,
            header,
            repair,
            report: CheckReport::default(),
            file_len_bytes,
            gd,
            gd_changed: false,
            used_end_sector,
            next_free_sector,
            hole: (0, 0),
            listed: 0,
            unlisted: 0,
        })
    }

    fn name(&self) -> String {
        self.file.path().display().to_string()
    }

    fn grain_tables(&mut self) -> Result<()> {
        let gran = u64::from(self.header.granularity_sectors);
        let meta_end = self.header.gd_end_sector();
        let needed = gd_entries_needed(u64::from(self.header.num_sectors), gran);
        for i in 0..needed {
            let sector = u64::from(self.gd.get(small(i)).copied().unwrap_or(0));
            if sector == 0 {
                continue;
            }
            if sector < meta_end || (sector + GT_SECTORS) * SECTOR > self.file_len_bytes {
                let where_ = if sector < meta_end {
                    "into the header or grain directory"
                } else {
                    "past end of file"
                };
                let problem = format!(
                    "{}: GD entry {i} points {where_} (sector {sector:#x})",
                    self.name()
                );
                let repaired = if self.repair {
                    let new = self.replace_gt(i)?;
                    Some(format!(
                        "{}: GD entry {i} now points to a new empty grain table at sector {new:#x}; its grains read from the parent",
                        self.name()
                    ))
                } else {
                    None
                };
                self.note(problem, repaired);
                continue;
            }
            self.used_end_sector = self.used_end_sector.max(sector + GT_SECTORS);
            self.grain_table(i, sector, gran, meta_end)?;
        }
        if self.unlisted > 0 {
            let (name, n) = (self.name(), self.unlisted);
            self.report.problem(format!(
                "{name}: {n} more damaged GD/GT entries (not listed)"
            ));
            if self.repair {
                self.report
                    .repaired(format!("{name}: {n} more GD/GT entries repaired"));
            }
        }
        Ok(())
    }

    /// Record a damaged GD/GT entry; past [`MAX_LISTED_ENTRIES`] only count it.
    fn note(&mut self, problem: String, repaired: Option<String>) {
        if self.listed >= MAX_LISTED_ENTRIES {
            self.unlisted += 1;
            return;
        }
        self.listed += 1;
        self.report.problem(problem);
        if let Some(r) = repaired {
            self.report.repaired(r);
        }
    }

    fn grain_table(&mut self, gt: u64, sector: u64, gran: u64, meta_end: u64) -> Result<()> {
        let offset = sector * SECTOR;
        if !(self.hole.0 <= offset && offset + GT_BYTES <= self.hole.1) {
            self.hole = (offset, next_data_offset(&self.file, offset));
        }
        if offset + GT_BYTES <= self.hole.1 {
            return Ok(()); // an untouched preallocated table: all zeros
        }
        let mut raw = vec![0u8; small(GT_BYTES)];
        self.file
            .read_exact_at(&mut raw, offset, "COWD grain table")?;
        let mut changed = false;
        for (index, chunk) in raw.chunks_exact_mut(4).enumerate() {
            let entry = u64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            if entry == 0 {
                continue;
            }
            if entry >= meta_end && (entry + gran) * SECTOR <= self.file_len_bytes {
                self.used_end_sector = self.used_end_sector.max(entry + gran);
                continue;
            }
            let where_ = if entry < meta_end {
                "into the header or grain directory"
            } else {
                "past end of file"
            };
            let problem = format!(
                "{}: GT {gt} entry {index} points {where_} (sector {entry:#x})",
                self.name()
            );
            let repaired = self.repair.then(|| {
                format!(
                    "{}: GT {gt} entry {index} cleared; the grain reads from the parent",
                    self.name()
                )
            });
            if self.repair {
                chunk.fill(0);
                changed = true;
            }
            self.note(problem, repaired);
        }
        if changed {
            self.file.write_all_at(&raw, sector * SECTOR)?;
            self.hole = (0, 0);
        }
        Ok(())
    }

    fn replace_gt(&mut self, gd_index: u64) -> Result<u64> {
        self.hole = (0, 0);
        let sector = self.next_free_sector;
        let entry = u32::try_from(sector)
            .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
        let end_bytes = (sector + GT_SECTORS) * SECTOR;
        if sector * SECTOR >= self.file_len_bytes {
            // Past EOF (always, as next_free_sector starts there): extending the file makes
            // the table a hole of zeros, as `create` leaves its tables. Writing the zeros cost
            // 16 KiB per damaged GD entry, 16 GiB for a hostile 4 MiB GD (issue 2).
            self.file.set_len(end_bytes)?;
        } else {
            self.file
                .write_all_at(&vec![0u8; small(GT_BYTES)], sector * SECTOR)?;
        }
        self.next_free_sector = sector + GT_SECTORS;
        self.file_len_bytes = self.file_len_bytes.max(self.next_free_sector * SECTOR);
        self.used_end_sector = self.used_end_sector.max(self.next_free_sector);
        if let Some(e) = self.gd.get_mut(small(gd_index)) {
            *e = entry;
        }
        self.gd_changed = true;
        Ok(sector)
    }

    fn header_fields(&mut self) -> Result<()> {
        let name = self.name();
        let mut changed = self.gd_changed;
        if self.gd_changed {
            let raw: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.file
                .write_all_at(&raw, u64::from(self.header.gd_offset_sectors) * SECTOR)?;
        }
        if self.header.unclean_shutdown != 0 {
            self.report.problem(format!(
                "{name}: not closed cleanly (uncleanShutdown = {})",
                self.header.unclean_shutdown
            ));
            if self.repair {
                self.file
                    .write_all_at(&0u32.to_le_bytes(), OFF_UNCLEAN_SHUTDOWN)?;
                changed = true;
                self.report
                    .repaired(format!("{name}: uncleanShutdown cleared"));
            }
        }
        let mut free = u64::from(self.header.free_sector);
        if free < self.used_end_sector {
            self.report.problem(format!(
                "{name}: freeSector {free:#x} lies below the end of the used space {:#x} (qemu does not update freeSector)",
                self.used_end_sector
            ));
            if self.repair {
                let raised = u32::try_from(self.used_end_sector)
                    .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
                self.file
                    .write_all_at(&raised.to_le_bytes(), OFF_FREE_SECTOR)?;
                free = u64::from(raised);
                changed = true;
                self.report
                    .repaired(format!("{name}: freeSector raised to {raised:#x}"));
            }
        }
        if free * SECTOR > self.file_len_bytes {
            self.report.problem(format!(
                "{name}: freeSector {free:#x} lies past end of file ({} bytes)",
                self.file_len_bytes
            ));
            if self.repair {
                self.file.set_len(free * SECTOR)?;
                changed = true;
                self.report
                    .repaired(format!("{name}: file extended to freeSector"));
            }
        }
        if changed {
            self.file.sync_all()?;
        }
        Ok(())
    }
}
