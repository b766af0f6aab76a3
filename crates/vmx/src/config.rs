//! [`VmConfig`]: the typed view of a .vmx file.

use std::fmt;

use crate::keys::strip_suffix_ci;
use crate::{Bus, Dict, DiskNode, Error, Uuid};

/// One virtual disk of a VM: a node whose `.present` is true, with a `.fileName`, and
/// whose `.deviceType` is not a CD-ROM, floppy or SCSI passthrough device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// Where the disk is attached.
    pub node: DiskNode,
    /// `<node>.fileName`: relative to the VM folder, absolute, or a datastore path.
    /// Untrusted: confine it before use.
    pub file_name: String,
    /// `<node>.deviceType` (`scsi-hardDisk`, `disk`, `rawDisk`...), if set.
    pub device_type: Option<String>,
    /// The controller's `virtualDev` (`lsilogic`, `pvscsi`, `buslogic`, `lsisas1068`...),
    /// if set.
    pub virtual_dev: Option<String>,
}

/// A .vmx file: the typed settings vcb uses, over the [`Dict`] that holds them.
///
/// Setters edit the dictionary in place, so everything else in the file (comments, key
/// case, unknown keys) is written back unchanged by [`Display`](fmt::Display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    dict: Dict,
    memsize_mb: Option<u64>,
    num_vcpus: Option<u32>,
    uuid_bios: Option<Uuid>,
    disks: Vec<VmDisk>,
}

const DISPLAY_NAME: &str = "displayName";
const GUEST_IP: &str = "guestinfo.ip";
const UUID_BIOS: &str = "uuid.bios";

/// The .vmx key that turns changed-block tracking on for the VM.
pub const CTK_ENABLED: &str = "ctkEnabled";

