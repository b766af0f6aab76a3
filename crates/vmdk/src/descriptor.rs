//! The text descriptor: header keys, extent lines and the disk database.
//!
//! Reading is lenient (CRLF, trailing NULs, spaces around `=`, unknown keys kept);
//! writing is conservative, in the exact shape qemu's substring-matching parser accepts:
//! `CID=` before `parentCID=`, `createType="..."` and `parentFileNameHint="..."` with no
//! spaces around `=`.

use crate::error::{Error, Result};
use crate::magic::{CID_NO_PARENT, DESCRIPTOR_SIGNATURE};
use std::fmt::Write as _;
use std::path::Path;

/// Longest descriptor accepted (VMware's own are a few hundred bytes; embedded ones 10 KiB).
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Most extents one descriptor may list (a 62 TiB disk split at 2 GiB has 31744).
pub const MAX_EXTENTS: usize = 65_536;

/// The `createType` of a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum CreateType {
    MonolithicSparse,
    MonolithicFlat,
    TwoGbMaxExtentSparse,
    TwoGbMaxExtentFlat,
    StreamOptimized,
    Vmfs,
    VmfsThin,
    VmfsPreallocated,
    VmfsEagerZeroedThick,
    VmfsSparse,
    VmfsRaw,
    VmfsRawDeviceMap,
    VmfsPassthroughRawDeviceMap,
    FullDevice,
    PartitionedDevice,
    Custom,
    SeSparse,
}

const CREATE_TYPES: &[(CreateType, &str)] = &[
    (CreateType::MonolithicSparse, "monolithicSparse"),
    (CreateType::MonolithicFlat, "monolithicFlat"),
    (CreateType::TwoGbMaxExtentSparse, "twoGbMaxExtentSparse"),
    (CreateType::TwoGbMaxExtentFlat, "twoGbMaxExtentFlat"),
    (CreateType::StreamOptimized, "streamOptimized"),
    (CreateType::Vmfs, "vmfs"),
    (CreateType::VmfsThin, "vmfsThin"),
    (CreateType::VmfsPreallocated, "vmfsPreallocated"),
    (CreateType::VmfsEagerZeroedThick, "vmfsEagerZeroedThick"),
    (CreateType::VmfsSparse, "vmfsSparse"),
    (CreateType::VmfsRaw, "vmfsRaw"),
    (CreateType::VmfsRawDeviceMap, "vmfsRawDeviceMap"),
    (
        CreateType::VmfsPassthroughRawDeviceMap,
        "vmfsPassthroughRawDeviceMap",
    ),
    (CreateType::FullDevice, "fullDevice"),
    (CreateType::PartitionedDevice, "partitionedDevice"),
    (CreateType::Custom, "custom"),
    (CreateType::SeSparse, "seSparse"),
];

impl CreateType {
    /// The name as written in descriptors.
    pub fn as_str(self) -> &'static str {
        CREATE_TYPES
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, s)| *s)
            .unwrap_or("custom")
    }

    /// Parse a createType value (case-insensitive, as VMware does).
    pub fn parse(s: &str) -> Option<Self> {
        CREATE_TYPES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(t, _)| *t)
    }
}

impl std::fmt::Display for CreateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Access mode of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-write.
    Rw,
    /// Read-only.
    RdOnly,
    /// No access (reads fail).
    NoAccess,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Rw => "RW",
            Access::RdOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// Extent type of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ExtentType {
    Flat,
    Sparse,
    Zero,
    Vmfs,
    VmfsSparse,
    VmfsRdm,
    VmfsRaw,
    SeSparse,
}

impl ExtentType {
    /// Name as written in descriptors.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Sparse => "SPARSE",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
            ExtentType::SeSparse => "SESPARSE",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "FLAT" => ExtentType::Flat,
            "SPARSE" => ExtentType::Sparse,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "VMFSRDM" => ExtentType::VmfsRdm,
            "VMFSRAW" => ExtentType::VmfsRaw,
            "SESPARSE" => ExtentType::SeSparse,
            _ => return None,
        })
    }
}

/// One extent line: `ACCESS SECTORS TYPE "file" [offset]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// File name (relative to the descriptor's folder, or absolute); None for ZERO.
    pub file: Option<String>,
    /// Offset in sectors into the file (used by FLAT, VMFS, VMFSRDM and VMFSRAW extents;
    /// always written for FLAT, for the others when non-zero).
    pub offset_sectors: u64,
}

