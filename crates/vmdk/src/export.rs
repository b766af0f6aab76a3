//! Exporting a disk as compacted hosted sparse files (monolithicSparse or
//! twoGbMaxExtentSparse) produced **in order**, byte after byte, into an [`ExportSink`]:
//! for destinations written as streams (a remote backup over SFTP), where there is no
//! local file to seek in.
//!
//! # Layout
//! Each extent file is laid out exactly as [`crate::sparse::create()`] lays out a new one
//! (qemu's and VMware's hosted layout; the same header code computes it): header ·
//! embedded descriptor (monolithicSparse only) · redundant GD · redundant GTs · GD · GTs
//! · grains from `overHead` on. The metadata size depends only on the capacity; the
//! grains follow back to back in disk order, all-zero grains left out (the export is
//! compacted), each grain table entry pointing at its grain. A twoGbMaxExtentSparse
//! export writes its `-s001.vmdk` … pieces in order and the descriptor file last.
//!
//! # Two passes over the source
//! Files are produced in order, so the grain tables (at the front) must be known before
//! the first grain is written. The first pass reads the data ranges of the source and
//! records which grains hold non-zero data (a bitmap: one bit per 64 KiB grain); the
//! second pass writes the metadata and then the grains. Producing the bytes in order
//! rather than by position lets the sink hash each file as it goes (a backup catalog
//! records every file's SHA-256) without reading anything back from the destination.
//! The source must not change between the passes (a backup reads a snapshot's static
//! links); a change is detected and reported as [`Error::Corrupt`].
//!
//! Progress covers both passes: [`Progress::start`] is told twice the capacity.

use crate::convert::copy_data;
use crate::create::{base_ddb, check_capacity, extent, split_name, split_sizes};
use crate::create::{CreateSpec, DiskFormat};
use crate::descriptor::{Descriptor, ExtentType};
use crate::error::{Error, Result};
use crate::magic::{DEFAULT_GRAIN_SECTORS, KDMV_GTES_PER_GT, SECTOR};
use crate::progress::{Progress, Warning};
use crate::sparse::{directory_bytes, plan, CreateSparse, SparseHeader, GT_SECTORS};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Grain size of exported extents, bytes (the zero detection of [`copy_data`] works in
/// the same 64 KiB blocks).
const GRAIN: u64 = DEFAULT_GRAIN_SECTORS * SECTOR;

/// Where [`export_sparse`] puts the files it produces, one after the other: `begin`,
/// `write`s of the file's bytes in order, `end`.
pub trait ExportSink {
    /// Start the file `name` (a plain file name, no folder).
    ///
    /// # Errors
    /// Whatever stops the file from being created; the export stops.
    fn begin(&mut self, name: &str) -> std::io::Result<()>;

    /// The next bytes of the current file.
    ///
    /// # Errors
    /// Whatever stops the bytes from being stored; the export stops.
    fn write(&mut self, data: &[u8]) -> std::io::Result<()>;

    /// The current file is complete.
    ///
    /// # Errors
    /// Whatever stops the file from being completed (flush, fsync, rename); the export stops.
    fn end(&mut self) -> std::io::Result<()>;
}

/// An [`ExportSink`] writing new files into a local folder (each fsynced at its end).
#[derive(Debug)]
pub struct DirSink {
    dir: PathBuf,
    current: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    written: Vec<PathBuf>,
}

impl DirSink {
    /// Files go into `dir`, which must exist; existing files are never replaced.
    pub fn new(dir: impl Into<PathBuf>) -> DirSink {
        DirSink {
            dir: dir.into(),
            current: None,
            written: Vec::new(),
        }
    }

    /// The files completed so far, in order.
    pub fn written(&self) -> &[PathBuf] {
        &self.written
    }
}

impl ExportSink for DirSink {
    fn begin(&mut self, name: &str) -> std::io::Result<()> {
        if name.contains('/') || name.is_empty() || name == "." || name == ".." {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        let path = self.dir.join(name);
        let file = std::fs::File::create_new(&path)?;
        self.current = Some((path, std::io::BufWriter::with_capacity(1 << 20, file)));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, w)) => w.write_all(data),
            None => Err(std::io::Error::other("no file begun")),
        }
    }

    fn end(&mut self) -> std::io::Result<()> {
        let Some((path, w)) = self.current.take() else {
            return Err(std::io::Error::other("no file begun"));
        };
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        self.written.push(path);
        Ok(())
    }
}

