//! VMware dictionary files: .vmx, .vmsd, .vmxf and vcb's backup catalog.
//!
//! # Model
//!
//! All these files are *dictionaries*: one `key = "value"` entry per line, with `#`
//! comment lines, an optional `#!/usr/bin/vmware` first line and an optional
//! `.encoding = "UTF-8"` entry. Users edit them by hand, so vcb changes them surgically.
//!
//! - [`Dict`] is the file. It keeps every line byte for byte (comments, blank lines,
//!   unknown keys, key case, spacing, CRLF endings, a missing final newline), so parsing
//!   and writing an unmodified file gives back the same text. Keys are matched
//!   ASCII-case-insensitively and must be unique; [`Dict::get`] returns values with their
//!   `|XX` escapes decoded (`"` is `|22`, `|` is `|7C`), and setters escape quotes,
//!   pipes and control characters. A replaced value keeps its line, key spelling and
//!   spacing; a new key is appended. [`Style`] selects how new entries look: `key =
//!   "value"` for VMware files, `key= "value"` (and bare numbers) for catalogs.
//! - Typed views read a `Dict` and write back by editing it, never by regenerating the
//!   file:
//!   - [`VmConfig`] (.vmx): name, guest OS, memory, CPUs, [`Uuid`], folders, guest IP and
//!     the [`VmDisk`]s at each [`DiskNode`]; setters edit the dictionary in place.
//!   - [`SnapshotDb`] (.vmsd): the [`Snapshot`] tree, checked on load (unique uids,
//!     existing parents, no cycles, consistent count); [`SnapshotDb::to_dict`] writes the
//!     snapshot section afresh where the old one stood and keeps everything else.
//!   - [`Catalog`] (a backup's catalog): VM identity, [`PowerState`], [`DatastorePath`]s,
//!     [`CatalogDisk`]s and a [`CatalogFile`] (size and SHA-256) for every file saved.
//!
//! # Invariants
//!
//! - Whatever a `Dict` writes, [`Dict::parse`] reads back to the same entries: setters
//!   refuse keys that would not survive ([`Error::InvalidKey`]) and lines longer than
//!   [`MAX_LINE_BYTES`].
//! - Input is untrusted. Parsing refuses more than [`MAX_INPUT_BYTES`], lines over
//!   [`MAX_LINE_BYTES`], duplicate keys, malformed lines and invalid UTF-8, with the
//!   line number, and never panics. Snapshot trees are walked iteratively.
//! - Paths are untrusted. [`validate_relative_name`] refuses names that could leave their
//!   folder; [`DatastorePath`] refuses `..`; [`Catalog`] applies both on read and write.
//!   File names in a .vmx or .vmsd are returned as written: the caller confines them.
//!
//! The crate does no I/O: callers read and atomically replace the files, and add the
//! file's path when reporting an [`Error`].
//!
//! ```
//! # fn main() -> Result<(), vmx::Error> {
//! let text = "displayName = \"vm37\"\n# comment\nscsi0:0.present = \"TRUE\"\n\
//!             scsi0:0.fileName = \"vm37.vmdk\"\n";
//! let mut vm = vmx::VmConfig::from_dict(&vmx::Dict::parse(text)?)?;
//! assert_eq!(vm.disks()[0].node.to_string(), "scsi0:0");
//! vm.set_disk_file("scsi0:0".parse()?, "vm37-000001.vmdk")?;
//! assert!(vm.to_string().contains("# comment\nscsi0:0.present"));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod catalog;
mod config;
mod dict;
mod error;
mod escape;
mod keys;
mod line;
mod node;
mod path;
mod snapshot;
mod uuid;

pub use catalog::{Catalog, CatalogDisk, CatalogFile, PowerState, CATALOG_VERSION};
pub use config::{VmConfig, VmDisk};
pub use dict::{Dict, Style, MAX_INPUT_BYTES, MAX_LINE_BYTES};
pub use error::Error;
pub use node::{Bus, DiskNode};
pub use path::{validate_relative_name, DatastorePath};
pub use snapshot::{Snapshot, SnapshotDb};
pub use uuid::Uuid;
