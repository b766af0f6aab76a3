//! Creating a VM: a VM folder with an ESX-style .vmx, an NVRAM file and disks in ESX
//! formats, registered in the inventory.
//!
//! Everything is built in a hidden staging folder on the datastore
//! (`.NAME.vcb-partial-XXXXXXXX`) and renamed into place as the last step, so an
//! interrupted create never leaves a half-made VM folder under the VM's name.

use std::fs;
use std::path::{Path, PathBuf};

use vmx::{Bus, Dict, DiskNode, Style, Uuid, VmConfig};

use crate::config::ContainerKind;
use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, write_atomic};
use crate::vm::{Vm, VmRef};
use crate::Host;

/// Where a new VM's disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A new, empty disk of this many bytes.
    New {
        /// Capacity in bytes.
        capacity_bytes: u64,
    },
    /// A copy of an existing disk (any VMDK format, or a raw image), converted.
    Import {
        /// The source descriptor or image.
        source: PathBuf,
    },
    /// A raw device mapping.
    Rdm {
        /// The device (or file) mapped.
        device: PathBuf,
        /// Physical compatibility (pass-through) instead of virtual.
        physical: bool,
    },
}

/// What `vcb vm create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Display name, also the VM folder's and the files' base name.
    pub name: String,
    /// Datastore (default `datastore1`).
    pub datastore: Option<String>,
    /// Disks, attached in order at `scsi0:0`, `scsi0:1`... (unit 7 is the controller's).
    pub disks: Vec<DiskSource>,
    /// Format of new and imported disks: thin, zeroedthick or eagerzeroedthick.
    pub format: vmdk::DiskFormat,
    /// VM folder (default the root).
    pub folder: Option<String>,
    /// Resource pool (default the root pool).
    pub pool: Option<String>,
    /// `guestOS`.
    pub guest_os: String,
    /// `memsize`, MiB.
    pub memory_mb: u64,
    /// `numvcpus`.
    pub cpus: u32,
    /// `guestinfo.ip`.
    pub ip: Option<String>,
    /// An imported descriptor may name extent and parent files outside its own folder
    /// (`--allow-outside-extents`); refused otherwise.
    pub allow_outside_extents: bool,
}

impl VmSpec {
    /// A spec with ESX's defaults: zeroedthick disks, 256 MiB, one CPU, guest `otherGuest`.
    pub fn new(name: &str) -> VmSpec {
        VmSpec {
            name: name.to_owned(),
            datastore: None,
            disks: Vec::new(),
            format: vmdk::DiskFormat::ZeroedThick,
            folder: None,
            pool: None,
            guest_os: "otherGuest".to_owned(),
            memory_mb: 256,
            cpus: 1,
            ip: None,
            allow_outside_extents: false,
        }
    }
}

/// Removes the staging folder unless the create succeeded.
struct Staging {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a leftover hidden staging folder holds nothing registered.
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Host {
    /// Creates and registers a VM.
    ///
    /// # Errors
    /// [`Error::BadName`] (name, format), [`Error::UnknownDatastore`],
    /// [`Error::UnknownContainer`], [`Error::DuplicateName`], [`Error::AlreadyExists`],
    /// and disk errors; nothing is left behind on error.
    pub fn create_vm(&mut self, spec: &VmSpec, progress: &mut dyn vmdk::Progress) -> Result<Vm> {
        check_vm_name(&spec.name)?;
        use vmdk::DiskFormat as F;
        if !matches!(spec.format, F::Thin | F::ZeroedThick | F::EagerZeroedThick) {
            let name = spec.format.name();
            return Err(Error::bad_name(
                "disk format",
                &name,
                "VMs use thin, zeroedthick or eagerzeroedthick",
            ));
        }
        let ds = self.datastore(spec.datastore.as_deref().unwrap_or("datastore1"))?;
        let folder =
            self.container(ContainerKind::Folder, spec.folder.as_deref().unwrap_or("/"))?;
        let pool = self.container(ContainerKind::Pool, spec.pool.as_deref().unwrap_or("/"))?;
        if self.vms().0.iter().any(|vm| vm.name() == spec.name) {
            return Err(Error::DuplicateName {
                name: spec.name.clone(),
            });
        }
        let target = ds.path.join(&spec.name);
        if target.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists { path: target });
        }
        let staging_dir = ds.path.join(format!(
            ".{}.vcb-partial-{:08x}",
            spec.name,
            rand::random::<u32>()
        ));
        fs::create_dir(&staging_dir).map_err(|e| Error::io(&staging_dir, "create folder", e))?;
        let mut staging = Staging {
            dir: staging_dir,
            keep: false,
        };
        let nodes = make_disks(&staging.dir, spec, progress)?;
        let nvram = format!("{}.nvram", spec.name);
        write_atomic(&staging.dir.join(&nvram), b"")?;
        let vmx = build_vmx(spec, &nodes, &nvram)?;
        let vmx_name = format!("{}.vmx", spec.name);
        write_atomic(&staging.dir.join(&vmx_name), vmx.to_string().as_bytes())?;
        let dp = vmx::DatastorePath::new(&ds.name, &format!("{}/{vmx_name}", spec.name))
            .map_err(|e| Error::bad_name("VM name", &spec.name, e.to_string()))?;
        let staged = staging.dir.clone();
        let moref = self.update(|_, inventory| {
            if target.symlink_metadata().is_ok() {
                return Err(Error::AlreadyExists {
                    path: target.clone(),
                });
            }
            // A folder that appeared since the check is never replaced.
            fsio::rename_noreplace(&staged, &target).map_err(|e| match e {
                fsio::Error::Exists { path } => Error::AlreadyExists { path },
                e => e.into(),
            })?;
            sync_dir(&ds.path)?;
            Ok(VmRef(inventory.add(dp.to_string(), folder, pool)))
        })?;
        staging.keep = true;
        self.vm(moref)
    }
}

