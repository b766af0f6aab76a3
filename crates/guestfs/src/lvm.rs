//! LVM2: physical volume labels, the text metadata, and linear and striped logical volumes
//! mapped onto their physical volumes.
//!
//! No crate reads LVM2 metadata; this one follows the on-disk format of lvm2's
//! `lib/format_text` (label in one of the first four sectors, `pv_header`, metadata area
//! header, text metadata in a ring buffer). Logical volumes are read through the mapping,
//! never activated: this host has no device-mapper, and the guest's metadata is untrusted.

use crate::device::{check_range, le, read_vec, Device};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

mod text;
pub use text::{parse, Value};

const SECTOR: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b"\x20LVM2\x20x[5A%r0N*>";

/// A physical volume found on a device.
#[derive(Clone)]
pub struct PhysicalVolume {
    /// Its UUID as the label holds it (32 characters, no dashes).
    pub uuid: String,
    /// The device holding it.
    pub dev: Arc<dyn Device>,
    /// The volume group metadata it carries (text), if it has a metadata area.
    pub metadata: Option<String>,
}

/// Look for an LVM2 label on `dev`.
///
/// # Errors
/// Read errors; [`Error::Corrupt`] for a label whose structures make no sense.
pub fn probe(dev: Arc<dyn Device>) -> Result<Option<PhysicalVolume>> {
    for sector in 0..4u64 {
        if (sector + 1) * SECTOR > dev.size() {
            return Ok(None);
        }
        let label = read_vec(dev.as_ref(), sector * SECTOR, SECTOR)?;
        if &label[..8] != b"LABELONE" || &label[24..32] != b"LVM2 001" {
            continue;
        }
        let at = le::u32(&label, 20) as usize;
        if !(32..=SECTOR as usize - 40).contains(&at) {
            return Err(Error::corrupt("LVM label", format!("pv_header at {at}")));
        }
        let pvh = &label[at..];
        let uuid = String::from_utf8_lossy(&pvh[..32]).into_owned();
        // Data areas, then metadata areas, each list ended by a zero entry.
        let mut pos = 40;
        let mut lists: [Vec<(u64, u64)>; 2] = [vec![], vec![]];
        for list in &mut lists {
            loop {
                if pos + 16 > pvh.len() {
                    return Err(Error::corrupt(
                        "LVM label",
                        "area list runs past the sector",
                    ));
                }
                let (off, size) = (le::u64(pvh, pos), le::u64(pvh, pos + 8));
                pos += 16;
                if off == 0 {
                    break;
                }
                list.push((off, size));
            }
        }
        let mut metadata = None;
        for &(off, size) in &lists[1] {
            if let Some(text) = read_mda(dev.as_ref(), off, size)? {
                metadata = Some(text);
                break;
            }
        }
        return Ok(Some(PhysicalVolume {
            uuid,
            dev,
            metadata,
        }));
    }
    Ok(None)
}

fn read_mda(dev: &dyn Device, start: u64, size: u64) -> Result<Option<String>> {
    let head = read_vec(dev, start, SECTOR)?;
    if &head[4..20] != MDA_MAGIC {
        return Err(Error::corrupt(
            "LVM metadata area",
            format!("no magic at byte {start}"),
        ));
    }
    let (off, len) = (le::u64(&head, 40), le::u64(&head, 48));
    if len == 0 {
        return Ok(None);
    }
    if off >= size || len > size.saturating_sub(SECTOR) || len > 1 << 20 {
        return Err(Error::corrupt(
            "LVM metadata area",
            format!("text of {len} bytes at {off} in an area of {size}"),
        ));
    }
    // The text is a ring buffer after the area's first sector: it may wrap.
    let first = len.min(size - off);
    let mut text = read_vec(dev, start + off, first)?;
    if first < len {
        text.extend(read_vec(dev, start + SECTOR, len - first)?);
    }
    if crc_lvm(&text) != le::u32(&head, 56) {
        return Err(Error::corrupt("LVM metadata", "checksum mismatch"));
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// lvm2's checksum: CRC-32 (reflected 0xEDB88320) seeded with 0xf597a6cf, no final xor.
fn crc_lvm(data: &[u8]) -> u32 {
    let mut crc = 0xf597_a6cfu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A logical volume ready to be read.
pub struct LogicalVolume {
    /// "vg/lv".
    pub name: String,
    /// Its UUID as the metadata has it.
    pub uuid: String,
    /// Its mapping.
    pub device: Arc<dyn Device>,
}

struct Segment {
    start: u64,
    len: u64,
    stripe_size: u64,
    stripes: Vec<(Arc<dyn Device>, u64)>,
}

/// The bytes of a logical volume, mapped onto physical volumes.
pub struct LvDevice {
    size: u64,
    segments: Vec<Segment>,
}

impl Device for LvDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let seg = self
                .segments
                .iter()
                .find(|s| pos >= s.start && pos < s.start + s.len)
                .ok_or_else(|| {
                    Error::corrupt("logical volume", format!("no segment maps byte {pos}"))
                })?;
            let rel = pos - seg.start;
            let n = seg.stripes.len() as u64;
            let chunk = rel / seg.stripe_size;
            let within = rel % seg.stripe_size;
            let (dev, base) = &seg.stripes[(chunk % n) as usize];
            let phys = base + (chunk / n) * seg.stripe_size + within;
            let take = ((seg.stripe_size - within).min(seg.start + seg.len - pos) as usize)
                .min(buf.len() - done);
            dev.read_at(phys, &mut buf[done..done + take])?;
            done += take;
        }
        Ok(())
    }
}