/// A parsed descriptor. Unknown header keys and all disk database entries are kept in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version=` (1; 2 and 3 seen in newer files).
    pub version: u32,
    /// Content ID, changed on the first write after each open.
    pub cid: u32,
    /// Parent's CID at the time this link was created; `0xffffffff` for none.
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: CreateType,
    /// `parentFileNameHint`, when this link is a child.
    pub parent_file_name_hint: Option<String>,
    /// Extent lines in order.
    pub extents: Vec<ExtentLine>,
    /// Other header keys (encoding, isNativeSnapshot, ...), in order, values unquoted.
    pub header_extra: Vec<(String, String)>,
    /// Disk database entries (`ddb.*`) in order, values unquoted.
    pub ddb: Vec<(String, String)>,
}

fn bad(path: &Path, line: usize, reason: impl Into<String>, text: &str) -> Error {
    let mut text = text.to_string();
    if text.len() > 120 {
        let mut cut = 120;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Error::BadDescriptor {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
        text,
    }
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

fn parse_cid(path: &Path, line: usize, v: &str, text: &str) -> Result<u32> {
    u32::from_str_radix(v.trim(), 16).map_err(|_| bad(path, line, "CID is not 32-bit hex", text))
}

impl Descriptor {
    /// A descriptor with fresh random CID, no parent and no extents.
    pub fn new(create_type: CreateType) -> Self {
        Descriptor {
            version: 1,
            cid: random_cid(),
            parent_cid: CID_NO_PARENT,
            create_type,
            parent_file_name_hint: None,
            extents: Vec::new(),
            header_extra: vec![
                ("encoding".into(), "UTF-8".into()),
                ("isNativeSnapshot".into(), "no".into()),
            ],
            ddb: Vec::new(),
        }
    }

    /// Parse descriptor bytes (possibly NUL padded, possibly CRLF). `path` only names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = &bytes[..end];
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(bad(
                path,
                0,
                format!("descriptor larger than {MAX_DESCRIPTOR_BYTES} bytes"),
                "",
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            bad(path, line, "not valid UTF-8", "")
        })?;
        let mut d = Descriptor {
            version: 1,
            cid: 0,
            parent_cid: CID_NO_PARENT,
            create_type: CreateType::Custom,
            parent_file_name_hint: None,
            extents: Vec::new(),
            header_extra: Vec::new(),
            ddb: Vec::new(),
        };
        let (mut saw_cid, mut saw_type) = (false, false);
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            let line = raw.trim_end_matches('\r').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(bad(path, lineno, "too many extents", line));
                }
                d.extents.push(parse_extent_line(path, lineno, line)?);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(
                    path,
                    lineno,
                    "expected key=value or an extent line",
                    line,
                ));
            };
            let key = k.trim();
            let value = unquote(v);
            if key.is_empty() {
                return Err(bad(path, lineno, "empty key", line));
            }
            match key.to_ascii_lowercase().as_str() {
                "version" => {
                    d.version = value
                        .parse()
                        .map_err(|_| bad(path, lineno, "version is not a number", line))?
                }
                "cid" => {
                    d.cid = parse_cid(path, lineno, value, line)?;
                    saw_cid = true;
                }
                "parentcid" => d.parent_cid = parse_cid(path, lineno, value, line)?,
                "createtype" => {
                    d.create_type = CreateType::parse(value)
                        .ok_or_else(|| bad(path, lineno, "unknown createType", line))?;
                    saw_type = true;
                }
                "parentfilenamehint" => d.parent_file_name_hint = Some(value.to_string()),
                _ if key.starts_with("ddb.") => d.ddb.push((key.to_string(), value.to_string())),
                _ => d.header_extra.push((key.to_string(), value.to_string())),
            }
        }
        if !saw_type {
            return Err(bad(path, 0, "no createType", ""));
        }
        if !saw_cid {
            return Err(bad(path, 0, "no CID", ""));
        }
        if d.extents.is_empty() {
            return Err(bad(path, 0, "no extent lines", ""));
        }
        if d.parent_cid != CID_NO_PARENT && d.parent_file_name_hint.is_none() {
            return Err(bad(path, 0, "parentCID set but no parentFileNameHint", ""));
        }
        Ok(d)
    }

    /// Capacity in bytes: the sum of the extent sizes.
    pub fn capacity_bytes(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.sectors.saturating_mul(512)))
    }

    /// Whether this link has a parent.
    pub fn has_parent(&self) -> bool {
        self.parent_file_name_hint.is_some() && self.parent_cid != CID_NO_PARENT
    }

    /// A disk database value.
    pub fn ddb_value(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Set (replace or append) a disk database value.
    pub fn set_ddb(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .ddb
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some(slot) => slot.1 = value,
            None => self.ddb.push((key.to_string(), value)),
        }
    }

    /// Render in the conservative form qemu and VMware both accept.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(512);
        let _ = writeln!(s, "{DESCRIPTOR_SIGNATURE}");
        let _ = writeln!(s, "version={}", self.version);
        for (k, v) in self
            .header_extra
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("encoding"))
        {
            let _ = writeln!(s, "{k}=\"{v}\"");
        }
        let _ = writeln!(s, "CID={:08x}", self.cid);
        let _ = writeln!(s, "parentCID={:08x}", self.parent_cid);
        for (k, v) in self
            .header_extra
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("encoding"))
        {
            let _ = writeln!(s, "{k}=\"{v}\"");
        }
        let _ = writeln!(s, "createType=\"{}\"", self.create_type);
        if let Some(hint) = &self.parent_file_name_hint {
            let _ = writeln!(s, "parentFileNameHint=\"{hint}\"");
        }
        let _ = writeln!(s, "\n# Extent description");
        for e in &self.extents {
            let _ = write!(s, "{} {} {}", e.access.as_str(), e.sectors, e.kind.as_str());
            if let Some(f) = &e.file {
                let _ = write!(s, " \"{f}\"");
                // FLAT lines always carry the offset (qemu requires it); other lines keep one
                // they were read with: VMFS and RDM extents use it, and dropping it would move
                // their data on the next rewrite (issue 2).
                if e.kind == ExtentType::Flat || e.offset_sectors != 0 {
                    let _ = write!(s, " {}", e.offset_sectors);
                }
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\n# The Disk Data Base\n#DDB\n");
        for (k, v) in &self.ddb {
            let _ = writeln!(s, "{k} = \"{v}\"");
        }
        s
    }
}

