//! Finding the volumes of a VM's disks: partitions, LVM logical volumes, whole disks.

use crate::device::{Device, Slice};
use crate::part::{read_table, Table};
use crate::vfs::FileSystem;
use crate::{ext4, fat, lvm, ntfs, xfs, Error, Result};
use std::sync::Arc;

/// A volume with a file system vcb recognises.
pub struct Volume {
    /// Its number in VCB's `digits/` layout: 1, 2, ... in the order found.
    pub number: u32,
    /// Where it is: "disk 0 partition 1", "vg/lv", "disk 1".
    pub place: String,
    /// Its size in bytes.
    pub size: u64,
    /// The disk it is on (index into the disks given), and its byte offset there
    /// (for Windows' MountedDevices); `None` for logical volumes.
    pub on_disk: Option<(usize, u64)>,
    /// The MBR disk signature of its disk.
    pub mbr_signature: Option<u32>,
    /// The GPT partition GUID.
    pub gpt_guid: Option<String>,
    /// The file system, or why it could not be opened.
    pub fs: std::result::Result<Arc<dyn FileSystem>, Error>,
}

impl Volume {
    /// The label or UUID, the name for `volumes/`.
    pub fn id(&self) -> Option<String> {
        let fs = self.fs.as_ref().ok()?;
        fs.label().or_else(|| fs.uuid())
    }
}

/// Open the file system on `dev`; `Ok(None)` when no known format is there.
///
/// # Errors
/// The reader's error for a recognised but unreadable file system.
pub fn open_file_system(dev: Arc<dyn Device>) -> Result<Option<Arc<dyn FileSystem>>> {
    let d = dev.as_ref();
    Ok(Some(if ext4::detect(d) {
        Arc::new(ext4::Ext4::open(dev)?)
    } else if xfs::detect(d) {
        Arc::new(xfs::Xfs::open(dev)?)
    } else if ntfs::detect(d) {
        Arc::new(ntfs::Ntfs::open(dev)?)
    } else if fat::detect(d) {
        Arc::new(fat::Fat::open(dev)?)
    } else {
        return Ok(None);
    }))
}

struct Candidate {
    place: String,
    dev: Arc<dyn Device>,
    on_disk: Option<(usize, u64)>,
    mbr_signature: Option<u32>,
    gpt_guid: Option<String>,
}

/// Every volume of `disks` with a file system vcb recognises, in disk and partition order,
/// then logical volumes.
///
/// # Errors
/// Read errors and corrupt partition tables of a disk.
pub fn volumes(disks: &[Arc<dyn Device>]) -> Result<Vec<Volume>> {
    let mut candidates = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        match read_table(disk.as_ref())? {
            None => candidates.push(Candidate {
                place: format!("disk {i}"),
                dev: Arc::clone(disk),
                on_disk: Some((i, 0)),
                mbr_signature: None,
                gpt_guid: None,
            }),
            Some((table, parts)) => {
                for p in parts {
                    let (sig, guid) = match table {
                        Table::Mbr(s) => (Some(s), None),
                        Table::Gpt => (None, Some(p.guid.clone())),
                    };
                    candidates.push(Candidate {
                        place: format!("disk {i} partition {}", p.number),
                        dev: Arc::new(Slice::new(Arc::clone(disk), p.start, p.len)?),
                        on_disk: Some((i, p.start)),
                        mbr_signature: sig,
                        gpt_guid: guid,
                    });
                }
            }
        }
    }
    let mut pvs = Vec::new();
    let mut out = Vec::new();
    for c in candidates {
        match lvm::probe(Arc::clone(&c.dev)) {
            Ok(Some(pv)) => {
                pvs.push(pv);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                push(&mut out, c, Err(e));
                continue;
            }
        }
        push_file_system(&mut out, c);
    }
    for lv in lvm::logical_volumes(&pvs) {
        let c = match lv {
            Ok(lv) => Candidate {
                place: lv.name,
                dev: lv.device,
                on_disk: None,
                mbr_signature: None,
                gpt_guid: None,
            },
            Err(e) => {
                out.push(Volume {
                    number: 0,
                    place: "LVM".into(),
                    size: 0,
                    on_disk: None,
                    mbr_signature: None,
                    gpt_guid: None,
                    fs: Err(e),
                });
                continue;
            }
        };
        push_file_system(&mut out, c);
    }
    for (n, v) in out.iter_mut().enumerate() {
        v.number = n as u32 + 1;
    }
    Ok(out)
}

/// Record `c` when it holds a file system vcb recognises (or one it cannot open).
fn push_file_system(out: &mut Vec<Volume>, c: Candidate) {
    match open_file_system(Arc::clone(&c.dev)) {
        Ok(None) => tracing::debug!("{}: no file system vcb recognises", c.place),
        Ok(Some(fs)) => push(out, c, Ok(fs)),
        Err(e) => push(out, c, Err(e)),
    }
}

fn push(out: &mut Vec<Volume>, c: Candidate, fs: std::result::Result<Arc<dyn FileSystem>, Error>) {
    out.push(Volume {
        number: 0,
        place: c.place,
        size: c.dev.size(),
        on_disk: c.on_disk,
        mbr_signature: c.mbr_signature,
        gpt_guid: c.gpt_guid,
        fs,
    });
}