impl VmConfig {
    /// Reads the typed settings of a .vmx dictionary.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if `memsize`, `numvcpus`, `uuid.bios` or a disk node's
    /// `.present` has a value of the wrong form.
    pub fn from_dict(dict: &Dict) -> Result<VmConfig, Error> {
        let num_vcpus = match dict.get_u64("numvcpus")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|e| {
                let line = dict.line_of("numvcpus").unwrap_or(0);
                Error::invalid_value(line, "numvcpus", &n.to_string(), e)
            })?),
        };
        Ok(VmConfig {
            memsize_mb: dict.get_u64("memsize")?,
            num_vcpus,
            uuid_bios: parse_uuid(dict)?,
            disks: scan_disks(dict)?,
            dict: dict.clone(),
        })
    }

    /// The dictionary, with every edit made so far.
    pub fn dict(&self) -> &Dict {
        &self.dict
    }

    /// Gives back the dictionary, with every edit made so far.
    pub fn into_dict(self) -> Dict {
        self.dict
    }

    /// `displayName`.
    pub fn display_name(&self) -> Option<&str> {
        self.dict.get(DISPLAY_NAME)
    }

    /// `guestOS` (`rhel5`, `winnetstandard`...).
    pub fn guest_os(&self) -> Option<&str> {
        self.dict.get("guestOS")
    }

    /// `memsize`, in MiB.
    pub fn memsize_mb(&self) -> Option<u64> {
        self.memsize_mb
    }

    /// `numvcpus`.
    pub fn num_vcpus(&self) -> Option<u32> {
        self.num_vcpus
    }

    /// `uuid.bios`.
    pub fn uuid_bios(&self) -> Option<Uuid> {
        self.uuid_bios
    }

    /// `nvram`: the NVRAM file.
    pub fn nvram(&self) -> Option<&str> {
        self.dict.get("nvram")
    }

    /// `suspend.Directory`: where the .vmss goes (default: the VM folder).
    pub fn suspend_dir(&self) -> Option<&str> {
        self.dict.get("suspend.Directory")
    }

    /// `workingDir`.
    pub fn working_dir(&self) -> Option<&str> {
        self.dict.get("workingDir")
    }

    /// The folder part of `log.fileName`, if it names one.
    pub fn log_dir(&self) -> Option<&str> {
        let file = self.dict.get("log.fileName")?;
        file.rfind('/').map(|i| &file[..i.max(1)])
    }

    /// `guestinfo.ip`: the guest's address, if recorded.
    pub fn guest_ip(&self) -> Option<&str> {
        self.dict.get(GUEST_IP)
    }

    /// The disks, ordered by node (SCSI, IDE, SATA, NVMe).
    pub fn disks(&self) -> &[VmDisk] {
        &self.disks
    }

    /// The disk at `node`.
    pub fn disk(&self, node: DiskNode) -> Option<&VmDisk> {
        self.disks.iter().find(|d| d.node == node)
    }

    /// Sets `displayName`.
    ///
    /// # Errors
    /// [`Error::LineTooLong`] for an overlong name.
    pub fn set_display_name(&mut self, name: &str) -> Result<(), Error> {
        self.dict.set(DISPLAY_NAME, name)
    }

    /// Sets `guestinfo.ip`.
    ///
    /// # Errors
    /// [`Error::LineTooLong`] for an overlong value.
    pub fn set_guest_ip(&mut self, ip: &str) -> Result<(), Error> {
        self.dict.set(GUEST_IP, ip)
    }

    /// Sets `uuid.bios`, written in the .vmx form.
    ///
    /// # Errors
    /// None in practice; the signature matches the other setters.
    pub fn set_uuid_bios(&mut self, uuid: Uuid) -> Result<(), Error> {
        self.dict.set(UUID_BIOS, &uuid.to_vmx_string())?;
        self.uuid_bios = Some(uuid);
        Ok(())
    }

    /// Whether changed-block tracking is on for the disk at `node`: `ctkEnabled` and
    /// `<node>.ctkEnabled` both TRUE, as ESX requires.
    pub fn change_tracking(&self, node: DiskNode) -> bool {
        let on = |key: &str| self.dict.get_bool(key).ok().flatten() == Some(true);
        on(CTK_ENABLED) && on(&format!("{node}.ctkEnabled"))
    }

    /// Turns changed-block tracking on or off for the VM and every disk it has.
    ///
    /// # Errors
    /// [`Error::LineTooLong`] (never in practice).
    pub fn set_change_tracking(&mut self, on: bool) -> Result<(), Error> {
        self.dict.set_bool(CTK_ENABLED, on)?;
        let nodes: Vec<DiskNode> = self.disks.iter().map(|d| d.node).collect();
        for node in nodes {
            self.dict.set_bool(&format!("{node}.ctkEnabled"), on)?;
        }
        Ok(())
    }

    /// Points the disk at `node` to `file`.
    ///
    /// # Errors
    /// [`Error::UnknownDisk`] if the VM has no disk there; [`Error::LineTooLong`].
    pub fn set_disk_file(&mut self, node: DiskNode, file: &str) -> Result<(), Error> {
        let disk = self
            .disks
            .iter_mut()
            .find(|d| d.node == node)
            .ok_or(Error::UnknownDisk { node })?;
        self.dict.set(&format!("{node}.fileName"), file)?;
        disk.file_name = file.to_owned();
        Ok(())
    }

    /// Attaches `file` as a new disk at `node`: sets `<node>.present` and `.fileName`,
    /// makes the device a hard disk, and marks the controller present if it was not.
    ///
    /// # Errors
    /// [`Error::NodeInUse`] if a device is already present at `node`;
    /// [`Error::LineTooLong`].
    pub fn add_disk(&mut self, node: DiskNode, file: &str) -> Result<(), Error> {
        if self.dict.get_bool(&format!("{node}.present"))? == Some(true) {
            return Err(Error::NodeInUse { node });
        }
        let controller = node.controller_key();
        if node.bus != Bus::Ide
            && self.dict.get_bool(&format!("{controller}.present"))? != Some(true)
        {
            self.dict.set_bool(&format!("{controller}.present"), true)?;
        }
        self.dict.set_bool(&format!("{node}.present"), true)?;
        self.dict.set(&format!("{node}.fileName"), file)?;
        let device_type = format!("{node}.deviceType");
        if node.bus == Bus::Scsi {
            self.dict.set(&device_type, "scsi-hardDisk")?;
        } else {
            // The default device type is a hard disk; drop a stale CD-ROM type.
            self.dict.remove(&device_type);
        }
        self.disks = scan_disks(&self.dict)?;
        Ok(())
    }
}

fn parse_uuid(dict: &Dict) -> Result<Option<Uuid>, Error> {
    let Some(text) = dict.get(UUID_BIOS) else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|e| Error::invalid_value(dict.line_of(UUID_BIOS).unwrap_or(0), UUID_BIOS, text, e))
}

fn is_disk_type(device_type: &str) -> bool {
    let t = device_type.to_ascii_lowercase();
    !(t.contains("cdrom") || t.contains("floppy") || t.contains("passthru"))
}

/// Every present disk node with a non-empty `.fileName`, ordered by node.
fn scan_disks(dict: &Dict) -> Result<Vec<VmDisk>, Error> {
    let mut disks = Vec::new();
    for (key, file_name) in dict.iter() {
        let Some(head) = strip_suffix_ci(key, ".fileName") else {
            continue;
        };
        let Ok(node) = head.parse::<DiskNode>() else {
            continue;
        };
        if file_name.is_empty() || dict.get_bool(&format!("{node}.present"))? != Some(true) {
            continue;
        }
        let device_type = dict.get(&format!("{node}.deviceType")).map(str::to_owned);
        if device_type.as_deref().is_some_and(|t| !is_disk_type(t)) {
            continue;
        }
        let virtual_dev = dict
            .get(&format!("{}.virtualDev", node.controller_key()))
            .map(str::to_owned);
        disks.push(VmDisk {
            node,
            file_name: file_name.to_owned(),
            device_type,
            virtual_dev,
        });
    }
    disks.sort_by_key(|d| d.node);
    Ok(disks)
}

impl fmt::Display for VmConfig {
    /// The .vmx text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.dict.fmt(f)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