/// One extent file of the export.
struct Planned {
    file: String,
    /// First byte of the disk it holds, and how many.
    start: u64,
    size: u64,
    header: SparseHeader,
    embedded: Option<String>,
}

impl Planned {
    fn first_grain(&self) -> u64 {
        self.start / GRAIN
    }
    fn grains(&self) -> u64 {
        self.size.div_ceil(GRAIN)
    }
}

/// One bit per grain of the disk: whether it holds non-zero data.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(grains: u64) -> Result<Bitmap> {
        let words = usize::try_from(grains.div_ceil(64))
            .map_err(|_| Error::InvalidArgument("disk too large to export".into()))?;
        Ok(Bitmap(vec![0; words]))
    }
    fn set(&mut self, g: u64) {
        if let Some(w) = usize::try_from(g / 64).ok().and_then(|i| self.0.get_mut(i)) {
            *w |= 1 << (g % 64);
        }
    }
    fn get(&self, g: u64) -> bool {
        usize::try_from(g / 64)
            .ok()
            .and_then(|i| self.0.get(i))
            .is_some_and(|w| w & (1 << (g % 64)) != 0)
    }
    fn count(&self, from: u64, to: u64) -> u64 {
        (from..to).filter(|&g| self.get(g)).count() as u64
    }
}

/// Export `src` (any opened disk or chain) as a new compacted monolithicSparse or
/// twoGbMaxExtentSparse disk named `dst_name` (`NAME.vmdk`: the descriptor, or the one
/// file of monolithicSparse) into `sink`, every file produced in order (see the module
/// documentation). `spec.capacity_bytes` of 0 means the source's capacity. Returns the
/// names of the files written, in order (the descriptor last).
///
/// # Errors
/// [`Error::InvalidArgument`] for another format, a bad name or capacity (a
/// monolithicSparse extent holds at most 2 TiB); read errors of the source;
/// [`Error::Io`] naming the file when the sink fails; [`Error::Corrupt`] when the source
/// changed between the passes; [`Error::Cancelled`] when `progress` cancels. Files
/// already completed in the sink are not removed.
pub fn export_sparse(
    src: &mut dyn crate::DiskSource,
    dst_name: &str,
    spec: &CreateSpec,
    sink: &mut dyn ExportSink,
    progress: &mut dyn Progress,
) -> Result<Vec<String>> {
    let capacity = match spec.capacity_bytes {
        0 => src.capacity(),
        c => c,
    };
    if capacity < src.capacity() {
        return Err(Error::InvalidArgument(format!(
            "destination capacity {capacity} is smaller than the source's {} bytes",
            src.capacity()
        )));
    }
    check_capacity(capacity)?;
    if dst_name.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "{dst_name:?}: an export names a file, not a path"
        )));
    }
    let (_, stem) = split_name(Path::new(dst_name))?;
    let (desc, extents) = plan_export(&stem, capacity, spec)?;

    let mut present = Bitmap::new(capacity.div_ceil(GRAIN))?;
    let mut first = Phase {
        inner: &mut *progress,
        second: false,
    };
    copy_data(src, &mut first, |offset, data| {
        let from = offset / GRAIN;
        let to = (offset + data.len() as u64).div_ceil(GRAIN);
        for g in from..to {
            present.set(g);
        }
        Ok(())
    })?;

    let mut out = Writer {
        sink,
        extents: &extents,
        present: &present,
        begun: None,
        next: 0,
        written: 0,
        expected: 0,
        pos: 0,
        zeros: vec![0u8; usize::try_from(GRAIN).unwrap_or(64 << 10)],
        names: Vec::new(),
    };
    let mut second = Phase {
        inner: &mut *progress,
        second: true,
    };
    copy_data(src, &mut second, |offset, data| out.grains(offset, data))?;
    out.finish()?;
    let mut names = std::mem::take(&mut out.names);
    if spec.format == DiskFormat::TwoGbSparse {
        let text = desc.to_text();
        let io = |e| Error::io(dst_name, "write", e);
        out.sink.begin(dst_name).map_err(io)?;
        out.sink.write(text.as_bytes()).map_err(io)?;
        out.sink.end().map_err(io)?;
        names.push(dst_name.to_owned());
    }
    Ok(names)
}

