//! Host configuration backup: one self-describing TOML file holding the host's own
//! configuration (`host.toml`: name, datastores, folders, pools; `inventory.toml`; and
//! `backuptools.conf` when the root has one).
//!
//! ```toml
//! format = "vcb-host-config"
//! version = 1
//! host = "esx1"
//! created = 1732521600          # Unix seconds
//!
//! [[file]]
//! name = "host.toml"
//! sha256 = "9f86d0..."          # of the content's UTF-8 bytes
//! content = '''
//! ...'''
//! ```
//! TOML was chosen over tar so the bundle is readable and diffable and needs no new
//! dependency; every file it holds is small UTF-8 text. Restore checks the format, the
//! version (an unknown one is refused), the file names (only the three above), each
//! checksum, and that the configuration and inventory parse and agree, before it
//! replaces anything; files are then replaced atomically under the host lock.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{one_line, ContainerKind, HostConfig, MAX_CONFIG_BYTES};
use crate::error::{Error, Result};
use crate::fsutil::{now_secs, read_text_opt, write_atomic};
use crate::host::{HOST_FILE, INVENTORY_FILE};
use crate::inventory::Inventory;
use crate::lock::{FileLock, LockMode, LOCK_FILE_NAME};

/// The `format` value of a bundle.
const FORMAT: &str = "vcb-host-config";
/// The bundle version this build writes and reads.
const VERSION: u32 = 1;
/// The backup tools configuration file kept in the root.
pub const BACKUPTOOLS_CONF: &str = "backuptools.conf";
/// Files a bundle may hold, in the order restore writes them (`host.toml` last: its
/// presence marks an initialised host).
const FILES: [&str; 3] = [INVENTORY_FILE, BACKUPTOOLS_CONF, HOST_FILE];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: String,
    version: u32,
    host: String,
    created: u64,
    #[serde(rename = "file")]
    files: Vec<BundleFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    name: String,
    sha256: String,
    content: String,
}

/// What a backup saved or a restore brought back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleReport {
    /// The host's name in the bundle.
    pub host: String,
    /// The files, by name.
    pub files: Vec<String>,
    /// Things to look at after a restore (missing datastore folders or .vmx files).
    pub warnings: Vec<String>,
}

/// Saves the configuration of the host in `root` to `out` (replaced atomically).
///
/// # Errors
/// [`Error::NotInitialized`], file errors.
pub fn backup_config(root: &Path, out: &Path) -> Result<BundleReport> {
    let _lock = FileLock::acquire(&root.join(LOCK_FILE_NAME), LockMode::Wait)?;
    let host_text = read_text_opt(&root.join(HOST_FILE), MAX_CONFIG_BYTES)?.ok_or_else(|| {
        Error::NotInitialized {
            root: root.to_path_buf(),
        }
    })?;
    let config = HostConfig::parse(&host_text, &root.join(HOST_FILE))?;
    let mut files = Vec::new();
    for name in FILES {
        if let Some(content) = read_text_opt(&root.join(name), MAX_CONFIG_BYTES)? {
            files.push(BundleFile {
                name: name.to_owned(),
                sha256: sha256(&content),
                content,
            });
        }
    }
    let report = BundleReport {
        host: config.name.clone(),
        files: files.iter().map(|f| f.name.clone()).collect(),
        warnings: Vec::new(),
    };
    let bundle = Bundle {
        format: FORMAT.to_owned(),
        version: VERSION,
        host: config.name,
        created: now_secs(),
        files,
    };
    let text = toml::to_string_pretty(&bundle).map_err(|e| Error::bad_file(out, e.to_string()))?;
    // 0600: the bundle holds backuptools.conf, whose PASSWORD is a secret.
    fsio::write_private(out, text.as_bytes())?;
    Ok(report)
}

