//! streamOptimized: markers, locating the footer, and the [`StreamWriter`].
//!
//! Source: VMware Virtual Disk Format 1.1 §"Stream-Optimized Compressed Sparse Extents";
//! fact sheet `vmdk.md` §2. Reading goes through [`crate::sparse::SparseExtent`]; this
//! module finds the grain directory of a stream file and writes new ones.
//!
//! # Markers (little-endian, each starts a sector)
//!
//! | off | size | type | grain marker | metadata marker |
//! |---|---|---|---|---|
//! | 0 | 8 | u64 | `lba`: first sector of the grain | `numSectors` of metadata that follow |
//! | 8 | 4 | u32 | `size`: compressed bytes (> 0) | 0 |
//! | 12 | 4 / size | u32 / bytes | zlib (RFC 1950) stream, padded to a sector | `type`: 0 EOS, 1 GT, 2 GD, 3 footer; then 496 zero bytes |
//!
//! # Layout written by [`StreamWriter`]
//! header (version 3, flags 0x30001, compressAlgorithm 1, gdOffset = `GD_AT_END`) ·
//! descriptor (sectors 1..=20) · grains from sector 128 in LBA order, each a grain marker
//! plus zlib data · after each 512-grain group that holds grains: GT marker + GT (4 sectors)
//! · GD marker + GD · footer marker + footer (the header with the real gdOffset) · EOS
//! marker. Readers find the footer at EOF − 1536 (qemu does exactly that).
//!
//! Why the GD goes at the end: the writer never seeks back, so a stream file can be
//! produced in one pass with memory bounded by one grain table plus the directory.

use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{
    DEFAULT_GRAIN_SECTORS, EMBEDDED_DESCRIPTOR_SECTORS, KDMV_FLAG_COMPRESSED, KDMV_FLAG_MARKERS,
    KDMV_FLAG_NEWLINE_VALID, KDMV_GD_AT_END, KDMV_GTES_PER_GT, KDMV_NEWLINE_TEST, MARKER_EOS,
    MARKER_FOOTER, MARKER_GD, MARKER_GT, MAX_CAPACITY_BYTES, SECTOR,
};
use crate::sparse::{SparseHeader, GT_SECTORS, HEADER_BYTES};
use flate2::{Compress, Compression, FlushCompress, Status};
use fsio::sync_dir;
use std::path::Path;

/// Bytes of output gathered before one pwrite.
const WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Sector of the first grain in files we write (one 64 KiB grain of metadata, as VMware).
const STREAM_OVERHEAD_SECTORS: u64 = 128;
/// Entries per GT, as usize and as the header's u32.
const GTES: usize = 512;
const GTES_PER_GT_U32: u32 = 512;
const _: () = assert!(GTES as u64 == KDMV_GTES_PER_GT);

fn meta_marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// Append the complete zlib stream of `input` to `out`.
fn deflate_into(
    c: &mut Compress,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), flate2::CompressError> {
    c.reset();
    loop {
        // Room for the worst case (stored blocks: 5 bytes per 64 KiB, plus the wrapper).
        out.reserve(input.len() / 64 + 256);
        let consumed = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
        let rest = input.get(consumed..).unwrap_or(&[]);
        if c.compress_vec(rest, out, FlushCompress::Finish)? == Status::StreamEnd {
            return Ok(());
        }
    }
}

/// Writes a streamOptimized extent in one pass (see the module documentation).
pub struct StreamWriter {
    file: PathFile,
    header: SparseHeader,
    capacity_bytes: u64,
    grain_bytes: u64,
    /// Output not yet written, starting at file offset `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Lowest grain index accepted next.
    next_grain: u64,
    /// The grain table being filled and its directory index.
    gt_index: Option<u64>,
    gt: Vec<u32>,
    gd: Vec<u32>,
    /// Level 1 (fast) compressor, and a level 0 one for incompressible grains.
    deflate: Compress,
    store: Compress,
    /// Holds a short grain padded with zeros.
    pad: Vec<u8>,
}