fn parse_extent_line(path: &Path, lineno: usize, line: &str) -> Result<ExtentLine> {
    let (head, rest) = match line.find('"') {
        Some(q) => (&line[..q], Some(&line[q + 1..])),
        None => (line, None),
    };
    let mut words = head.split_whitespace();
    let access = match words.next() {
        Some("RW") => Access::Rw,
        Some("RDONLY") => Access::RdOnly,
        _ => Access::NoAccess,
    };
    let sectors: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad(path, lineno, "extent size is not a number", line))?;
    let kind = words
        .next()
        .and_then(ExtentType::parse)
        .ok_or_else(|| bad(path, lineno, "unknown extent type", line))?;
    let (file, offset_sectors) = match rest {
        None => {
            if kind != ExtentType::Zero {
                return Err(bad(path, lineno, "extent has no file name", line));
            }
            (None, 0)
        }
        Some(rest) => {
            let close = rest
                .find('"')
                .ok_or_else(|| bad(path, lineno, "unterminated file name", line))?;
            let name = &rest[..close];
            if name.is_empty() {
                return Err(bad(path, lineno, "empty extent file name", line));
            }
            let tail = rest[close + 1..].trim();
            let offset = if tail.is_empty() {
                0
            } else {
                tail.split_whitespace()
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| bad(path, lineno, "extent offset is not a number", line))?
            };
            (Some(name.to_string()), offset)
        }
    };
    if sectors == 0 {
        return Err(bad(path, lineno, "extent of zero sectors", line));
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset_sectors,
    })
}

/// A fresh random content ID (never the "no parent" value).
pub fn random_cid() -> u32 {
    loop {
        let c: u32 = rand::random();
        if c != CID_NO_PARENT && c != 0 {
            return c;
        }
    }
}