/// Checks the bundle at `bundle` and, only if all is well, replaces the configuration of
/// the host in `root` (created if needed) with it.
///
/// # Errors
/// [`Error::BadFile`] describing the first problem found; [`Error::UnsupportedVersion`];
/// file errors.
pub fn restore_config(root: &Path, bundle: &Path) -> Result<BundleReport> {
    let text = crate::fsutil::read_text(bundle, 4 * MAX_CONFIG_BYTES)?;
    let b: Bundle =
        toml::from_str(&text).map_err(|e| Error::bad_file(bundle, one_line(&e.to_string())))?;
    if b.format != FORMAT {
        return Err(Error::bad_file(
            bundle,
            format!("not a host configuration bundle (format {:?})", b.format),
        ));
    }
    if b.version != VERSION {
        return Err(Error::UnsupportedVersion {
            path: bundle.to_path_buf(),
            found: b.version,
            supported: VERSION,
        });
    }
    let mut seen = BTreeSet::new();
    for f in &b.files {
        if !FILES.contains(&f.name.as_str()) {
            return Err(Error::bad_file(
                bundle,
                format!("unexpected file {:?} (refused)", f.name),
            ));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(Error::bad_file(
                bundle,
                format!("file {:?} appears twice", f.name),
            ));
        }
        if sha256(&f.content) != f.sha256.to_ascii_lowercase() {
            return Err(Error::bad_file(
                bundle,
                format!("{}: checksum mismatch (damaged bundle)", f.name),
            ));
        }
    }
    let content = |name: &str| {
        b.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.content.as_str())
    };
    let host_text =
        content(HOST_FILE).ok_or_else(|| Error::bad_file(bundle, "holds no host.toml"))?;
    let config = HostConfig::parse(host_text, &bundle.join(HOST_FILE))
        .map_err(|e| Error::bad_file(bundle, e.to_string()))?;
    let inventory = match content(INVENTORY_FILE) {
        Some(t) => Inventory::parse(t, &bundle.join(INVENTORY_FILE))
            .map_err(|e| Error::bad_file(bundle, e.to_string()))?,
        None => Inventory::default(),
    };
    check_agreement(&config, &inventory).map_err(|reason| Error::bad_file(bundle, reason))?;
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, "create folder", e))?;
    let _lock = FileLock::acquire(&root.join(LOCK_FILE_NAME), LockMode::Wait)?;
    let mut report = BundleReport {
        host: config.name.clone(),
        ..BundleReport::default()
    };
    for name in FILES {
        let text = match (name, content(name)) {
            (_, Some(t)) => t.to_owned(),
            (INVENTORY_FILE, None) => inventory.to_toml(),
            _ => continue,
        };
        if name == crate::BACKUPTOOLS_CONF {
            fsio::write_private(&root.join(name), text.as_bytes())?;
        } else {
            write_atomic(&root.join(name), text.as_bytes())?;
        }
        report.files.push(name.to_owned());
    }
    for folder in config
        .datastores
        .values()
        .filter(|f| !Path::new(f).is_absolute())
    {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create folder", e))?;
    }
    let host = crate::Host::open(root)?;
    for ds in host.datastores() {
        if !ds.path.is_dir() {
            report.warnings.push(format!(
                "datastore {} folder {} does not exist",
                ds.name,
                ds.path.display()
            ));
        }
    }
    for (moref, e) in host.entries() {
        if let Ok(dp) = e.vmx.parse() {
            if host.resolve(&dp).is_ok_and(|p| !p.exists()) {
                report.warnings.push(format!(
                    "VM {moref}: {} does not exist (restore the VM)",
                    e.vmx
                ));
            }
        }
    }
    Ok(report)
}

/// Every VM's datastore, folder and pool exists in the configuration.
fn check_agreement(config: &HostConfig, inventory: &Inventory) -> std::result::Result<(), String> {
    for e in &inventory.vms {
        let dp: vmx::DatastorePath = e.vmx.parse().map_err(|err: vmx::Error| err.to_string())?;
        if !config.datastores.contains_key(dp.datastore()) {
            return Err(format!(
                "{}: datastore {:?} is not defined",
                e.vmx,
                dp.datastore()
            ));
        }
        if !config.has_container(ContainerKind::Folder, &e.folder) {
            return Err(format!(
                "{}: VM folder {:?} is not defined",
                e.vmx, e.folder
            ));
        }
        if !config.has_container(ContainerKind::Pool, &e.pool) {
            return Err(format!(
                "{}: resource pool {:?} is not defined",
                e.vmx, e.pool
            ));
        }
    }
    Ok(())
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Host;

    #[test]
    fn round_trip_restores_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a");
        let mut host = Host::init(&root, "esx1").unwrap();
        host.create_container(ContainerKind::Folder, "/Production")
            .unwrap();
        host.create_container(ContainerKind::Pool, "/Gold").unwrap();
        std::fs::write(root.join(BACKUPTOOLS_CONF), "VCHOST=\"localhost\"\n").unwrap();
        let file = dir.path().join("cfg.toml");
        let saved = backup_config(&root, &file).unwrap();
        assert_eq!(saved.files, [INVENTORY_FILE, BACKUPTOOLS_CONF, HOST_FILE]);
        let other = dir.path().join("b");
        let restored = restore_config(&other, &file).unwrap();
        assert_eq!(restored.host, "esx1");
        for name in FILES {
            assert_eq!(
                std::fs::read(root.join(name)).unwrap(),
                std::fs::read(other.join(name)).unwrap(),
                "{name}"
            );
        }
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        assert!(other.join("volumes/datastore1").is_dir());
    }

    #[test]
    fn error_bad_file_leaves_the_host_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a");
        Host::init(&root, "esx1").unwrap();
        let file = dir.path().join("cfg.toml");
        backup_config(&root, &file).unwrap();
        let good = std::fs::read_to_string(&file).unwrap();
        let before = std::fs::read(root.join(HOST_FILE)).unwrap();
        let cases = [
            good.replacen("name = \"esx1\"", "name = \"esx2\"", 1),
            good.replace("name = \"inventory.toml\"", "name = \"../../etc/passwd\""),
            good.replace("format = \"vcb-host-config\"", "format = \"other\""),
            "not toml [".to_owned(),
        ];
        for bad in cases {
            std::fs::write(&file, &bad).unwrap();
            let e = restore_config(&root, &file).unwrap_err();
            assert!(matches!(e, Error::BadFile { .. }), "{e}");
        }
        std::fs::write(&file, good.replace("version = 1", "version = 7")).unwrap();
        assert!(matches!(
            restore_config(&root, &file),
            Err(Error::UnsupportedVersion { .. })
        ));
        assert_eq!(std::fs::read(root.join(HOST_FILE)).unwrap(), before);
    }
}
