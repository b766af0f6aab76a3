//! Reading a backup's catalog and checking every file against it before anything is
//! written on the target.

use crate::dest::{Destination, CATALOG_NAME};
use crate::error::{Error, Result};
use crate::hash::{hash_reader, to_hex};
use std::io::Read;
use std::path::Path;

/// Largest catalog accepted (a catalog is a few kilobytes).
const MAX_CATALOG_BYTES: u64 = 4 << 20;

/// Read and parse the catalog of the backup in `src`, refusing an incomplete backup.
///
/// # Errors
/// [`Error::IncompleteBackup`], [`Error::Dict`] for a malformed catalog (with the line).
pub fn read_catalog(src: &dyn Destination) -> Result<vmx::Catalog> {
    src.check_complete()?;
    let location = format!("{}/{CATALOG_NAME}", src.location());
    let mut text = Vec::new();
    src.get(CATALOG_NAME)?
        .take(MAX_CATALOG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(&location, "read", e))?;
    if text.len() as u64 > MAX_CATALOG_BYTES {
        return Err(Error::BadCatalog {
            location,
            reason: format!("larger than {MAX_CATALOG_BYTES} bytes"),
        });
    }
    parse_catalog(&text, Path::new(&location))
}

/// Parse catalog bytes read from `path` (the backup's catalog or an alternate one).
///
/// # Errors
/// [`Error::Dict`] naming `path`.
pub fn parse_catalog(bytes: &[u8], path: &Path) -> Result<vmx::Catalog> {
    let dict = vmx::Dict::parse_bytes(bytes).map_err(|e| Error::dict(path, e))?;
    vmx::Catalog::from_dict(&dict).map_err(|e| Error::dict(path, e))
}

/// Check that every file the catalog lists is in `src` with the recorded size and
/// SHA-256, and that every backed-up disk's file is listed. Returns the number of files.
///
/// # Errors
/// [`Error::MissingFile`], [`Error::Tampered`] naming the file, [`Error::BadCatalog`].
pub fn verify(src: &dyn Destination, catalog: &vmx::Catalog) -> Result<usize> {
    let location = src.location();
    let present = src.list()?;
    for disk in catalog.disks.iter().filter(|d| d.backed_up) {
        let Some(name) = disk.filename.as_deref() else {
            return Err(Error::BadCatalog {
                location: location.clone(),
                reason: format!("disk {} has no filename", disk.node),
            });
        };
        if catalog.file(name).is_none() {
            return Err(Error::BadCatalog {
                location: location.clone(),
                reason: format!("disk file {name:?} is not among the catalog's files"),
            });
        }
    }
    for file in &catalog.files {
        let Some(entry) = present.iter().find(|e| e.name == file.name) else {
            return Err(Error::MissingFile {
                location: location.clone(),
                name: file.name.clone(),
            });
        };
        let tampered = |what, expected: String, found: String| Error::Tampered {
            location: location.clone(),
            name: file.name.clone(),
            what,
            expected,
            found,
        };
        if entry.size_bytes != file.size_bytes {
            return Err(tampered(
                "size",
                file.size_bytes.to_string(),
                entry.size_bytes.to_string(),
            ));
        }
        let mut r = src.get(&file.name)?;
        let (size, sum) = hash_reader(&mut r, Path::new(&format!("{location}/{}", file.name)))?;
        if size != file.size_bytes {
            return Err(tampered(
                "size",
                file.size_bytes.to_string(),
                size.to_string(),
            ));
        }
        if sum != file.sha256 {
            return Err(tampered("sha256", file.sha256_hex(), to_hex(&sum)));
        }
    }
    Ok(catalog.files.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::LocalDir;

    /// A complete backup folder holding `a.txt` ("hello") and a catalog listing it.
    fn backup(dir: &Path) -> LocalDir {
        let mut d = LocalDir::new(dir.join("b"));
        d.create().unwrap();
        let info = d.put("a.txt", &mut &b"hello"[..]).unwrap();
        let mut c = vmx::Catalog::new("vm", vmx::PowerState::PoweredOff);
        c.files.push(vmx::CatalogFile {
            name: "a.txt".into(),
            size_bytes: info.size_bytes,
            sha256: info.sha256,
        });
        let text = c.to_dict().unwrap().to_string();
        d.put(CATALOG_NAME, &mut text.as_bytes()).unwrap();
        d.mark_complete().unwrap();
        d
    }

    #[test]
    fn a_good_backup_verifies() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        let c = read_catalog(&d).unwrap();
        assert_eq!(verify(&d, &c).unwrap(), 1);
    }

    #[test]
    fn a_changed_byte_is_tampering() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        std::fs::write(d.dir().join("a.txt"), b"hellO").unwrap();
        let c = read_catalog(&d).unwrap();
        let e = verify(&d, &c).unwrap_err();
        assert!(matches!(e, Error::Tampered { what: "sha256", ref name, .. } if name == "a.txt"));
        std::fs::write(d.dir().join("a.txt"), b"hello!").unwrap();
        assert!(matches!(
            verify(&d, &c),
            Err(Error::Tampered { what: "size", .. })
        ));
        std::fs::remove_file(d.dir().join("a.txt")).unwrap();
        assert!(matches!(verify(&d, &c), Err(Error::MissingFile { .. })));
    }

    #[test]
    fn unsafe_names_and_incomplete_backups_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        let text = std::fs::read_to_string(d.dir().join(CATALOG_NAME)).unwrap();
        std::fs::write(
            d.dir().join(CATALOG_NAME),
            text.replace("\"a.txt\"", "\"../a.txt\""),
        )
        .unwrap();
        assert!(matches!(read_catalog(&d), Err(Error::Dict { .. })));
        std::fs::write(d.dir().join(crate::dest::INCOMPLETE_MARKER), "").unwrap();
        assert!(matches!(
            read_catalog(&d),
            Err(Error::IncompleteBackup { .. })
        ));
    }
}