/// The descriptor and the extent files of an export of `capacity` bytes.
fn plan_export(stem: &str, capacity: u64, spec: &CreateSpec) -> Result<(Descriptor, Vec<Planned>)> {
    let mut d = Descriptor::new(spec.format.create_type());
    d.ddb = base_ddb(capacity, spec.adapter);
    for (k, v) in &spec.extra_ddb {
        d.set_ddb(k, v.clone());
    }
    let opts = |embedded: Option<String>| CreateSparse {
        grain_sectors: DEFAULT_GRAIN_SECTORS,
        embedded_descriptor: embedded,
        zeroed_grain_gtes: false,
    };
    let mut extents = Vec::new();
    match spec.format {
        DiskFormat::MonoSparse => {
            let file = format!("{stem}.vmdk");
            d.extents
                .push(extent(ExtentType::Sparse, capacity, file.clone()));
            let text = d.to_text();
            let header = plan(Path::new(&file), capacity, &opts(Some(text.clone())))?;
            extents.push(Planned {
                file,
                start: 0,
                size: capacity,
                header,
                embedded: Some(text),
            });
        }
        DiskFormat::TwoGbSparse => {
            let mut start = 0;
            for (i, size) in split_sizes(capacity).into_iter().enumerate() {
                let file = format!("{stem}-s{:03}.vmdk", i + 1);
                let header = plan(Path::new(&file), size, &opts(None))?;
                d.extents
                    .push(extent(ExtentType::Sparse, size, file.clone()));
                extents.push(Planned {
                    file,
                    start,
                    size,
                    header,
                    embedded: None,
                });
                start += size;
            }
        }
        ref other => {
            return Err(Error::InvalidArgument(format!(
                "a streamed export writes monosparse or 2gbsparse, not {}",
                other.name()
            )))
        }
    }
    for e in &extents {
        // Every piece but the last is a whole number of grains (2 GiB).
        if !e.start.is_multiple_of(GRAIN) {
            return Err(Error::InvalidArgument(format!(
                "{}: extent not grain aligned",
                e.file
            )));
        }
    }
    Ok((d, extents))
}

/// Progress of one of the two passes, reported as one operation of twice the capacity.
struct Phase<'a> {
    inner: &'a mut dyn Progress,
    second: bool,
}

impl Progress for Phase<'_> {
    fn start(&mut self, total_bytes: u64) {
        if !self.second {
            self.inner.start(total_bytes.saturating_mul(2));
        }
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.inner.advance(bytes)
    }
    fn warn(&mut self, w: &Warning) {
        self.inner.warn(w)
    }
    fn finish(&mut self) {
        if self.second {
            self.inner.finish();
        }
    }
}

/// The second pass: extent files in order, metadata first, then their grains.
struct Writer<'a> {
    sink: &'a mut dyn ExportSink,
    extents: &'a [Planned],
    present: &'a Bitmap,
    /// The extent whose file is begun (its metadata written).
    begun: Option<usize>,
    /// The extent to begin next.
    next: usize,
    /// Grains written into it, and how many it must get.
    written: u64,
    expected: u64,
    /// Bytes written into the current file.
    pos: u64,
    zeros: Vec<u8>,
    names: Vec<String>,
}

