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
use std::ops::ControlFlow;
use std::path::Path;

/// Bytes read from the source at a time.
const COPY_CHUNK: usize = 4 << 20;
/// Granularity of zero detection: one grain.
const ZERO_BLOCK: usize = 64 << 10;

/// Convert `src` (any opened disk or chain) into a new disk at `dst` per `spec`.
/// `spec.capacity_bytes` of 0 means "the source's capacity"; a larger one grows the disk.
/// On error or cancellation every file created at `dst` is removed.
pub fn convert(src: &mut Disk, dst: &Path, spec: &CreateSpec, progress: &mut dyn Progress) -> Result<()> {
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

fn convert_into_new(src: &mut Disk, dst: &Path, progress: &mut dyn Progress) -> Result<()> {
    let mut out = Disk::open(dst, &OpenOptions::writable())?;
    if out.capacity() < src.capacity() {
        return Err(Error::InvalidArgument(format!(
            "{}: device is smaller ({} bytes) than the source ({} bytes)",
            dst.display(),
            out.capacity(),
            src.capacity()
        )));
    }
    copy_data(src, progress, |offset, data| out.write_at(offset, data))?;
    out.close()
}

fn convert_to_stream(src: &mut Disk, dst: &Path, spec: &CreateSpec, progress: &mut dyn Progress) -> Result<()> {
    let (_, name) = crate::create::split_name(dst)?;
    let mut d = crate::descriptor::Descriptor::new(crate::descriptor::CreateType::StreamOptimized);
    d.ddb = vec![
        ("ddb.virtualHWVersion".into(), "4".into()),
        ("ddb.adapterType".into(), spec.adapter.as_str().into()),
        ("ddb.longContentID".into(), crate::descriptor::random_long_content_id()),
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

/// Walk `src`, calling `write(offset, bytes)` for every grain-aligned run of non-zero data,
/// in increasing offset order.
pub(crate) fn copy_data(
    src: &mut Disk,
    progress: &mut dyn Progress,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let capacity = src.capacity();
    progress.start(capacity);
    let mut buf = vec![0u8; COPY_CHUNK];
    let grain = ZERO_BLOCK as u64;
    let mut pos = 0u64;
    while pos < capacity {
        let run = src.map(pos, COPY_CHUNK as u64)?;
        let next = if run.state == BlockState::Data {
            // Widen to whole grains so zero detection and stream grains line up; a grain
            // is read once even when several runs start inside it.
            let start = pos - pos % grain;
            let end = (pos + run.len).div_ceil(grain).saturating_mul(grain).min(capacity).min(start + COPY_CHUNK as u64);
            let piece = &mut buf[..usize::try_from(end - start).unwrap_or(COPY_CHUNK)];
            src.read_at(start, piece)?;
            write_nonzero(start, piece, &mut write)?;
            end
        } else {
            pos + run.len
        };
        if progress.advance(next - pos) == ControlFlow::Break(()) {
            return Err(Error::Cancelled);
        }
        pos = next;
    }
    progress.finish();
    Ok(())
}

/// Call `write` for each maximal run of non-zero `ZERO_BLOCK`s in `data` (aligned to
/// absolute grain boundaries).
fn write_nonzero(offset: u64, data: &[u8], write: &mut impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
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
