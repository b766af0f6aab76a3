//! NTFS compressed files: LZNT1 and compression units.
//!
//! A compressed attribute is stored in compression units of 16 clusters: a unit whose
//! clusters are all sparse reads as zeros, one whose 16 clusters are all allocated is
//! stored plainly, and one with fewer allocated clusters holds LZNT1 chunks that expand
//! to the unit's bytes. The `ntfs` crate does not decode these; this module does, from the
//! attribute's data runs.

use crate::device::Device;
use crate::runs::Run;
use crate::{Error, Result};

/// Clusters per compression unit (NTFS always uses 2^4).
pub const UNIT_CLUSTERS: u64 = 16;
const CHUNK: usize = 4096;

/// Expand LZNT1 `input` into at most `limit` bytes.
///
/// # Errors
/// [`Error::Corrupt`] for a back-reference before the start of its chunk or a chunk that
/// runs past the input.
pub fn decompress(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    let bad = |why: String| Error::corrupt("NTFS compressed data", why);
    let mut out = Vec::with_capacity(limit);
    let mut pos = 0usize;
    while pos + 2 <= input.len() && out.len() < limit {
        let header = u16::from_le_bytes([input[pos], input[pos + 1]]);
        if header == 0 {
            break;
        }
        let size = usize::from(header & 0x0FFF) + 1;
        let data = input
            .get(pos + 2..pos + 2 + size)
            .ok_or_else(|| bad(format!("chunk of {size} bytes at {pos} runs past the unit")))?;
        pos += 2 + size;
        if header & 0x8000 == 0 {
            out.extend_from_slice(&data[..size.min(CHUNK)]);
            continue;
        }
        let start = out.len();
        let mut i = 0usize;
        while i < data.len() {
            let flags = data[i];
            i += 1;
            for bit in 0..8 {
                if i >= data.len() || out.len() - start >= CHUNK {
                    break;
                }
                if flags & (1 << bit) == 0 {
                    out.push(data[i]);
                    i += 1;
                    continue;
                }
                let token = u16::from_le_bytes([
                    data[i],
                    *data
                        .get(i + 1)
                        .ok_or_else(|| bad("token cut short".into()))?,
                ]);
                i += 2;
                let at = out.len() - start;
                let (mut len_mask, mut shift) = (0x0FFFu16, 12u32);
                let mut p = at.saturating_sub(1);
                while p >= 0x10 {
                    len_mask >>= 1;
                    shift -= 1;
                    p >>= 1;
                }
                let len = usize::from(token & len_mask) + 3;
                let back = usize::from(token >> shift) + 1;
                if back > at {
                    return Err(bad(format!(
                        "back-reference of {back} bytes at chunk offset {at}"
                    )));
                }
                for _ in 0..len {
                    if out.len() - start >= CHUNK {
                        break;
                    }
                    out.push(out[out.len() - back]);
                }
            }
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// Read `buf` at `offset` of a compressed attribute of `size` bytes whose data runs are
/// `clusters` (sorted; `physical: None` for sparse runs).
pub fn read(
    dev: &dyn Device,
    clusters: &[Run],
    cluster: u64,
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize> {
    if offset >= size {
        return Ok(0);
    }
    let want = (buf.len() as u64).min(size - offset) as usize;
    let unit_bytes = UNIT_CLUSTERS * cluster;
    let mut done = 0usize;
    while done < want {
        let pos = offset + done as u64;
        let unit = pos / unit_bytes;
        let data = unit_bytes_of(dev, clusters, cluster, unit)?;
        let within = (pos % unit_bytes) as usize;
        let n = (want - done).min(unit_bytes as usize - within);
        let dst = &mut buf[done..done + n];
        match data.get(within..) {
            Some(src) => {
                let k = src.len().min(n);
                dst[..k].copy_from_slice(&src[..k]);
                dst[k..].fill(0);
            }
            None => dst.fill(0),
        }
        done += n;
    }
    Ok(want)
}

/// The expanded bytes of compression unit `unit`.
fn unit_bytes_of(dev: &dyn Device, clusters: &[Run], cluster: u64, unit: u64) -> Result<Vec<u8>> {
    let first = unit * UNIT_CLUSTERS * cluster;
    let lcns: Vec<Option<u64>> = (0..UNIT_CLUSTERS)
        .map(|k| {
            let at = first + k * cluster;
            let i = clusters.partition_point(|r| r.logical + r.len <= at);
            clusters
                .get(i)
                .filter(|r| r.logical <= at)
                .and_then(|r| r.physical.map(|p| p + (at - r.logical)))
        })
        .collect();
    let allocated = lcns.iter().take_while(|c| c.is_some()).count();
    if allocated == 0 {
        return Ok(Vec::new());
    }
    let mut raw = vec![0u8; allocated * cluster as usize];
    for (k, pos) in lcns.iter().take(allocated).enumerate() {
        if let Some(p) = pos {
            dev.read_at(
                *p,
                &mut raw[k * cluster as usize..(k + 1) * cluster as usize],
            )?;
        }
    }
    if allocated as u64 == UNIT_CLUSTERS {
        return Ok(raw);
    }
    decompress(&raw, (UNIT_CLUSTERS * cluster) as usize)
}

#[cfg(test)]
mod tests {
    use super::decompress;

    #[test]
    fn a_literal_chunk_and_a_back_reference_expand() {
        // "abcabcabc": literals a, b, c then a token copying 6 bytes from 3 back.
        let token: u16 = ((3 - 1) << 12) | (6 - 3);
        let mut chunk = vec![0b0000_1000u8, b'a', b'b', b'c'];
        chunk.extend_from_slice(&token.to_le_bytes());
        let header: u16 = 0xB000 | (chunk.len() as u16 - 1);
        let mut input = header.to_le_bytes().to_vec();
        input.extend(chunk);
        assert_eq!(decompress(&input, 100).unwrap(), b"abcabcabc");
    }

    #[test]
    fn hostile_chunks_are_errors() {
        assert!(decompress(&[0xFF, 0xBF, 0x01], 4096).is_err());
        // A back-reference before the chunk's start.
        let input = [0x03, 0xB0, 0x01, 0x00, 0x10];
        assert!(decompress(&input, 4096).is_err());
    }
}
