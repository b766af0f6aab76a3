//! [`Catalog`]: the catalog a full-VM backup writes beside the files it saved.
//!
//! ```text
//! version= 1                                  major version; an unknown one is refused
//! state= poweredOn                            poweredOn | poweredOff | suspended
//! display name= "vm37"
//! uuid= "564d78a1-8c1c-59b4-fa02-be14138797be"
//! host= "esx1.example.com"
//! ipaddr= "10.17.5.31"
//! folder path= "/ha-datacenter/vm/Production"
//! resourcepool= "/ha-datacenter/host/esx1.example.com/Resources/Gold"
//! config.vmx= "[datastore1] vm37/vm37.vmx"
//! config.suspenddir= "[datastore1] vm37/"
//! config.logdir= "[datastore1] vm37/"
//! timestamp= 1700000000                       backup time, seconds since the Unix epoch
//! tool version= "vcb 0.1.0"
//! quiesced= "yes"                             yes | no
//! disk.scsi0:0.diskname= "[datastore1] vm37/vm37.vmdk"
//! disk.scsi0:0.filename= "scsi0-0-0-vm37.vmdk"  name inside the backup
//! disk.scsi0:0.format= "thin"                 original provisioning, used on restore
//! disk.scsi0:0.capacity= 8589934592           bytes
//! disk.scsi0:0.changeid= "52b1.../4"         changed-block tracking ID (optional)
//! disk.scsi0:0.parentbackup= "vm37-full"      incremental: the parent disk's backup
//!                                             folder, beside this one (optional)
//! disk.scsi0:1.backedup= "no"                 a physical RDM, not saved...
//! disk.scsi0:1.reason= "physical compatibility RDM"  ...and why
//! disk.scsi0:1.rdmdevice= "/dev/sdb"
//! file.0.name= "vm37.vmx"                     every file in the backup, with
//! file.0.size= 2841                           its size in bytes and
//! file.0.sha256= "9f86d0..."                  its SHA-256 (64 hex digits)
//! ```
//!
//! Every path in a catalog is untrusted: file names must pass
//! [`validate_relative_name`](crate::validate_relative_name) and datastore paths
//! [`DatastorePath`]'s rules, both on read and on write.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::keys::strip_prefix_ci;
use crate::node::parse_canonical_u32;
use crate::{validate_relative_name, DatastorePath, Dict, DiskNode, Error, Style, Uuid};

mod read;
mod write;

/// The catalog major version this build reads and writes.
pub const CATALOG_VERSION: u32 = 1;

/// A VM's power state at backup time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// `poweredOn`.
    PoweredOn,
    /// `poweredOff`.
    PoweredOff,
    /// `suspended`.
    Suspended,
}

impl PowerState {
    /// The catalog spelling: `poweredOn`, `poweredOff` or `suspended`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::PoweredOn => "poweredOn",
            PowerState::PoweredOff => "poweredOff",
            PowerState::Suspended => "suspended",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PowerState {
    type Err = Error;

    /// Parses the catalog spelling, in any case.
    fn from_str(s: &str) -> Result<PowerState, Error> {
        [
            PowerState::PoweredOn,
            PowerState::PoweredOff,
            PowerState::Suspended,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            Error::invalid_value(0, "state", s, "expected poweredOn, poweredOff or suspended")
        })
    }
}

/// One virtual disk of the backed-up VM (`disk.<node>.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogDisk {
    /// Where the disk was attached.
    pub node: DiskNode,
    /// `diskname`: the disk's original datastore path.
    pub diskname: Option<DatastorePath>,
    /// `filename`: the disk's file name inside the backup; required when `backed_up`.
    pub filename: Option<String>,
    /// `format`: the original provisioning (`thin`, `zeroedthick`...).
    pub format: Option<String>,
    /// `capacity`: the disk's size in bytes.
    pub capacity_bytes: Option<u64>,
    /// False (`backedup= "no"`) for a disk that was skipped, such as a physical RDM.
    pub backed_up: bool,
    /// `reason`: why the disk was skipped.
    pub reason: Option<String>,
    /// `rdmdevice`: the raw device an RDM maps.
    pub rdm_device: Option<String>,
    /// `changeid`: the disk's changed-block tracking ID as this backup holds it.
    pub change_id: Option<String>,
    /// `parentbackup`: for an incremental or differential export, the backup folder
    /// (beside this one: a plain folder name) whose disk at the same node is the parent
    /// of this backup's disk, which holds only what changed since.
    pub parent_backup: Option<String>,
}

impl CatalogDisk {
    /// A backed-up disk at `node` with nothing else known yet.
    pub fn new(node: DiskNode) -> CatalogDisk {
        CatalogDisk {
            node,
            diskname: None,
            filename: None,
            format: None,
            capacity_bytes: None,
            backed_up: true,
            reason: None,
            rdm_device: None,
            change_id: None,
            parent_backup: None,
        }
    }
}

