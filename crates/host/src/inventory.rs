//! `inventory.toml`: the registered VMs.
//!
//! ```toml
//! version = 1
//!
//! [[vm]]
//! vmx = "[datastore1] vm37/vm37.vmx"
//! folder = "/Production"
//! pool = "/"
//! ```
//! MoRefs are not stored: they are numbers handed out in file order when the inventory
//! is loaded, starting at [`FIRST_MOREF`], and may change when VMs are unregistered.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{one_line, CONFIG_VERSION};
use crate::error::{Error, Result};

/// The moref of the first VM in the inventory (vSphere's hosts start near `vm-16` too).
pub const FIRST_MOREF: u32 = 16;

/// One registered VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryEntry {
    /// The .vmx file as a datastore path (`[datastore1] vm37/vm37.vmx`).
    pub vmx: String,
    /// The VM folder (normalised; `/` is the root).
    #[serde(default = "root_container")]
    pub folder: String,
    /// The resource pool (normalised; `/` is the root pool).
    #[serde(default = "root_container")]
    pub pool: String,
}

fn root_container() -> String {
    "/".to_owned()
}

/// The contents of `inventory.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// File format version.
    pub version: u32,
    /// The VMs, in moref order.
    #[serde(default, rename = "vm")]
    pub vms: Vec<InventoryEntry>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            version: CONFIG_VERSION,
            vms: Vec::new(),
        }
    }
}

impl Inventory {
    /// Parses and checks `inventory.toml` text read from `path`: every .vmx must be a
    /// datastore path and appear once.
    ///
    /// # Errors
    /// [`Error::BadFile`], [`Error::UnsupportedVersion`].
    pub fn parse(text: &str, path: &Path) -> Result<Inventory> {
        let inv: Inventory =
            toml::from_str(text).map_err(|e| Error::bad_file(path, one_line(&e.to_string())))?;
        if inv.version != CONFIG_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: inv.version,
                supported: CONFIG_VERSION,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for e in &inv.vms {
            let dp: vmx::DatastorePath = e
                .vmx
                .parse()
                .map_err(|err: vmx::Error| Error::bad_file(path, err.to_string()))?;
            if dp.file_name().is_none() {
                return Err(Error::bad_file(path, format!("{}: not a file", e.vmx)));
            }
            if !seen.insert(dp.to_string()) {
                return Err(Error::bad_file(path, format!("{} is listed twice", e.vmx)));
            }
        }
        Ok(inv)
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        // Serialising plain strings and vectors cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The moref of the entry at `index`.
    pub fn moref_of(index: usize) -> u32 {
        FIRST_MOREF.saturating_add(u32::try_from(index).unwrap_or(u32::MAX))
    }

    /// The index of the entry with `moref`.
    pub fn index_of(&self, moref: u32) -> Option<usize> {
        let i = usize::try_from(moref.checked_sub(FIRST_MOREF)?).ok()?;
        (i < self.vms.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_numbers_morefs() {
        let inv = Inventory {
            version: 1,
            vms: vec![
                InventoryEntry {
                    vmx: "[ds] a/a.vmx".into(),
                    folder: "/".into(),
                    pool: "/".into(),
                },
                InventoryEntry {
                    vmx: "[ds] b/b.vmx".into(),
                    folder: "/P".into(),
                    pool: "/G".into(),
                },
            ],
        };
        let back = Inventory::parse(&inv.to_toml(), Path::new("i.toml")).unwrap();
        assert_eq!(back, inv);
        assert_eq!(Inventory::moref_of(1), 17);
        assert_eq!(back.index_of(17), Some(1));
        assert_eq!(back.index_of(18), None);
        assert_eq!(back.index_of(3), None);
        let minimal = Inventory::parse(
            "version = 1\n[[vm]]\nvmx = \"[ds] a/a.vmx\"\n",
            Path::new("i"),
        )
        .unwrap();
        assert_eq!(minimal.vms[0].folder, "/");
    }

    #[test]
    fn error_bad_file() {
        let dup = "version = 1\n[[vm]]\nvmx = \"[ds] a/a.vmx\"\n[[vm]]\nvmx = \"[ds]  a/a.vmx\"\n";
        let e = Inventory::parse(dup, Path::new("i")).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let outside = "version = 1\n[[vm]]\nvmx = \"[ds] ../etc/x.vmx\"\n";
        assert!(matches!(
            Inventory::parse(outside, Path::new("i")),
            Err(Error::BadFile { .. })
        ));
        assert!(matches!(
            Inventory::parse("version = 2\n", Path::new("i")),
            Err(Error::UnsupportedVersion { .. })
        ));
    }
}