impl StreamWriter {
    /// Create the stream file `path` (which must not exist) for a disk of `capacity_bytes`
    /// (a multiple of 512), embedding `descriptor` at sector 1.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`]; [`Error::InvalidArgument`] for a bad capacity or a
    /// descriptor longer than the 10 KiB reserved (10239 bytes plus a NUL); [`Error::Io`].
    pub fn create(path: &Path, capacity_bytes: u64, descriptor: &str) -> Result<Self> {
        if !capacity_bytes.is_multiple_of(SECTOR) || capacity_bytes > MAX_CAPACITY_BYTES {
            let msg = format!(
                "{}: capacity {capacity_bytes} is not a multiple of 512 up to 64 TiB",
                path.display()
            );
            return Err(Error::InvalidArgument(msg));
        }
        let desc_bytes = usize::try_from(EMBEDDED_DESCRIPTOR_SECTORS * SECTOR).unwrap_or(0);
        if descriptor.len() >= desc_bytes || descriptor.contains('\0') {
            let msg = format!(
                "{}: descriptor of {} bytes does not fit the {desc_bytes} bytes reserved (or holds a NUL)",
                path.display(),
                descriptor.len()
            );
            return Err(Error::InvalidArgument(msg));
        }
        let header = SparseHeader {
            version: 3,
            flags: KDMV_FLAG_NEWLINE_VALID | KDMV_FLAG_COMPRESSED | KDMV_FLAG_MARKERS,
            capacity_sectors: capacity_bytes / SECTOR,
            grain_sectors: DEFAULT_GRAIN_SECTORS,
            descriptor_offset_sectors: 1,
            descriptor_size_sectors: EMBEDDED_DESCRIPTOR_SECTORS,
            num_gtes_per_gt: GTES_PER_GT_U32,
            rgd_offset_sectors: 0,
            gd_offset_sectors: KDMV_GD_AT_END,
            overhead_sectors: STREAM_OVERHEAD_SECTORS,
            unclean_shutdown: false,
            newline_test: KDMV_NEWLINE_TEST,
            compress_algorithm: 1,
        };
        let gd_len = usize::try_from(header.gd_entries())
            .map_err(|_| Error::InvalidArgument("capacity".into()))?;
        let file = PathFile::create_new(path)?;
        let mut buf = Vec::with_capacity(WRITE_BUFFER_BYTES + (256 << 10));
        buf.extend_from_slice(&header.to_bytes());
        buf.extend_from_slice(descriptor.as_bytes());
        buf.resize(
            usize::try_from(STREAM_OVERHEAD_SECTORS * SECTOR).unwrap_or(0),
            0,
        );
        // The header goes out at once: an unfinished file still identifies itself (and is
        // refused as an incomplete stream rather than as garbage).
        file.write_all_at(&buf, 0)?;
        let buf_start = crate::sparse::len64(buf.len());
        buf.clear();
        Ok(StreamWriter {
            file,
            grain_bytes: header.grain_bytes(),
            header,
            capacity_bytes,
            buf,
            buf_start,
            next_grain: 0,
            gt_index: None,
            gt: vec![0; GTES],
            gd: vec![0; gd_len],
            deflate: Compress::new(Compression::fast(), true),
            store: Compress::new(Compression::none(), true),
            pad: Vec::new(),
        })
    }

    fn pos(&self) -> u64 {
        self.buf_start + crate::sparse::len64(self.buf.len())
    }

    fn pos_sector_u32(&self) -> Result<u32> {
        u32::try_from(self.pos() / SECTOR).map_err(|_| {
            Error::unsupported(
                self.file.path(),
                "stream file larger than 2 TiB of compressed data",
            )
        })
    }

    fn spill(&mut self, force: bool) -> Result<()> {
        if force || self.buf.len() >= WRITE_BUFFER_BYTES {
            self.file.write_all_at(&self.buf, self.buf_start)?;
            self.buf_start = self.pos();
            self.buf.clear();
        }
        Ok(())
    }

    fn pad_to_sector(&mut self) {
        let len = self.buf.len().next_multiple_of(HEADER_BYTES);
        self.buf.resize(len, 0);
    }

