//! `inventory.toml`: the registered VMs.
//!
//! ```toml
//! version = 1
//!
//! next_moref = 18
//!
//! [[vm]]
//! vmx = "[datastore1] vm37/vm37.vmx"
//! folder = "/Production"
//! pool = "/"
//! moref = 16
//! ```
//! Each VM keeps the moref it was registered with; `next_moref` only grows, so a moref
//! is never handed to another VM, even after its VM was unregistered (scripts that
//! looked a VM up must never act on a different one). Inventories written before morefs
//! were stored get them by position from [`FIRST_MOREF`] when loaded.

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
    /// The VM's moref, assigned at registration and never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moref: Option<u32>,
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
    /// The moref the next registered VM gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_moref: Option<u32>,
    /// The VMs, in registration order.
    #[serde(default, rename = "vm")]
    pub vms: Vec<InventoryEntry>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            version: CONFIG_VERSION,
            next_moref: None,
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
        let mut inv: Inventory =
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
        inv.assign_morefs(path)?;
        Ok(inv)
    }

    /// Gives entries without a moref one (by position when none has one: files written
    /// before morefs were stored) and checks that morefs are unique.
    fn assign_morefs(&mut self, path: &Path) -> Result<()> {
        if self.vms.iter().all(|e| e.moref.is_none()) {
            for (i, e) in self.vms.iter_mut().enumerate() {
                e.moref = Some(FIRST_MOREF.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..self.vms.len() {
            let moref = match self.vms[i].moref {
                Some(m) => m,
                None => {
                    let m = self.take_moref();
                    self.vms[i].moref = Some(m);
                    m
                }
            };
            if !seen.insert(moref) {
                return Err(Error::bad_file(
                    path,
                    format!("moref {moref} is used twice"),
                ));
            }
        }
        let floor = self.floor();
        self.next_moref = Some(self.next_moref.unwrap_or(floor).max(floor));
        Ok(())
    }

    /// One past the highest moref in use (at least [`FIRST_MOREF`]).
    fn floor(&self) -> u32 {
        self.vms
            .iter()
            .filter_map(|e| e.moref)
            .max()
            .map_or(FIRST_MOREF, |m| m.saturating_add(1))
    }

    /// Hands out the next moref.
    fn take_moref(&mut self) -> u32 {
        let m = self.next_moref.unwrap_or(FIRST_MOREF).max(self.floor());
        self.next_moref = Some(m.saturating_add(1));
        m
    }

    /// Adds a VM and returns its new moref.
    pub fn add(&mut self, vmx: String, folder: String, pool: String) -> u32 {
        let moref = self.take_moref();
        self.vms.push(InventoryEntry {
            vmx,
            folder,
            pool,
            moref: Some(moref),
        });
        moref
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        // Serialising plain strings and vectors cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The moref of the entry at `index` (every loaded entry has one).
    pub fn moref_at(&self, index: usize) -> u32 {
        self.vms
            .get(index)
            .and_then(|e| e.moref)
            .unwrap_or(u32::MAX)
    }

    /// The index of the entry with `moref`.
    pub fn index_of(&self, moref: u32) -> Option<usize> {
        self.vms.iter().position(|e| e.moref == Some(moref))
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
                    moref: Some(16),
                },
                InventoryEntry {
                    vmx: "[ds] b/b.vmx".into(),
                    folder: "/P".into(),
                    pool: "/G".into(),
                    moref: Some(17),
                },
            ],
            next_moref: Some(18),
        };
        let back = Inventory::parse(&inv.to_toml(), Path::new("i.toml")).unwrap();
        assert_eq!(back, inv);
        assert_eq!(back.moref_at(1), 17);
        assert_eq!(back.index_of(17), Some(1));
        assert_eq!(back.index_of(18), None);
        assert_eq!(back.index_of(3), None);
        let minimal = Inventory::parse(
            "version = 1\n[[vm]]\nvmx = \"[ds] a/a.vmx\"\n",
            Path::new("i"),
        )
        .unwrap();
        assert_eq!(minimal.vms[0].folder, "/");
        assert_eq!(minimal.moref_at(0), FIRST_MOREF);
    }

    #[test]
    fn issue_10_morefs_are_never_reused() {
        let mut inv = Inventory::default();
        let a = inv.add("[ds] a/a.vmx".into(), "/".into(), "/".into());
        let b = inv.add("[ds] b/b.vmx".into(), "/".into(), "/".into());
        inv.vms.retain(|e| e.moref != Some(a));
        let back = Inventory::parse(&inv.to_toml(), Path::new("i")).unwrap();
        assert_eq!(back.index_of(b), Some(0), "b keeps its moref");
        let mut back = back;
        let c = back.add("[ds] c/c.vmx".into(), "/".into(), "/".into());
        assert!(c > b && c != a, "{a} {b} {c}");
        // Even after the highest one goes, its number is not handed out again.
        back.vms.retain(|e| e.moref != Some(c));
        let mut again = Inventory::parse(&back.to_toml(), Path::new("i")).unwrap();
        assert!(again.add("[ds] d/d.vmx".into(), "/".into(), "/".into()) > c);
        let dup = "version = 1\n[[vm]]\nvmx = \"[ds] a/a.vmx\"\nmoref = 20\n[[vm]]\nvmx = \"[ds] b/b.vmx\"\nmoref = 20\n";
        assert!(Inventory::parse(dup, Path::new("i")).is_err());
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
