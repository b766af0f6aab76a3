//! Sparse-aware conversion of any disk or chain into any format.
//!
//! Only ranges the source chain holds as data are read; within them, all-zero grains are
//! not written, so thin and sparse destinations stay as small as the data. The copy runs in
//! 4 MiB pieces, reporting progress for every piece, skipped ranges included.

use crate::create::{create, CreateSpec, DiskFormat};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::extent::BlockState;
use crate::fileio::is_zero;
use crate::link::OpenOptions;
use crate::progress::Progress;
use crate::source::DiskSource;
use std::ops::ControlFlow;
use std::path::Path;

/// Bytes read from the source at a time.
const COPY_CHUNK: usize = 4 << 20;
/// Granularity of zero detection: one grain.
const ZERO_BLOCK: usize = 64 << 10;

/// Convert `src` (any opened disk or chain) into a new disk at `dst` per `spec`.
/// `spec.capacity_bytes` of 0 means "the source's capacity"; a larger one grows the disk.
/// On error or cancellation every file created at `dst` is removed.
pub fn convert(
    src: &mut dyn DiskSource,
    dst: &Path,
    spec: &CreateSpec,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut spec = spec.clone();
    if spec.capacity_bytes == 0 {
        spec.capacity_bytes = src.capacity();
    }
    if spec.format.device().is_none() && spec.capacity_bytes < src.capacity() {
        return Err(Error::InvalidArgument(format!(
            "destination capacity {} is smaller than the source's {} bytes",
            spec.capacity_bytes,
            src.capacity()
        )));
    }
    let result = if spec.format == DiskFormat::StreamOptimized {
        convert_to_stream(src, dst, &spec, progress)
    } else {
        create(dst, &spec).and_then(|()| convert_into_new(src, dst, progress))
    };
    if result.is_err() && !matches!(result, Err(Error::AlreadyExists { .. })) {
        // Created by us moments ago: remove whatever exists of it.
        let _ = crate::ops::delete(dst);
    }
    result
}

fn convert_into_new(
    src: &mut dyn DiskSource,
    dst: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut out = Disk::open(dst, &OpenOptions::writable())?;
    if out.capacity() < src.capacity() {
        return Err(Error::InvalidArgument(format!(
            "{}: device is smaller ({} bytes) than the source ({} bytes)",
            dst.display(),
            out.capacity(),
            src.capacity()
        )));
    }
    let mut writeback = Writeback::of(dst);
    copy_data(src, progress, |offset, data| {
        out.write_at(offset, data)?;
        writeback.wrote(data.len());
        Ok(())
    })?;
    out.close()
}

/// Bytes written between two writeback starts.
const WRITEBACK_EVERY: usize = 32 << 20;

