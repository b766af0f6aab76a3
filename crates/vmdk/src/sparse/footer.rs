//! Finding the grain directory of a stream file whose header says "GD at end": the
//! footer at EOF − 1536 (as qemu reads it), or else by walking the markers (layout table in
//! [`crate::stream`]).

use super::{le_u32, le_u64, len64, SparseHeader, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR};

/// Window used when scanning markers.
const SCAN_WINDOW_BYTES: u64 = 1 << 20;

/// A marker read from the start of a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    /// Compressed grain: first sector and compressed size.
    Grain { lba: u64, size: u32 },
    /// Metadata: sectors that follow and the marker type.
    Meta { sectors: u64, kind: u32 },
}

impl Marker {
    /// Decode the first 16 bytes of a sector.
    pub(crate) fn parse(b: &[u8]) -> Marker {
        let (val, size) = (le_u64(b, 0), le_u32(b, 8));
        if size == 0 {
            Marker::Meta {
                sectors: val,
                kind: le_u32(b, 12),
            }
        } else {
            Marker::Grain { lba: val, size }
        }
    }
}

fn incomplete(file: &PathFile) -> Error {
    let reason = "incomplete stream: no footer and no grain directory (the writer did not finish)";
    Error::corrupt(file.path(), reason)
}

/// For a header with gdOffset = GD_AT_END: the footer's header (with the real gdOffset),
/// read at EOF − 1536 like qemu, or else found by walking the markers from the first grain.
///
/// # Errors
/// [`Error::Corrupt`] ("incomplete stream") when neither a footer nor a grain directory
/// exists; [`Error::BadHeader`] when the footer's header is invalid.
pub(crate) fn locate_footer(
    file: &PathFile,
    header: &SparseHeader,
    file_len: u64,
) -> Result<SparseHeader> {
    if let Some(start) = file_len.checked_sub(3 * SECTOR).filter(|&s| s >= SECTOR) {
        let mut b = [0u8; 3 * HEADER_BYTES];
        file.read_exact_at(&mut b, start, "stream footer")?;
        // Like qemu, do not insist on the footer marker's sector count.
        let footer = matches!(
            Marker::parse(&b[0..16]),
            Marker::Meta {
                kind: MARKER_FOOTER,
                ..
            }
        );
        let eos = Marker::parse(&b[1024..1040])
            == Marker::Meta {
                sectors: 0,
                kind: MARKER_EOS,
            };
        if footer && eos {
            if let Ok(h) = SparseHeader::parse(&b[512..1024], file.path()) {
                if !h.gd_at_end() {
                    return agrees(file, header, h);
                }
            }
        }
    }
    let found = scan_markers(file, header, file_len)?;
    agrees(file, header, found)
}

/// The footer's copy of the header must describe the same disk as the header (only the
/// grain directory's place may differ): a footer from another file is corruption.
fn agrees(file: &PathFile, header: &SparseHeader, footer: SparseHeader) -> Result<SparseHeader> {
    let pairs = [
        ("capacity", header.capacity_sectors, footer.capacity_sectors),
        ("grainSize", header.grain_sectors, footer.grain_sectors),
        (
            "numGTEsPerGT",
            u64::from(header.num_gtes_per_gt),
            u64::from(footer.num_gtes_per_gt),
        ),
    ];
    for (field, h, f) in pairs {
        if h != f {
            let reason = format!("the footer's {field} ({f}) differs from the header's ({h})");
            return Err(Error::corrupt(file.path(), reason));
        }
    }
    Ok(footer)
}

/// Walk the markers from the first grain to the end-of-stream marker, remembering the
/// grain directory and the footer.
fn scan_markers(file: &PathFile, header: &SparseHeader, file_len: u64) -> Result<SparseHeader> {
    let first = header
        .overhead_sectors
        .max(
            header
                .descriptor_offset_sectors
                .saturating_add(header.descriptor_size_sectors),
        )
        .max(1);
    let mut pos = first.saturating_mul(SECTOR);
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = 0u64;
    let mut gd_sector = None;
    while pos.checked_add(SECTOR).is_some_and(|e| e <= file_len) {
        let inside = pos >= window_start && pos + SECTOR <= window_start + len64(window.len());
        if !inside {
            let n = SCAN_WINDOW_BYTES.min(file_len - pos);
            window.resize(usize::try_from(n).unwrap_or(0), 0);
            file.read_exact_at(&mut window, pos, "stream marker")?;
            window_start = pos;
        }
        let at = usize::try_from(pos - window_start).unwrap_or(0);
        let sector = &window[at..at + HEADER_BYTES];
        let next = match Marker::parse(sector) {
            Marker::Grain { size, .. } => pos
                .checked_add(12 + u64::from(size))
                .and_then(|e| e.checked_next_multiple_of(SECTOR)),
            Marker::Meta {
                kind: MARKER_EOS, ..
            } => break,
            Marker::Meta { sectors, kind } => {
                let data = pos + SECTOR;
                if kind == MARKER_GD {
                    gd_sector = Some(data / SECTOR);
                } else if kind == MARKER_FOOTER {
                    let mut b = [0u8; HEADER_BYTES];
                    file.read_exact_at(&mut b, data, "stream footer")?;
                    let h = SparseHeader::parse(&b, file.path())?;
                    if !h.gd_at_end() {
                        return Ok(h);
                    }
                } else if kind != MARKER_GT {
                    let reason = format!("unknown stream marker type {kind} at byte {pos:#x}");
                    return Err(Error::corrupt(file.path(), reason));
                }
                sectors
                    .checked_mul(SECTOR)
                    .and_then(|b| b.checked_add(data))
            }
        };
        match next {
            Some(n) => pos = n,
            None => break,
        }
    }
    match gd_sector {
        Some(gd) => Ok(SparseHeader {
            gd_offset_sectors: gd,
            ..header.clone()
        }),
        None => Err(incomplete(file)),
    }
}
