//! Metadata check and repair of one hosted sparse extent.
//!
//! Checked: `uncleanShutdown`, grain directories inside the file, GD entries past EOF,
//! GT entries past EOF, primary and redundant grain tables agreeing, grains pointing into
//! the metadata or overlapping each other. Repairs (non-compressed extents only) write the
//! grain tables first, then the directories, then the header, each step fsynced.

use super::lookup::{directory_sane, read_directory, GTES};
use super::{le_u32, SparseHeader, GT_BYTES, HEADER_BYTES};
use crate::check::CheckReport;
use crate::error::Result;
use crate::fileio::PathFile;
use crate::magic::{KDMV_FLAG_REDUNDANT_GD, SECTOR};
use std::path::Path;

/// Detail lines listed per report before the rest is only counted.
const MAX_LINES: usize = 1000;

/// The primary and redundant copies of one grain table while it is checked.
struct TablePair {
    /// GD and RGD entries after repair.
    np: u32,
    nr: u32,
    pt: Option<Vec<u32>>,
    rt: Option<Vec<u32>>,
    /// The table must be written back to `np` / `nr`.
    p_changed: bool,
    r_changed: bool,
}

struct Checker<'a> {
    file: &'a PathFile,
    file_len: u64,
    h: SparseHeader,
    name: String,
    repair: bool,
    report: CheckReport,
    hidden_problems: usize,
    hidden_repairs: usize,
    /// More allocated grains than the file can hold were found (so some overlap); they
    /// are not all collected, which bounds memory on hostile files.
    grain_overflow: bool,
    /// The header must be rewritten (directory replaced or redundancy dropped).
    header_dirty: bool,
}

/// Check the sparse extent at `path`; with `repair`, fix what can be fixed (see the module
/// documentation). Every report line names the file, and the GT / entry concerned.
///
/// # Errors
/// Only when the file cannot be examined at all: [`crate::Error::Io`], an invalid header
/// ([`crate::Error::BadHeader`], [`crate::Error::Truncated`]) or an incomplete stream.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    let file = PathFile::open(path, repair)?;
    let file_len = file.len()?;
    let mut hb = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut hb, 0, "sparse extent header")?;
    let header0 = SparseHeader::parse(&hb, path)?;
    let h = if header0.gd_at_end() {
        super::footer::locate_footer(&file, &header0, file_len)?
    } else {
        header0.clone()
    };
    let mut c = Checker {
        file: &file,
        file_len,
        repair: repair && !h.is_compressed(),
        h,
        name: path.display().to_string(),
        report: CheckReport::default(),
        hidden_problems: 0,
        hidden_repairs: 0,
        grain_overflow: false,
        header_dirty: false,
    };
    if c.h.overhead_sectors.saturating_mul(SECTOR) > file_len {
        c.problem(format!(
            "overHead (sector {:#x}) lies past EOF ({file_len} bytes)",
            c.h.overhead_sectors
        ));
    }
    c.check_all()?;
    c.finish(header0.unclean_shutdown)?;
    Ok(c.report)
}