/// One file of the backup (`file.N.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFile {
    /// `name`: relative to the backup folder.
    pub name: String,
    /// `size`: in bytes.
    pub size_bytes: u64,
    /// `sha256`: the SHA-256 of the file's content.
    pub sha256: [u8; 32],
}

impl CatalogFile {
    /// The SHA-256 as 64 lowercase hex digits, as `sha256sum` prints it.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A backup catalog: typed fields over the [`Dict`] they were read from.
///
/// [`Catalog::to_dict`] writes the fields back into that dictionary in place, so comments
/// and keys this crate does not know survive a read-modify-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// `state`: the power state at backup time.
    pub state: PowerState,
    /// `display name`.
    pub display_name: String,
    /// `uuid`: the VM's BIOS UUID.
    pub uuid: Option<Uuid>,
    /// `host`: the host the VM ran on.
    pub host: Option<String>,
    /// `ipaddr`: the guest's address.
    pub ipaddr: Option<String>,
    /// `folder path`: the VM's inventory folder.
    pub folder_path: Option<String>,
    /// `resourcepool`: the VM's resource pool.
    pub resource_pool: Option<String>,
    /// `config.vmx`: the .vmx's datastore path.
    pub config_vmx: Option<DatastorePath>,
    /// `config.suspenddir`: where the VM kept its suspend state.
    pub config_suspend_dir: Option<DatastorePath>,
    /// `config.logdir`: where the VM kept its logs.
    pub config_log_dir: Option<DatastorePath>,
    /// `timestamp`: backup time, seconds since the Unix epoch.
    pub timestamp_unix_secs: Option<u64>,
    /// `tool version`: the program that wrote the backup.
    pub tool_version: Option<String>,
    /// `quiesced`: whether the guest was quiesced for the snapshot.
    pub quiesced: Option<bool>,
    /// The VM's disks, ordered by node.
    pub disks: Vec<CatalogDisk>,
    /// Every file in the backup.
    pub files: Vec<CatalogFile>,
    dict: Dict,
}

impl Catalog {
    /// Whether this is a backup of the VM with `uuid` and display name `name`: the
    /// uuids decide when both are known, else the names.
    pub fn is_backup_of(&self, uuid: Option<Uuid>, name: &str) -> bool {
        match (self.uuid, uuid) {
            (Some(a), Some(b)) => a == b,
            _ => self.display_name == name,
        }
    }

    /// A new catalog with nothing but a name and a state; it writes in [`Style::Catalog`].
    pub fn new(display_name: &str, state: PowerState) -> Catalog {
        Catalog {
            state,
            display_name: display_name.to_owned(),
            uuid: None,
            host: None,
            ipaddr: None,
            folder_path: None,
            resource_pool: None,
            config_vmx: None,
            config_suspend_dir: None,
            config_log_dir: None,
            timestamp_unix_secs: None,
            tool_version: None,
            quiesced: None,
            disks: Vec::new(),
            files: Vec::new(),
            dict: Dict::new(Style::Catalog),
        }
    }

    /// Reads and checks a catalog.
    ///
    /// # Errors
    /// [`Error::MissingKey`] (`version`, `state`, `display name`, a file's `name`, `size`
    /// or `sha256`, a backed-up disk's `filename`), [`Error::UnsupportedVersion`],
    /// [`Error::InvalidValue`] (including unsafe file names and bad datastore paths, with
    /// the reason) and [`Error::DuplicateFileName`].
    pub fn from_dict(dict: &Dict) -> Result<Catalog, Error> {
        read::from_dict(dict)
    }

    /// The catalog's dictionary with every field written back in place: changed values
    /// are replaced where they stand, new ones appended, cleared ones removed, and the
    /// `file.N` entries renumbered densely.
    ///
    /// # Errors
    /// [`Error::UnsafeName`] or [`Error::DuplicateFileName`] for file names the reader
    /// would refuse; [`Error::LineTooLong`] for an overlong value.
    pub fn to_dict(&self) -> Result<Dict, Error> {
        write::to_dict(self)
    }

    /// The file entry named `name`.
    pub fn file(&self, name: &str) -> Option<&CatalogFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// For `disk.<node>.<field>`: the node text and the field.
fn disk_key(key: &str) -> Option<(&str, &str)> {
    strip_prefix_ci(key, "disk.")?.rsplit_once('.')
}

/// For `file.<N>.<field>`: N and the field; `Some(Err)` if N is not a canonical number.
fn file_key(key: &str) -> Option<Result<(u32, &str), ()>> {
    let (index, field) = strip_prefix_ci(key, "file.")?.split_once('.')?;
    Some(parse_canonical_u32(index).map(|n| (n, field)).ok_or(()))
}

/// Checks every file name and disk file name, and that file names are unique.
fn check_names<'a>(
    files: impl Iterator<Item = &'a str>,
    mut disks: impl Iterator<Item = &'a str>,
) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for name in files {
        validate_relative_name(name)?;
        if !seen.insert(name) {
            return Err(Error::DuplicateFileName {
                name: name.to_owned(),
            });
        }
    }
    disks.try_for_each(validate_relative_name)
}

/// Parses 64 hex digits.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