    /// Compress and append the grain at `offset_bytes` (grain aligned, strictly increasing
    /// from call to call). `data` is at most one grain (64 KiB); a shorter slice is padded
    /// with zeros up to the grain's end (or the disk's end for the last, partial grain).
    /// Callers skip all-zero grains: grains never written read as zero.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unaligned, out-of-order or oversized grain,
    /// [`Error::OutOfRange`] past the capacity, [`Error::Io`].
    pub fn write_grain(&mut self, offset_bytes: u64, data: &[u8]) -> Result<()> {
        let gb = self.grain_bytes;
        let grain = offset_bytes / gb;
        let full = self.capacity_bytes.saturating_sub(offset_bytes).min(gb);
        let len = crate::sparse::len64(data.len());
        if offset_bytes >= self.capacity_bytes || len > full {
            let (path, capacity) = (self.file.path().to_path_buf(), self.capacity_bytes);
            return Err(Error::OutOfRange {
                path,
                offset: offset_bytes,
                len,
                capacity,
            });
        }
        if !offset_bytes.is_multiple_of(gb) || grain < self.next_grain {
            let msg = format!(
                "{}: grain at byte {offset_bytes} is not grain aligned or not after the previous one",
                self.file.path().display()
            );
            return Err(Error::InvalidArgument(msg));
        }
        let (gt, idx) = (
            grain / KDMV_GTES_PER_GT,
            usize::try_from(grain % KDMV_GTES_PER_GT).unwrap_or(0),
        );
        if self.gt_index != Some(gt) {
            self.close_gt()?;
            self.gt_index = Some(gt);
        }
        let sector = self.pos_sector_u32()?;
        let full = usize::try_from(full).unwrap_or(0);
        let mut pad = std::mem::take(&mut self.pad);
        let input = if data.len() == full {
            data
        } else {
            pad.clear();
            pad.extend_from_slice(data);
            pad.resize(full, 0);
            &pad[..]
        };
        let compressed = self.compress_grain(offset_bytes / SECTOR, input);
        self.pad = pad;
        compressed?;
        self.gt[idx] = sector;
        self.next_grain = grain + 1;
        self.spill(false)
    }

    /// Append grain marker + zlib stream of `input`, padded to a sector. Incompressible
    /// grains (level 1 output larger than the input, e.g. encrypted data) are stored
    /// instead: still a zlib stream, 16 bytes over a 64 KiB input.
    fn compress_grain(&mut self, lba: u64, input: &[u8]) -> Result<()> {
        let marker_at = self.buf.len();
        self.buf.extend_from_slice(&lba.to_le_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        let data_at = self.buf.len();
        let mut done = deflate_into(&mut self.deflate, input, &mut self.buf);
        if done.is_ok() && self.buf.len() - data_at > input.len() {
            self.buf.truncate(data_at);
            done = deflate_into(&mut self.store, input, &mut self.buf);
        }
        if let Err(e) = done {
            let reason = format!("zlib compression failed: {e}");
            return Err(Error::unsupported(self.file.path(), reason));
        }
        let size = u32::try_from(self.buf.len() - data_at).unwrap_or(u32::MAX);
        self.buf[marker_at + 8..marker_at + 12].copy_from_slice(&size.to_le_bytes());
        self.pad_to_sector();
        Ok(())
    }

    /// Write the current grain table (GT marker + GT) if it holds grains.
    fn close_gt(&mut self) -> Result<()> {
        let Some(gt) = self.gt_index.take() else {
            return Ok(());
        };
        if self.gt.iter().all(|&e| e == 0) {
            return Ok(());
        }
        self.buf
            .extend_from_slice(&meta_marker(GT_SECTORS, MARKER_GT));
        let table_sector = self.pos_sector_u32()?;
        self.buf
            .extend(self.gt.iter().flat_map(|e| e.to_le_bytes()));
        self.gt.fill(0);
        if let Some(slot) = usize::try_from(gt).ok().and_then(|g| self.gd.get_mut(g)) {
            *slot = table_sector;
        }
        self.spill(false)
    }

    /// Write the last grain table, the grain directory, the footer and the end-of-stream
    /// marker, then fsync the file and its folder.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Unsupported`] when the output passes 2 TiB.
    pub fn finish(mut self) -> Result<()> {
        self.close_gt()?;
        let gd_bytes = crate::sparse::len64(self.gd.len()) * 4;
        let gd_sectors = gd_bytes.div_ceil(SECTOR);
        self.buf
            .extend_from_slice(&meta_marker(gd_sectors, MARKER_GD));
        let gd_offset = self.pos() / SECTOR;
        self.buf
            .extend(self.gd.iter().flat_map(|e| e.to_le_bytes()));
        self.pad_to_sector();
        self.buf.extend_from_slice(&meta_marker(1, MARKER_FOOTER));
        let footer = SparseHeader {
            gd_offset_sectors: gd_offset,
            ..self.header.clone()
        };
        self.buf.extend_from_slice(&footer.to_bytes());
        self.buf.extend_from_slice(&meta_marker(0, MARKER_EOS));
        self.spill(true)?;
        self.file.sync_all()?;
        let dir = self
            .file
            .path()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(sync_dir(dir)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::{BlockState, Extent};
    use crate::sparse::SparseExtent;

    const GRAIN: usize = 64 << 10;

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8))
            .collect()
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.vmdk");
        // 40 MiB + 1 KiB: two grain tables, last grain partial.
        let cap = (40u64 << 20) + 1024;
        let mut w = StreamWriter::create(&path, cap, "# Disk DescriptorFile\n").unwrap();
        let mut model = vec![0u8; cap as usize];
        let grains = [0u64, 1, 7, 511, 512, 600, 639];
        for &g in &grains {
            let off = g * GRAIN as u64;
            let data = pattern(g as u8, GRAIN);
            model[off as usize..off as usize + GRAIN].copy_from_slice(&data);
            w.write_grain(off, &data).unwrap();
        }
        let last = cap - 1024;
        let tail = pattern(9, 1024);
        model[last as usize..].copy_from_slice(&tail);
        w.write_grain(last, &tail).unwrap();
        w.finish().unwrap();

        let mut e = SparseExtent::open(&path, cap, false).unwrap();
        let mut back = vec![0u8; cap as usize];
        e.read_at(0, &mut back).unwrap();
        assert!(back == model);
        assert_eq!(e.map(0, cap).unwrap(), (BlockState::Data, 2 * GRAIN as u64));
        assert_eq!(
            e.map(2 * GRAIN as u64, cap).unwrap().0,
            BlockState::Unallocated
        );
        let mut w = [0u8; 100];
        e.read_at(7 * GRAIN as u64 + 5, &mut w).unwrap();
        assert_eq!(&w[..], &model[7 * GRAIN + 5..7 * GRAIN + 105]);
        let err = e
            .write_at(0, &[1], &mut crate::extent::ZeroBacking)
            .unwrap_err();
        assert!(matches!(err, Error::ReadOnly { .. }));
    }

