//! [`DiskNode`]: where a virtual disk is attached (`scsi0:1`).

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A virtual disk controller bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bus {
    /// `scsi`: LSI Logic, BusLogic, LSI SAS or PVSCSI (see `scsiN.virtualDev`).
    Scsi,
    /// `ide`.
    Ide,
    /// `sata` (AHCI).
    Sata,
    /// `nvme`.
    Nvme,
}

impl Bus {
    /// Every bus, in the order disks are listed.
    pub const ALL: [Bus; 4] = [Bus::Scsi, Bus::Ide, Bus::Sata, Bus::Nvme];

    /// The key prefix: `scsi`, `ide`, `sata` or `nvme`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Scsi => "scsi",
            Bus::Ide => "ide",
            Bus::Sata => "sata",
            Bus::Nvme => "nvme",
        }
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A disk's place: bus, controller number and unit number, written `scsi0:1`.
///
/// Parsing accepts any letter case (keys are case-insensitive) but only canonical
/// numbers (no sign, no leading zeros), so each node has exactly one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskNode {
    /// The bus.
    pub bus: Bus,
    /// The controller number on that bus (`scsi1` is 1).
    pub controller: u32,
    /// The unit number on that controller.
    pub unit: u32,
}

impl DiskNode {
    /// A node.
    pub fn new(bus: Bus, controller: u32, unit: u32) -> DiskNode {
        DiskNode {
            bus,
            controller,
            unit,
        }
    }

    /// The node with `-` instead of `:` (`scsi0-1`), for file names.
    pub fn file_prefix(&self) -> String {
        format!("{}{}-{}", self.bus, self.controller, self.unit)
    }

    /// The controller's key prefix (`scsi0`).
    pub fn controller_key(&self) -> String {
        format!("{}{}", self.bus, self.controller)
    }
}

impl fmt::Display for DiskNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}:{}", self.bus, self.controller, self.unit)
    }
}

/// A canonical decimal number: digits only, no leading zero unless it is `0`.
pub(crate) fn parse_canonical_u32(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

impl FromStr for DiskNode {
    type Err = Error;

    fn from_str(s: &str) -> Result<DiskNode, Error> {
        let bad = || Error::BadDiskNode { text: s.to_owned() };
        let (head, unit) = s.split_once(':').ok_or_else(bad)?;
        let digits = head.find(|c: char| c.is_ascii_digit()).ok_or_else(bad)?;
        let (name, controller) = head.split_at(digits);
        let bus = Bus::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(bad)?;
        Ok(DiskNode {
            bus,
            controller: parse_canonical_u32(controller).ok_or_else(bad)?,
            unit: parse_canonical_u32(unit).ok_or_else(bad)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let n: DiskNode = "scsi0:1".parse().unwrap();
        assert_eq!(n, DiskNode::new(Bus::Scsi, 0, 1));
        assert_eq!(n.to_string(), "scsi0:1");
        assert_eq!(n.file_prefix(), "scsi0-1");
        assert_eq!(n.controller_key(), "scsi0");
        let n: DiskNode = "SATA12:29".parse().unwrap();
        assert_eq!(n.to_string(), "sata12:29");
        assert_eq!("nvme0:0".parse::<DiskNode>().unwrap().bus, Bus::Nvme);
        assert_eq!("ide1:0".parse::<DiskNode>().unwrap().bus, Bus::Ide);
    }

    #[test]
    fn orders_by_bus_controller_unit() {
        let mut v: Vec<DiskNode> = ["ide0:0", "scsi1:0", "scsi0:2", "scsi0:10"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["scsi0:2", "scsi0:10", "scsi1:0", "ide0:0"]);
    }

    #[test]
    fn error_bad_disk_node() {
        for s in [
            "",
            "scsi0",
            "scsi:0",
            "scsi0:",
            "usb0:0",
            "scsi00:0",
            "scsi0:01",
            "scsi+1:0",
            "scsi0:0:0",
            "scsi0:-1",
            "scsi99999999999:0",
        ] {
            assert!(
                matches!(s.parse::<DiskNode>(), Err(Error::BadDiskNode { .. })),
                "{s:?}"
            );
        }
    }
}