/// Starts the kernel writing a new disk's data while the copy goes on
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)` every [`WRITEBACK_EVERY`] bytes), so the
/// final fsync waits for the tail only instead of the whole disk: on a disk writing
/// 475 MB/s that is most of a 2 GiB restore's time.
struct Writeback {
    files: Vec<std::fs::File>,
    pending: usize,
}

impl Writeback {
    fn of(dst: &Path) -> Writeback {
        let files = crate::ops::link_files(dst)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| std::fs::File::open(f).ok())
            .collect();
        Writeback { files, pending: 0 }
    }

    fn wrote(&mut self, bytes: usize) {
        self.pending += bytes;
        if self.pending < WRITEBACK_EVERY {
            return;
        }
        self.pending = 0;
        for f in &self.files {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; the call only schedules writeback, and a
            // failure is harmless (close() fsyncs everything).
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }
}

fn convert_to_stream(
    src: &mut dyn DiskSource,
    dst: &Path,
    spec: &CreateSpec,
    progress: &mut dyn Progress,
) -> Result<()> {
    let (_, name) = crate::create::split_name(dst)?;
    let mut d = crate::descriptor::Descriptor::new(crate::descriptor::CreateType::StreamOptimized);
    d.ddb = vec![
        ("ddb.virtualHWVersion".into(), "4".into()),
        ("ddb.adapterType".into(), spec.adapter.as_str().into()),
        (
            "ddb.longContentID".into(),
            crate::descriptor::random_long_content_id(),
        ),
    ];
    d.extents.push(crate::descriptor::ExtentLine {
        access: crate::descriptor::Access::Rw,
        sectors: spec.capacity_bytes / 512,
        kind: crate::descriptor::ExtentType::Sparse,
        file: Some(format!("{name}.vmdk")),
        offset_sectors: 0,
    });
    let mut w = crate::stream::StreamWriter::create(dst, spec.capacity_bytes, &d.to_text())?;
    copy_data(src, progress, |offset, data| {
        // Non-zero runs arrive grain aligned; hand them over one grain at a time.
        for (i, grain) in data.chunks(ZERO_BLOCK).enumerate() {
            w.write_grain(offset + (i * ZERO_BLOCK) as u64, grain)?;
        }
        Ok(())
    })?;
    w.finish()
}

/// Buffers in flight between the reader thread and the writer: bounds memory to
/// `PIPELINE_DEPTH × COPY_CHUNK` while letting reads and writes overlap.
const PIPELINE_DEPTH: usize = 3;

/// What the reader thread hands to the writer: a range that needs no writing (`data` None)
/// or one read from the source.
struct Piece {
    /// Where `data` starts (grain aligned, at or before the reader's position).
    offset: u64,
    /// Bytes of progress: from the reader's position to the end of this piece.
    len: u64,
    data: Option<Vec<u8>>,
}

/// Walk `src`, calling `write(offset, bytes)` for every grain-aligned run of non-zero data,
/// in increasing offset order. Reading runs on a second thread so that reading the source
/// and writing the destination overlap (as qemu-img's parallel requests do).
pub(crate) fn copy_data(
    src: &mut dyn DiskSource,
    progress: &mut dyn Progress,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let capacity = src.capacity();
    progress.start(capacity);
    let (to_writer, from_reader) = std::sync::mpsc::sync_channel::<Result<Piece>>(PIPELINE_DEPTH);
    let (recycle, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        scope.spawn(move || read_pieces(src, &to_writer, &spare));
        for piece in from_reader {
            let piece = piece?;
            if let Some(data) = piece.data {
                write_nonzero(piece.offset, &data, &mut write)?;
                let _ = recycle.send(data);
            }
            if progress.advance(piece.len) == ControlFlow::Break(()) {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    })?;
    progress.finish();
    Ok(())
}

/// The reader side of [`copy_data`]: stops at the first error or when the writer hangs up.
fn read_pieces(
    src: &mut dyn DiskSource,
    out: &std::sync::mpsc::SyncSender<Result<Piece>>,
    spare: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let capacity = src.capacity();
    let grain = ZERO_BLOCK as u64;
    let mut allocated = 0usize;
    let mut pos = 0u64;
    while pos < capacity {
        let piece = (|| {
            let run = src.map(pos, COPY_CHUNK as u64)?;
            if run.state != BlockState::Data {
                return Ok(Piece {
                    offset: pos,
                    len: run.len,
                    data: None,
                });
            }
            // Widen to whole grains so zero detection and stream grains line up; a grain
            // is read once even when several runs start inside it.
            let start = pos - pos % grain;
            let end = (pos + run.len)
                .div_ceil(grain)
                .saturating_mul(grain)
                .min(capacity)
                .min(start + COPY_CHUNK as u64);
            let mut buf = match spare.try_recv() {
                Ok(b) => b,
                // At most PIPELINE_DEPTH + 2 buffers ever exist: the channel's, one being
                // written, one being read.
                Err(_) if allocated <= PIPELINE_DEPTH + 2 => {
                    allocated += 1;
                    vec![0u8; COPY_CHUNK]
                }
                Err(_) => spare.recv().map_err(|_| Error::Cancelled)?,
            };
            buf.resize(usize::try_from(end - start).unwrap_or(COPY_CHUNK), 0);
            src.read_at(start, &mut buf)?;
            Ok(Piece {
                offset: start,
                len: end - pos,
                data: Some(buf),
            })
        })();
        // `len` counts from `pos` (progress); `offset` may lie before it (grain alignment).
        let next = match &piece {
            Ok(p) => pos + p.len,
            Err(_) => capacity,
        };
        let stop = piece.is_err();
        if out.send(piece).is_err() || stop {
            return;
        }
        pos = next;
    }
}

/// Call `write` for each maximal run of non-zero `ZERO_BLOCK`s in `data` (aligned to
/// absolute grain boundaries).
fn write_nonzero(
    offset: u64,
    data: &[u8],
    write: &mut impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut i = 0usize;
    let mut run_start: Option<usize> = None;
    while i < data.len() {
        let abs = offset + i as u64;
        let to_boundary = ZERO_BLOCK - (abs % ZERO_BLOCK as u64) as usize;
        let end = (i + to_boundary).min(data.len());
        let zero = is_zero(&data[i..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(s)) => {
                write(offset + s as u64, &data[s..i])?;
                run_start = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run_start {
        write(offset + s as u64, &data[s..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_runs_are_grain_aligned() {
        let mut data = vec![0u8; 5 * ZERO_BLOCK];
        data[ZERO_BLOCK + 3] = 1;
        data[2 * ZERO_BLOCK] = 1;
        data[4 * ZERO_BLOCK + 7] = 1;
        let mut seen = Vec::new();
        write_nonzero(0, &data, &mut |o, d| {
            seen.push((o, d.len()));
            Ok(())
        })
        .unwrap();
        let g = ZERO_BLOCK as u64;
        assert_eq!(seen, vec![(g, 2 * ZERO_BLOCK), (4 * g, ZERO_BLOCK)]);
    }

    #[test]
    fn unaligned_start_is_split_at_the_grain_boundary() {
        let data = vec![1u8; ZERO_BLOCK];
        let mut seen = Vec::new();
        write_nonzero(512, &data, &mut |o, d| {
            seen.push((o, d.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(512, ZERO_BLOCK)]);
    }
}