impl Writer<'_> {
    fn io(&self, e: std::io::Error) -> Error {
        let name = self
            .begun
            .and_then(|i| self.extents.get(i))
            .map_or("export", |e| e.file.as_str());
        Error::io(name, "write", e)
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.sink.write(data).map_err(|e| self.io(e))?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Zeros up to byte `to` of the current file.
    fn pad_to(&mut self, to: u64) -> Result<()> {
        while self.pos < to {
            let n = usize::try_from((to - self.pos).min(self.zeros.len() as u64)).unwrap_or(0);
            let zeros = std::mem::take(&mut self.zeros);
            let r = self.put(&zeros[..n]);
            self.zeros = zeros;
            r?;
        }
        Ok(())
    }

    fn changed(&self, what: &str) -> Error {
        let file = self
            .begun
            .and_then(|i| self.extents.get(i))
            .map_or("export", |e| e.file.as_str());
        Error::Corrupt {
            path: PathBuf::from(file),
            reason: format!("the source disk changed while it was exported ({what})"),
        }
    }

    /// Complete the current file, if any.
    fn end_current(&mut self) -> Result<()> {
        let Some(i) = self.begun else {
            return Ok(());
        };
        if self.written != self.expected {
            return Err(self.changed("grains with data disappeared"));
        }
        self.sink.end().map_err(|e| self.io(e))?;
        self.names.push(self.extents[i].file.clone());
        self.begun = None;
        Ok(())
    }

    /// Make extent `e` the current file, completing every one before it.
    fn reach(&mut self, e: usize) -> Result<()> {
        while self.begun.is_none_or(|i| i < e) && self.next < self.extents.len() {
            self.end_current()?;
            self.begin(self.next)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Begin extent `i`'s file and write its metadata: header, descriptor, redundant GD
    /// and GTs, GD and GTs, zeros up to the first grain.
    fn begin(&mut self, i: usize) -> Result<()> {
        let ex = &self.extents[i];
        self.sink
            .begin(&ex.file)
            .map_err(|e| Error::io(&ex.file, "create", e))?;
        self.begun = Some(i);
        self.pos = 0;
        self.written = 0;
        self.expected = self
            .present
            .count(ex.first_grain(), ex.first_grain() + ex.grains());
        let h = ex.header.clone();
        let n = h.gd_entries();
        let gd_sectors = (n * 4).div_ceil(SECTOR);
        self.put(&h.to_bytes())?;
        if let Some(d) = &ex.embedded {
            let d = d.clone();
            self.pad_to(h.descriptor_offset_sectors * SECTOR)?;
            self.put(d.as_bytes())?;
        }
        for dir in [h.rgd_offset_sectors, h.gd_offset_sectors] {
            self.pad_to(dir * SECTOR)?;
            self.put(&directory_bytes(n, dir + gd_sectors))?;
            self.pad_to((dir + gd_sectors) * SECTOR)?;
            self.tables(i, &h)?;
        }
        self.pad_to(h.overhead_sectors * SECTOR)
    }

    /// The grain tables of extent `i`: grain k with data (in order) at
    /// `overHead + k · grain`.
    fn tables(&mut self, i: usize, h: &SparseHeader) -> Result<()> {
        let ex = &self.extents[i];
        let (first, grains) = (ex.first_grain(), ex.grains());
        let per_gt = KDMV_GTES_PER_GT;
        let mut sector = h.overhead_sectors;
        let mut gt = Vec::with_capacity(usize::try_from(GT_SECTORS * SECTOR).unwrap_or(2048));
        for t in 0..h.gd_entries() {
            gt.clear();
            for local in t * per_gt..(t + 1) * per_gt {
                let entry = if local < grains && self.present.get(first + local) {
                    let here = sector;
                    sector += h.grain_sectors;
                    // `plan` keeps the whole file below 2^32 sectors.
                    u32::try_from(here).map_err(|_| {
                        Error::InvalidArgument(format!("{}: extent too large", ex.file))
                    })?
                } else {
                    0
                };
                gt.extend_from_slice(&entry.to_le_bytes());
            }
            let table = std::mem::take(&mut gt);
            let r = self.put(&table);
            gt = table;
            r?;
        }
        Ok(())
    }

    /// A grain-aligned run of non-zero data at `offset` (from the second pass).
    fn grains(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if !offset.is_multiple_of(GRAIN) {
            return Err(Error::InvalidArgument(format!(
                "export: run at {offset:#x} is not grain aligned"
            )));
        }
        let mut g = offset / GRAIN;
        let mut rest = data;
        while !rest.is_empty() {
            let e = self
                .extents
                .iter()
                .position(|x| g < x.first_grain() + x.grains())
                .ok_or_else(|| self.changed("data past the end"))?;
            self.reach(e)?;
            let ex = &self.extents[e];
            let span =
                (ex.first_grain() + ex.grains() - g).min((rest.len() as u64).div_ceil(GRAIN));
            if (g..g + span).any(|x| !self.present.get(x)) {
                return Err(self.changed("new grains with data"));
            }
            let take = usize::try_from((span * GRAIN).min(rest.len() as u64)).unwrap_or(0);
            let (now, later) = rest.split_at(take);
            self.put(now)?;
            // A short last grain (capacity not a multiple of 64 KiB) is padded.
            let grain_end = self.pos.next_multiple_of(GRAIN);
            self.pad_to(grain_end)?;
            self.written += span;
            g += span;
            rest = later;
        }
        Ok(())
    }

    /// Complete every file up to the last extent.
    fn finish(&mut self) -> Result<()> {
        let last = self.extents.len().saturating_sub(1);
        self.reach(last)?;
        self.end_current()
    }
}

#[cfg(test)]
mod tests;