/// The logical volumes of every volume group whose physical volumes are all in `pvs`.
/// Groups with a missing physical volume are reported as errors, one per group.
pub fn logical_volumes(pvs: &[PhysicalVolume]) -> Vec<Result<LogicalVolume>> {
    let mut groups: BTreeMap<String, Value> = BTreeMap::new();
    for pv in pvs {
        let Some(text) = &pv.metadata else { continue };
        match parse(text) {
            Ok(root) => {
                for (name, vg) in root.sections() {
                    let newer = groups
                        .get(name)
                        .is_none_or(|old| old.int("seqno") < vg.int("seqno"));
                    if newer {
                        groups.insert(name.clone(), vg.clone());
                    }
                }
            }
            Err(e) => return vec![Err(e)],
        }
    }
    let mut out = Vec::new();
    for (vg_name, vg) in &groups {
        match group_volumes(vg_name, vg, pvs) {
            Ok(lvs) => out.extend(lvs.into_iter().map(Ok)),
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

fn group_volumes(vg_name: &str, vg: &Value, pvs: &[PhysicalVolume]) -> Result<Vec<LogicalVolume>> {
    let what = format!("volume group {vg_name}");
    let extent = vg
        .int("extent_size")
        .filter(|&e| e > 0 && e <= 1 << 30)
        .ok_or_else(|| Error::corrupt(&what, "no extent_size"))?
        * SECTOR;
    let mut pv_map: BTreeMap<String, (Arc<dyn Device>, u64)> = BTreeMap::new();
    for (key, pv) in vg
        .get("physical_volumes")
        .map(Value::sections)
        .unwrap_or_default()
    {
        let id = pv.str("id").unwrap_or_default().replace('-', "");
        let found = pvs.iter().find(|p| p.uuid == id).ok_or_else(|| {
            Error::corrupt(
                &what,
                format!("physical volume {key} ({id}) is not on this disk"),
            )
        })?;
        let pe_start = pv.int("pe_start").unwrap_or(0).saturating_mul(SECTOR);
        pv_map.insert(key.clone(), (Arc::clone(&found.dev), pe_start));
    }
    let mut out = Vec::new();
    for (lv_name, lv) in vg
        .get("logical_volumes")
        .map(Value::sections)
        .unwrap_or_default()
    {
        let lv_what = format!("logical volume {vg_name}/{lv_name}");
        let mut segments = Vec::new();
        for (_, seg) in lv.sections() {
            segments.push(segment(&lv_what, seg, extent, &pv_map)?);
        }
        segments.sort_by_key(|s| s.start);
        let mut size = 0u64;
        for s in &segments {
            if s.start != size {
                return Err(Error::corrupt(
                    &lv_what,
                    format!("segments leave a gap or overlap at byte {}", s.start),
                ));
            }
            size += s.len;
        }
        out.push(LogicalVolume {
            name: format!("{vg_name}/{lv_name}"),
            uuid: lv.str("id").unwrap_or_default().to_string(),
            device: Arc::new(LvDevice { size, segments }),
        });
    }
    Ok(out)
}

fn segment(
    what: &str,
    seg: &Value,
    extent: u64,
    pvs: &BTreeMap<String, (Arc<dyn Device>, u64)>,
) -> Result<Segment> {
    let kind = seg.str("type").unwrap_or_default();
    if kind != "striped" {
        return Err(Error::unsupported(what, format!("segment type \"{kind}\"")));
    }
    let (start, count) = (
        seg.int("start_extent").unwrap_or(0),
        seg.int("extent_count").unwrap_or(0),
    );
    let (Some(start), Some(len)) = (start.checked_mul(extent), count.checked_mul(extent)) else {
        return Err(Error::corrupt(what, "extent numbers overflow"));
    };
    let list = match seg.get("stripes") {
        Some(Value::List(l)) => l.clone(),
        _ => return Err(Error::corrupt(what, "segment without stripes")),
    };
    let n = (list.len() / 2) as u64;
    if n == 0 || n > 128 || len % n != 0 {
        return Err(Error::corrupt(
            what,
            format!("{} stripe entries for {len} bytes", list.len()),
        ));
    }
    let stripe_size = if n == 1 {
        len.max(1)
    } else {
        seg.int("stripe_size")
            .filter(|&s| s > 0 && s < 1 << 24)
            .ok_or_else(|| Error::corrupt(what, "no stripe_size"))?
            * SECTOR
    };
    let mut stripes = Vec::new();
    for pair in list.chunks(2) {
        let (Value::Str(pv), Value::Int(first)) = (&pair[0], &pair[1]) else {
            return Err(Error::corrupt(what, "stripes are not (name, extent) pairs"));
        };
        let (dev, pe_start) = pvs
            .get(pv)
            .ok_or_else(|| Error::corrupt(what, format!("names unknown physical volume {pv}")))?;
        let base = first
            .checked_mul(extent)
            .and_then(|b| b.checked_add(*pe_start));
        let per_stripe = len / n;
        match base {
            Some(b) if b.checked_add(per_stripe).is_some_and(|e| e <= dev.size()) => {
                stripes.push((Arc::clone(dev), b))
            }
            _ => {
                return Err(Error::corrupt(
                    what,
                    format!("extents on {pv} run past the end of the physical volume"),
                ))
            }
        }
    }
    Ok(Segment {
        start,
        len,
        stripe_size,
        stripes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    fn group(stripes: &str, extent_count: u64) -> String {
        format!(
            "vg {{\n seqno = 3\n extent_size = 2048\n physical_volumes {{ pv0 {{ id = \"abc-def\" pe_start = 2048 pe_count = 4 }} }}\n logical_volumes {{ lv {{ id = \"x\" segment1 {{ start_extent = 0 extent_count = {extent_count} type = \"striped\" stripe_count = 1 stripes = [{stripes}] }} }} }}\n}}\n"
        )
    }

    fn pv(text: String) -> PhysicalVolume {
        PhysicalVolume {
            uuid: "abcdef".into(),
            dev: Arc::new(MemDevice(vec![0; 5 << 20])),
            metadata: Some(text),
        }
    }

    #[test]
    fn extents_inside_the_pv_map_and_extents_past_it_are_refused() {
        let ok = logical_volumes(&[pv(group("\"pv0\", 1", 2))]);
        let lv = ok[0].as_ref().unwrap();
        assert_eq!((lv.name.as_str(), lv.device.size()), ("vg/lv", 2 << 20));
        for (stripes, count) in [
            ("\"pv0\", 3", 2),
            ("\"pv0\", 18446744073709551615", 1),
            ("\"pv9\", 0", 1),
            ("0, \"pv0\"", 1),
        ] {
            let r = logical_volumes(&[pv(group(stripes, count))]);
            let e = r[0]
                .as_ref()
                .err()
                .unwrap_or_else(|| panic!("{stripes}: accepted"))
                .to_string();
            assert!(e.contains("logical volume vg/lv"), "{stripes}: {e}");
        }
    }

    #[test]
    fn a_group_whose_pv_is_missing_is_an_error() {
        let mut p = pv(group("\"pv0\", 0", 1));
        p.uuid = "someoneelse".into();
        let r = logical_volumes(&[p]);
        assert!(r[0]
            .as_ref()
            .err()
            .unwrap()
            .to_string()
            .contains("not on this disk"));
    }
}
