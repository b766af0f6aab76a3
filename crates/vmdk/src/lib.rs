//! VMware virtual disks: open, read, write, create, convert, commit and check VMDK files
//! in every layout ESX and the hosted products use.
//!
//! # Model
//! A *disk* as a guest sees it is a [`Disk`]: a chain of *links*, top first. Each link is
//! one descriptor (a text file, or text embedded in a hosted sparse file) listing
//! *extents* laid end to end: flat files, hosted sparse ("KDMV") files, ESX redo logs
//! ("COWD"), zero extents, or device mappings. A byte of the disk is read from the first
//! link whose extent holds it as data or zero ([`BlockState`]); unallocated ranges fall
//! through to the parent.
//!
//! # Invariants
//! - Only the top link is ever opened for writing; parents are read-only and each child's
//!   `parentCID` must match its parent's CID, so a modified parent is detected.
//! - The top link gets a fresh CID before its first write of a session (as VMware does).
//! - Metadata is written after the data it points to: grain data, then grain tables, then
//!   redundant tables, then the header; descriptors are replaced atomically.
//! - File names from descriptors are confined to the descriptor's folder unless the caller
//!   passes [`OpenOptions::allow_outside_paths`].
//! - Every offset or size read from a file is checked before use; bad input is an
//!   [`Error`], never a panic or an unbounded allocation.
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod busy;
pub mod check;
pub mod confine;
mod convert;
pub mod cowd;
mod create;
pub mod ctk;
pub mod descriptor;
mod disk;
mod error;
pub mod export;
pub mod extent;
pub mod fileio;
pub mod flat;
mod inspect;
mod link;
pub mod magic;
mod ops;
pub mod progress;
pub mod replace;
pub mod sesparse;
mod source;
pub mod sparse;
pub mod stream;

pub use busy::{children_in_folder, locked_file, refuse_busy};
pub use check::CheckReport;
pub use confine::{Confinement, FileSource};
pub use convert::convert;
pub use create::{
    create, create_child, create_child_hinted, relative_hint, AdapterType, ChildFormat, CreateSpec,
    DiskFormat, PROVISIONING_KEY,
};
pub use descriptor::{CreateType, Descriptor};
pub use disk::{Disk, Run, MAX_CHAIN_DEPTH};
pub use error::{Error, Result};
pub use export::{export_sparse, DirSink, ExportSink};
pub use extent::{Backing, BlockState, Extent};
pub use inspect::{chain_consistent, check, info, rdm_target, DiskInfo, LinkInfo, RdmMode};
pub use link::{read_descriptor, write_descriptor, DescriptorStore, Link, OpenOptions};
pub use ops::{commit, delete, extend, inflate, link_files, punch_zero, rename};
pub use progress::{Progress, Warning};
pub use source::DiskSource;

/// Parse a size like `10G`, `512m`, `100k`, `4096` (bytes), `2T`, `8s` (sectors).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || {
        Error::InvalidArgument(format!(
            "invalid size {s:?} (examples: 10G, 512m, 100k, 4096)"
        ))
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "s" => 512,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("100k").unwrap(), 100 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("8s").unwrap(), 4096);
        for bad in ["", "G", "10X", "-1G", "99999999999999999999T"] {
            assert!(
                matches!(parse_size(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