/// A fresh `ddb.longContentID` (32 hex digits).
pub fn random_long_content_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A fresh `ddb.uuid` in VMware's "60 00 C2 9a ...-55 66 ..." form.
pub fn random_ddb_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=52b3c2a1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 131072 FLAT \"t-flat.vmdk\" 0\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"130\"\nddb.adapterType = \"ide\"\n";

    fn p() -> &'static Path {
        Path::new("t.vmdk")
    }

    #[test]
    fn parses_qemu_flat_descriptor() {
        let d = Descriptor::parse(QEMU_FLAT.as_bytes(), p()).unwrap();
        assert_eq!(d.cid, 0x52b3c2a1);
        assert_eq!(d.create_type, CreateType::MonolithicFlat);
        assert_eq!(d.capacity_bytes(), 64 << 20);
        assert_eq!(d.extents[0].file.as_deref(), Some("t-flat.vmdk"));
        assert_eq!(d.ddb_value("ddb.adapterType"), Some("ide"));
        assert!(!d.has_parent());
    }

    #[test]
    fn round_trips_through_text() {
        let d = Descriptor::parse(QEMU_FLAT.as_bytes(), p()).unwrap();
        let again = Descriptor::parse(d.to_text().as_bytes(), p()).unwrap();
        assert_eq!(d, again);
        let text = d.to_text();
        assert!(text.find("CID=").unwrap() < text.find("parentCID=").unwrap());
        assert!(text.contains("createType=\"monolithicFlat\""));
    }

    #[test]
    fn tolerates_crlf_spaces_and_nul_padding() {
        let mut raw = QEMU_FLAT
            .replace('\n', "\r\n")
            .replace("CID=52b3c2a1", "CID = 52b3c2a1")
            .into_bytes();
        raw.extend_from_slice(&[0u8; 300]);
        let d = Descriptor::parse(&raw, p()).unwrap();
        assert_eq!(d.cid, 0x52b3c2a1);
    }

    #[test]
    fn zero_extent_needs_no_file() {
        let t = QEMU_FLAT.replace(
            "RW 131072 FLAT \"t-flat.vmdk\" 0",
            "RW 100 ZERO\nRDONLY 28 SPARSE \"x.vmdk\"",
        );
        let d = Descriptor::parse(t.as_bytes(), p()).unwrap();
        assert_eq!(d.extents[0].kind, ExtentType::Zero);
        assert_eq!(d.extents[1].access, Access::RdOnly);
    }

    /// Fuzzing found `RW 2048 ZERO "f-flat.vmdk" 5` losing its offset in `to_text`. The same
    /// loss moved the data of VMFS/RDM extents, which do use an offset, when a write
    /// rewrote the descriptor.
    #[test]
    fn issue_2_fuzz_extent_offset_survives_rendering() {
        let t = QEMU_FLAT.replace(
            "RW 131072 FLAT \"t-flat.vmdk\" 0",
            "RW 2048 ZERO \"f-flat.vmdk\" 5\nRW 100 VMFS \"x-flat.vmdk\" 8\nRW 9 VMFS \"y-flat.vmdk\"",
        );
        let d = Descriptor::parse(t.as_bytes(), p()).unwrap();
        let text = d.to_text();
        assert!(text.contains("RW 100 VMFS \"x-flat.vmdk\" 8\n"), "{text}");
        assert!(
            text.contains("RW 9 VMFS \"y-flat.vmdk\"\n"),
            "as VMware writes it: {text}"
        );
        let again = Descriptor::parse(text.as_bytes(), p()).unwrap();
        assert_eq!(again.extents, d.extents);
    }

    fn err_of(text: &str) -> Error {
        Descriptor::parse(text.as_bytes(), p()).unwrap_err()
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = err_of(&QEMU_FLAT.replace("CID=52b3c2a1", "CID=zz"));
        assert!(matches!(e, Error::BadDescriptor { line: 3, .. }), "{e}");
        assert!(
            e.to_string().starts_with("t.vmdk: descriptor line 3"),
            "{e}"
        );
        let e = err_of(&QEMU_FLAT.replace("monolithicFlat", "bogus"));
        assert!(e.to_string().contains("unknown createType"), "{e}");
        let e = err_of(&QEMU_FLAT.replace("RW 131072 FLAT", "RW many FLAT"));
        assert!(e.to_string().contains("extent size is not a number"), "{e}");
        let e = err_of(&QEMU_FLAT.replace("FLAT \"t-flat.vmdk\"", "FLAT \"t-flat.vmdk"));
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = err_of(&QEMU_FLAT.replace("RW 131072 FLAT \"t-flat.vmdk\" 0", ""));
        assert!(e.to_string().contains("no extent lines"), "{e}");
        let e = err_of(&QEMU_FLAT.replace("ddb.adapterType = \"ide\"", "garbage line"));
        assert!(e.to_string().contains("expected key=value"), "{e}");
        let e = err_of(&QEMU_FLAT.replace("parentCID=ffffffff", "parentCID=12345678"));
        assert!(e.to_string().contains("no parentFileNameHint"), "{e}");
    }

    #[test]
    fn non_utf8_is_a_typed_error() {
        let mut raw = QEMU_FLAT.as_bytes().to_vec();
        raw[40] = 0xff;
        let e = Descriptor::parse(&raw, p()).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }
}