/// Checks a new VM's name: it becomes a folder and file names.
pub(crate) fn check_vm_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 80 {
        "longer than 80 bytes"
    } else if name.starts_with('.') {
        "starts with a dot"
    } else if name.contains(['/', '\\', '[', ']']) || name.contains(char::is_control) {
        "holds `/`, `\\`, `[`, `]` or a control character"
    } else if name.trim() != name {
        "starts or ends with white space"
    } else {
        return Ok(());
    };
    Err(Error::bad_name("VM name", name, reason))
}

/// The node of the `i`th disk: scsi0:0..15 without unit 7, then scsi1, ...
fn node_of(i: usize) -> Result<DiskNode> {
    let controller = u32::try_from(i / 15).ok().filter(|c| *c < 4);
    let unit = u32::try_from(i % 15).map(|u| if u >= 7 { u + 1 } else { u });
    match (controller, unit) {
        (Some(c), Ok(u)) => Ok(DiskNode::new(Bus::Scsi, c, u)),
        _ => Err(Error::bad_name(
            "disk list",
            &i.to_string(),
            "at most 60 disks",
        )),
    }
}

/// Creates the disks in `dir`; returns each node with its file name.
fn make_disks(
    dir: &Path,
    spec: &VmSpec,
    progress: &mut dyn vmdk::Progress,
) -> Result<Vec<(DiskNode, String)>> {
    let mut out = Vec::new();
    for (i, source) in spec.disks.iter().enumerate() {
        let node = node_of(i)?;
        let file = if i == 0 {
            format!("{}.vmdk", spec.name)
        } else {
            format!("{}_{i}.vmdk", spec.name)
        };
        let path = dir.join(&file);
        match source {
            DiskSource::New { capacity_bytes } => {
                let cs = vmdk::CreateSpec::new(*capacity_bytes, spec.format.clone());
                vmdk::create(&path, &cs).map_err(|e| Error::disk("create disk", e))?;
            }
            DiskSource::Import { source } => {
                // Only the user can vouch for a descriptor naming files elsewhere.
                let confinement = if spec.allow_outside_extents {
                    vmdk::Confinement::Anywhere
                } else {
                    vmdk::Confinement::Folder
                };
                let opts = vmdk::OpenOptions::read_only().confined(confinement);
                let mut src = match vmdk::Disk::open(source, &opts) {
                    Err(vmdk::Error::NotVmdk { .. }) => vmdk::Disk::open_raw(source),
                    other => other,
                }
                .map_err(|e| Error::disk("open disk to import", e))?;
                let cs = vmdk::CreateSpec::new(0, spec.format.clone());
                vmdk::convert(&mut src, &path, &cs, progress)
                    .map_err(|e| Error::disk(format!("import {}", source.display()), e))?;
            }
            DiskSource::Rdm { device, physical } => {
                let format = if *physical {
                    vmdk::DiskFormat::RdmPassthrough(device.clone())
                } else {
                    vmdk::DiskFormat::Rdm(device.clone())
                };
                vmdk::create(&path, &vmdk::CreateSpec::new(0, format))
                    .map_err(|e| Error::disk("create raw device mapping", e))?;
            }
        }
        out.push((node, file));
    }
    Ok(out)
}