impl Checker<'_> {
    fn problem(&mut self, text: String) {
        if self.report.problems.len() < MAX_LINES {
            self.report.problem(format!("{}: {text}", self.name));
        } else {
            self.hidden_problems += 1;
        }
    }

    fn repaired(&mut self, text: String) {
        if self.report.repaired.len() < MAX_LINES {
            self.report.repaired(format!("{}: {text}", self.name));
        } else {
            self.hidden_repairs += 1;
        }
    }

    fn valid_table(&self, sector: u32) -> bool {
        sector != 0 && u64::from(sector) * SECTOR + GT_BYTES <= self.file_len
    }

    fn read_table(&self, sector: u32) -> Result<Vec<u32>> {
        let mut raw = vec![0u8; GTES * 4];
        self.file
            .read_exact_at(&mut raw, u64::from(sector) * SECTOR, "grain table")?;
        Ok(raw.chunks_exact(4).map(|c| le_u32(c, 0)).collect())
    }

    fn write_u32s(&self, v: &[u32], offset: u64) -> Result<()> {
        let bytes: Vec<u8> = v.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.file.write_all_at(&bytes, offset)
    }

    /// Read one directory, reporting (not failing) when it lies past EOF or names tables
    /// past EOF. Returns the directory and whether it is sane.
    fn directory(&mut self, offset: u64, label: &str) -> (Option<Vec<u32>>, bool) {
        let n = self.h.gd_entries();
        match read_directory(self.file, offset, n, self.file_len, "grain directory") {
            Ok(d) => {
                for (i, &s) in d.iter().enumerate() {
                    if s != 0 && !self.valid_table(s) {
                        self.problem(format!("{label} entry {i} points past EOF (sector {s:#x})"));
                    }
                }
                let sane = directory_sane(&d, self.file_len);
                (Some(d), sane)
            }
            Err(_) => {
                self.problem(format!(
                    "{label} at sector {offset:#x} lies past EOF ({} bytes)",
                    self.file_len
                ));
                (None, false)
            }
        }
    }

    fn check_all(&mut self) -> Result<()> {
        let (mut gd, gd_sane) = self.directory(self.h.gd_offset_sectors, "GD");
        let (mut rgd, rgd_sane) = if self.h.has_redundant_gd() {
            self.directory(self.h.rgd_offset_sectors, "redundant GD")
        } else {
            (None, false)
        };
        if self.repair {
            self.replace_unreadable_directory(&mut gd, &mut rgd, gd_sane, rgd_sane);
        }
        let mut grains: Vec<(u32, u32)> = Vec::new();
        let (mut gd_dirty, mut rgd_dirty) = (false, false);
        for i in 0..gd.as_ref().or(rgd.as_ref()).map_or(0, Vec::len) {
            let p = gd.as_ref().map_or(0, |d| d[i]);
            let r = rgd.as_ref().map_or(0, |d| d[i]);
            let (np, nr) = self.check_table(i, (p, r), (gd_sane, rgd_sane), &mut grains)?;
            if let (Some(d), true) = (gd.as_mut(), np != p) {
                d[i] = np;
                gd_dirty = true;
            }
            if let (Some(d), true) = (rgd.as_mut(), nr != r) {
                d[i] = nr;
                rgd_dirty = true;
            }
        }
        self.check_shared_tables(gd.as_deref(), rgd.as_deref());
        self.check_overlaps(&mut grains);
        if self.repair && (gd_dirty || rgd_dirty) {
            self.file.sync_data()?;
            if let (Some(d), true) = (&gd, gd_dirty) {
                self.write_u32s(d, self.h.gd_offset_sectors * SECTOR)?;
            }
            if let (Some(d), true) = (&rgd, rgd_dirty) {
                self.write_u32s(d, self.h.rgd_offset_sectors * SECTOR)?;
            }
            self.file.sync_all()?;
        }
        Ok(())
    }

    /// Two directory entries for different grain ranges naming one grain table: a write
    /// through one would change the other range's grains. qemu-img check says nothing of
    /// it. (Entry `i` of both directories naming one table is what a repair leaves when
    /// one copy was lost: redundancy dropped for that table, data intact.)
    fn check_shared_tables(&mut self, gd: Option<&[u32]>, rgd: Option<&[u32]>) {
        let mut seen: std::collections::HashMap<u32, (usize, String)> =
            std::collections::HashMap::new();
        let dirs = [("GD", gd), ("redundant GD", rgd)];
        for (label, dir) in dirs {
            for (i, &s) in dir.into_iter().flatten().enumerate() {
                if s == 0 || !self.valid_table(s) {
                    continue;
                }
                let here = format!("{label} entry {i}");
                match seen.get(&s) {
                    Some((j, first)) if *j != i => {
                        let first = first.clone();
                        self.problem(format!(
                            "{first} and {here} name the same grain table (sector {s:#x})"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(s, (i, here));
                    }
                }
            }
        }
    }

    /// A directory that cannot be read at all is replaced by the other one (redundancy is
    /// dropped; the header is rewritten at the end).
    fn replace_unreadable_directory(
        &mut self,
        gd: &mut Option<Vec<u32>>,
        rgd: &mut Option<Vec<u32>>,
        gd_sane: bool,
        rgd_sane: bool,
    ) {
        let redundant = self.h.has_redundant_gd();
        if gd.is_none() && rgd.is_some() && rgd_sane {
            self.h.gd_offset_sectors = self.h.rgd_offset_sectors;
            *gd = rgd.take();
            self.repaired("GD replaced by the redundant GD (redundancy dropped)".into());
        } else if redundant && rgd.is_none() && gd_sane {
            self.repaired("unreadable redundant GD dropped".into());
        } else {
            return;
        }
        self.h.flags &= !KDMV_FLAG_REDUNDANT_GD;
        self.h.rgd_offset_sectors = 0;
        self.header_dirty = true;
    }

    /// Check GD entry `i`: primary table at `p`, redundant at `r`. Returns the (possibly
    /// repaired) GD and RGD entries; a missing table is repaired by sharing the other one.
    fn check_table(
        &mut self,
        i: usize,
        (p, r): (u32, u32),
        sane: (bool, bool),
        grains: &mut Vec<(u32, u32)>,
    ) -> Result<(u32, u32)> {
        let mut t = TablePair {
            np: p,
            nr: r,
            pt: if self.valid_table(p) {
                Some(self.read_table(p)?)
            } else {
                None
            },
            rt: if self.valid_table(r) {
                Some(self.read_table(r)?)
            } else {
                None
            },
            p_changed: false,
            r_changed: false,
        };
        t.p_changed = t.pt.as_mut().is_some_and(|x| self.fix_past_eof(i, x, "GT"));
        t.r_changed =
            t.rt.as_mut()
                .is_some_and(|x| self.fix_past_eof(i, x, "redundant GT"));
        if p != 0 && t.pt.is_none() && self.repair && !sane.1 {
            t.np = 0;
            self.repaired(format!(
                "GD entry {i} set to 0: the 512 grains of GT {i} are lost"
            ));
        }
        if self.h.has_redundant_gd() && (t.pt.is_some() || t.rt.is_some()) && t.pt != t.rt {
            self.problem(format!(
                "GT {i}: primary (sector {p:#x}) and redundant (sector {r:#x}) grain tables differ"
            ));
            self.reconcile(i, &mut t, sane);
        }
        if self.repair {
            if let Some(x) =
                t.pt.as_ref()
                    .filter(|_| t.p_changed && self.valid_table(t.np))
            {
                self.write_u32s(x, u64::from(t.np) * SECTOR)?;
            }
            if let Some(x) =
                t.rt.as_ref()
                    .filter(|_| t.r_changed && self.valid_table(t.nr))
            {
                self.write_u32s(x, u64::from(t.nr) * SECTOR)?;
            }
        }
        if let Some(x) = t.pt.as_ref().or(t.rt.as_ref()) {
            self.collect_grains(i, x, grains);
        }
        Ok((t.np, t.nr))
    }

    /// Repairing: make the tables of a disagreeing pair equal, from the primary when the
    /// primary GD is sane, else from the redundant one. A missing table shares the other.
    fn reconcile(&mut self, i: usize, t: &mut TablePair, (gd_sane, rgd_sane): (bool, bool)) {
        if !self.repair {
            return;
        }
        if gd_sane && t.pt.is_some() {
            if t.rt.is_none() {
                t.nr = t.np;
            }
            t.rt.clone_from(&t.pt);
            t.r_changed = t.nr != t.np;
            self.repaired(format!(
                "GT {i}: redundant grain table rewritten from the primary"
            ));
        } else if rgd_sane && t.rt.is_some() {
            if t.pt.is_none() {
                t.np = t.nr;
            }
            t.pt.clone_from(&t.rt);
            t.p_changed = t.np != t.nr;
            self.repaired(format!(
                "GT {i}: primary grain table rewritten from the redundant one"
            ));
        }
    }

    /// Record the allocated grains of table `gt` as (sector, grain number).
    fn collect_grains(&mut self, gt: usize, t: &[u32], grains: &mut Vec<(u32, u32)>) {
        let zeroed = self.h.zeroed_gte();
        // Distinct grains cannot outnumber what fits in the file (compressed: a sector each).
        let span = if self.h.is_compressed() {
            SECTOR
        } else {
            self.h.grain_bytes().max(SECTOR)
        };
        let limit = usize::try_from(self.file_len / span + 1).unwrap_or(usize::MAX);
        // At most 2^23 tables of 512 entries: grain numbers fit u32.
        let Some(base) = u32::try_from(gt).ok().and_then(|g| g.checked_mul(512)) else {
            return;
        };
        for (j, &s) in t.iter().enumerate() {
            if s > 1 || (s == 1 && !zeroed) {
                if grains.len() >= limit {
                    self.grain_overflow = true;
                    return;
                }
                grains.push((s, base + u32::try_from(j).unwrap_or(0)));
            }
        }
    }

    /// Report (and, repairing, zero) entries of one table that point past EOF.
    fn fix_past_eof(&mut self, gt: usize, t: &mut [u32], label: &str) -> bool {
        let zeroed = self.h.zeroed_gte();
        let mut fixed = false;
        for (j, e) in t.iter_mut().enumerate() {
            let s = *e;
            if s == 0 || (s == 1 && zeroed) || u64::from(s) * SECTOR < self.file_len {
                continue;
            }
            self.problem(format!(
                "{label} {gt} entry {j} points past EOF (sector {s:#x})"
            ));
            if self.repair {
                *e = 0;
                fixed = true;
                self.repaired(format!(
                    "{label} {gt} entry {j} set to unallocated: data of that grain is lost"
                ));
            }
        }
        fixed
    }

    /// Report grains inside the metadata, and grains that overlap (compressed grains:
    /// that share a start sector).
    fn check_overlaps(&mut self, grains: &mut [(u32, u32)]) {
        if self.grain_overflow {
            let n = grains.len();
            self.problem(format!(
                "more than {n} allocated grains in a file of {} bytes: grains overlap (not all listed)",
                self.file_len
            ));
        }
        grains.sort_unstable();
        let overhead = self.h.overhead_sectors;
        let span = if self.h.is_compressed() {
            1
        } else {
            self.h.grain_sectors
        };
        let name = |g: u32| format!("GT {} entry {}", g / 512, g % 512);
        for &(s, g) in grains.iter().take_while(|(s, _)| u64::from(*s) < overhead) {
            self.problem(format!(
                "{} points into the metadata (sector {s:#x} < overHead {overhead:#x})",
                name(g)
            ));
        }
        for w in grains.windows(2) {
            let ((s0, g0), (s1, g1)) = (w[0], w[1]);
            if u64::from(s0) + span > u64::from(s1) {
                self.problem(format!(
                    "{} and {} overlap (sectors {s0:#x} and {s1:#x})",
                    name(g0),
                    name(g1)
                ));
            }
        }
    }

    /// Header: report uncleanShutdown; when repairing, rewrite the header last.
    fn finish(&mut self, unclean: bool) -> Result<()> {
        if unclean {
            self.problem("uncleanShutdown is set: the extent was not closed cleanly".into());
        }
        if self.repair && (unclean || self.header_dirty) {
            let mut h = self.h.clone();
            h.unclean_shutdown = false;
            self.file.sync_data()?;
            self.file.write_all_at(&h.to_bytes(), 0)?;
            self.file.sync_all()?;
            if unclean {
                self.repaired("uncleanShutdown cleared".into());
            }
        }
        if self.hidden_problems > 0 {
            let n = self.hidden_problems;
            self.report
                .problem(format!("{}: {n} more problems not listed", self.name));
        }
        if self.hidden_repairs > 0 {
            let n = self.hidden_repairs;
            self.report
                .repaired(format!("{}: {n} more repairs not listed", self.name));
        }
        Ok(())
    }
}