    #[test]
    fn incompressible_grain_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.vmdk");
        let random = crate::sparse::tests::pattern(5, GRAIN);
        let mut w = StreamWriter::create(&path, 1 << 20, "x").unwrap();
        w.write_grain(0, &random).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let first = (STREAM_OVERHEAD_SECTORS * SECTOR) as usize;
        assert_eq!(
            u64::from_le_bytes(bytes[first..first + 8].try_into().unwrap()),
            0,
            "lba"
        );
        let size = u32::from_le_bytes(bytes[first + 8..first + 12].try_into().unwrap());
        assert!(size as usize <= GRAIN + 16, "stored, not expanded: {size}");
        let mut e = SparseExtent::open(&path, 1 << 20, false).unwrap();
        let mut b = vec![0u8; GRAIN];
        e.read_at(0, &mut b).unwrap();
        assert!(b == random);
    }

    #[test]
    fn refuses_bad_order_and_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.vmdk");
        let mut w = StreamWriter::create(&path, 1 << 20, "x").unwrap();
        w.write_grain(GRAIN as u64, &[1; 10]).unwrap();
        assert!(matches!(
            w.write_grain(0, &[1; 10]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            w.write_grain(GRAIN as u64 * 2 + 1, &[1]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            w.write_grain(1 << 20, &[1]),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            w.write_grain(GRAIN as u64 * 3, &[1; GRAIN + 1]),
            Err(Error::OutOfRange { .. })
        ));
        drop(w);
        assert!(matches!(
            StreamWriter::create(&path, 1 << 20, "x"),
            Err(Error::AlreadyExists { .. })
        ));
        let long = "x".repeat(10240);
        let other = dir.path().join("t.vmdk");
        assert!(matches!(
            StreamWriter::create(&other, 1 << 20, &long),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn unfinished_stream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.vmdk");
        let mut w = StreamWriter::create(&path, 64 << 20, "x").unwrap();
        for g in 0..80u64 {
            w.write_grain(g * GRAIN as u64, &crate::sparse::tests::pattern(g, GRAIN))
                .unwrap();
        }
        drop(w); // Header and some grains on disk, no GD, no footer.
        let err = SparseExtent::open(&path, 64 << 20, false).err().unwrap();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("incomplete stream"), "{err}");
        assert!(err.to_string().contains("s.vmdk"), "{err}");
    }

    #[test]
    fn footer_found_by_scanning_when_not_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.vmdk");
        let mut w = StreamWriter::create(&path, 4 << 20, "x").unwrap();
        w.write_grain(0, &pattern(3, GRAIN)).unwrap();
        w.finish().unwrap();
        // Trailing padding (e.g. a tar block) hides the footer from the EOF − 1536 probe.
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.set_len(f.metadata().unwrap().len() + 4096).unwrap();
        let mut e = SparseExtent::open(&path, 4 << 20, false).unwrap();
        let mut b = vec![0u8; GRAIN];
        e.read_at(0, &mut b).unwrap();
        assert_eq!(b, pattern(3, GRAIN));
    }
}