/// The .vmx of a new VM, in the key order ESX writes.
fn build_vmx(spec: &VmSpec, disks: &[(DiskNode, String)], nvram: &str) -> Result<VmConfig> {
    let uuid = Uuid::random();
    let mac = uuid.as_bytes();
    let mut d = Dict::new(Style::Vmx);
    let mut entries: Vec<(String, String)> = vec![
        (".encoding".into(), "UTF-8".into()),
        ("config.version".into(), "8".into()),
        ("virtualHW.version".into(), "7".into()),
        ("displayName".into(), spec.name.clone()),
        ("guestOS".into(), spec.guest_os.clone()),
        ("memsize".into(), spec.memory_mb.to_string()),
        ("numvcpus".into(), spec.cpus.to_string()),
        ("uuid.bios".into(), uuid.to_vmx_string()),
        ("uuid.location".into(), Uuid::random().to_vmx_string()),
        ("nvram".into(), nvram.to_owned()),
        ("pciBridge0.present".into(), "TRUE".into()),
        ("floppy0.present".into(), "FALSE".into()),
    ];
    let mut controllers: Vec<String> = disks.iter().map(|(n, _)| n.controller_key()).collect();
    controllers.dedup();
    for c in controllers {
        entries.push((format!("{c}.present"), "TRUE".into()));
        entries.push((format!("{c}.sharedBus"), "none".into()));
        entries.push((format!("{c}.virtualDev"), "lsilogic".into()));
        for (node, file) in disks.iter().filter(|(n, _)| n.controller_key() == c) {
            entries.push((format!("{node}.present"), "TRUE".into()));
            entries.push((format!("{node}.fileName"), file.clone()));
            entries.push((format!("{node}.deviceType"), "scsi-hardDisk".into()));
        }
    }
    entries.extend([
        ("ethernet0.present".into(), "TRUE".into()),
        ("ethernet0.virtualDev".into(), "e1000".into()),
        ("ethernet0.networkName".into(), "VM Network".into()),
        ("ethernet0.addressType".into(), "generated".into()),
        (
            "ethernet0.generatedAddress".into(),
            format!("00:0c:29:{:02x}:{:02x}:{:02x}", mac[13], mac[14], mac[15]),
        ),
        ("tools.syncTime".into(), "FALSE".into()),
    ]);
    if let Some(ip) = spec.ip.as_deref().filter(|s| !s.is_empty()) {
        entries.push(("guestinfo.ip".into(), ip.to_owned()));
    }
    for (k, v) in &entries {
        d.set(k, v)
            .map_err(|e| Error::bad_name("VM setting", k, e.to_string()))?;
    }
    VmConfig::from_dict(&d).map_err(|e| Error::bad_name("VM setting", &spec.name, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names() {
        for ok in ["vm37", "Virtual Machine 37", "web-01_a"] {
            check_vm_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "[ds]",
            "tab\there",
            " lead",
            &"x".repeat(81),
        ] {
            assert!(
                matches!(check_vm_name(bad), Err(Error::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nodes_skip_the_controller_unit() {
        let n: Vec<String> = (0..17).map(|i| node_of(i).unwrap().to_string()).collect();
        assert_eq!(n[6], "scsi0:6");
        assert_eq!(n[7], "scsi0:8");
        assert_eq!(n[14], "scsi0:15");
        assert_eq!(n[15], "scsi1:0");
        assert!(node_of(60).is_err());
    }

    #[test]
    fn vmx_has_the_esx_keys() {
        let mut spec = VmSpec::new("vm37");
        spec.ip = Some("10.0.0.7".into());
        let disks = vec![
            (node_of(0).unwrap(), "vm37.vmdk".to_owned()),
            (node_of(1).unwrap(), "vm37_1.vmdk".into()),
        ];
        let c = build_vmx(&spec, &disks, "vm37.nvram").unwrap();
        assert_eq!(c.display_name(), Some("vm37"));
        assert_eq!(c.disks().len(), 2);
        assert_eq!(c.disks()[1].file_name, "vm37_1.vmdk");
        assert_eq!(c.disks()[0].virtual_dev.as_deref(), Some("lsilogic"));
        assert_eq!(c.guest_ip(), Some("10.0.0.7"));
        assert!(c.uuid_bios().is_some());
        let text = c.to_string();
        assert!(
            text.starts_with(".encoding = \"UTF-8\"\nconfig.version = \"8\"\n"),
            "{text}"
        );
    }
}
