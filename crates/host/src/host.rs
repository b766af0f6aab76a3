//! [`Host`]: a root folder holding `host.toml`, `inventory.toml` and datastores.

use std::fs;
use std::path::{Path, PathBuf};

use vmx::DatastorePath;

use crate::config::{
    check_datastore_name, normalize_container, ContainerKind, HostConfig, MAX_CONFIG_BYTES,
};
use crate::error::{Error, Result};
use crate::fsutil::{read_text, read_text_opt, write_atomic};
use crate::inventory::Inventory;
use crate::lock::{FileLock, LockMode, LOCK_FILE_NAME};

/// Name of the host configuration file in the root.
pub const HOST_FILE: &str = "host.toml";
/// Name of the inventory file in the root.
pub const INVENTORY_FILE: &str = "inventory.toml";
/// Name of the VM name cache file in the root, used unless the caller names another.
pub const DEFAULT_NAME_CACHE: &str = "vmnamecache";

/// A datastore: a named folder holding VM folders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Datastore {
    /// The name used in datastore paths (`[datastore1] ...`).
    pub name: String,
    /// The folder (absolute).
    pub path: PathBuf,
}

/// A standalone host: its configuration and inventory as loaded from the root folder.
///
/// Methods that change the configuration or inventory take the host lock, re-read both
/// files (another process may have changed them), apply the change and replace the files
/// atomically.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    pub(crate) config: HostConfig,
    pub(crate) inventory: Inventory,
    name_cache: PathBuf,
}

impl Host {
    /// Creates a new host in `root` (created if missing) with datastore `datastore1` in
    /// `root/volumes/datastore1`.
    ///
    /// # Errors
    /// [`Error::AlreadyInitialized`] if `root` holds a `host.toml`; [`Error::BadName`] for a
    /// bad host name; [`Error::Io`].
    pub fn init(root: &Path, name: &str) -> Result<Host> {
        let config = HostConfig::new(name)?;
        fs::create_dir_all(root).map_err(|e| Error::io(root, "create folder", e))?;
        let root = absolute(root)?;
        let _lock = FileLock::acquire(&root.join(LOCK_FILE_NAME), LockMode::Wait)?;
        if root.join(HOST_FILE).exists() {
            return Err(Error::AlreadyInitialized { root });
        }
        for folder in config.datastores.values() {
            let dir = root.join(folder);
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create folder", e))?;
        }
        let inventory = Inventory::default();
        if !root.join(INVENTORY_FILE).exists() {
            write_atomic(&root.join(INVENTORY_FILE), inventory.to_toml().as_bytes())?;
        }
        write_atomic(&root.join(HOST_FILE), config.to_toml().as_bytes())?;
        Host::open(&root)
    }

    /// Opens the host in `root`.
    ///
    /// # Errors
    /// [`Error::NotInitialized`]; [`Error::BadFile`] and [`Error::UnsupportedVersion`] for
    /// a bad `host.toml` or `inventory.toml`.
    pub fn open(root: &Path) -> Result<Host> {
        let root = absolute(root)?;
        let (config, inventory) = load(&root)?;
        let name_cache = root.join(DEFAULT_NAME_CACHE);
        let host = Host {
            root,
            config,
            inventory,
            name_cache,
        };
        host.recover_swaps_if_idle();
        Ok(host)
    }

    /// Re-reads `host.toml` and `inventory.toml`.
    ///
    /// # Errors
    /// As for [`Host::open`].
    pub fn reload(&mut self) -> Result<()> {
        (self.config, self.inventory) = load(&self.root)?;
        Ok(())
    }

    /// The root folder (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration as loaded.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The inventory as loaded.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The VM name cache file `ipaddr:` searches consult (default: `ROOT/vmnamecache`).
    pub fn name_cache_path(&self) -> &Path {
        &self.name_cache
    }

    /// Uses `path` as the VM name cache (`VMNAMECACHE` of backuptools.conf, `-c`).
    pub fn set_name_cache_path(&mut self, path: &Path) {
        self.name_cache = path.to_path_buf();
    }

    /// Runs `change` on freshly read configuration and inventory under the host lock, then
    /// writes back whichever of the two changed.
    pub(crate) fn update<T>(
        &mut self,
        change: impl FnOnce(&mut HostConfig, &mut Inventory) -> Result<T>,
    ) -> Result<T> {
        let lock = self.lock_host(LockMode::Wait)?;
        self.update_locked(&lock, change)
    }

    /// [`Host::update`] with the host lock already held.
    pub(crate) fn update_locked<T>(
        &mut self,
        lock: &crate::HostLock,
        change: impl FnOnce(&mut HostConfig, &mut Inventory) -> Result<T>,
    ) -> Result<T> {
        self.check_lock(lock)?;
        let (old_config, old_inventory) = load(&self.root)?;
        let (mut config, mut inventory) = (old_config.clone(), old_inventory.clone());
        let value = change(&mut config, &mut inventory)?;
        config.validate()?;
        if inventory != old_inventory {
            write_atomic(
                &self.root.join(INVENTORY_FILE),
                inventory.to_toml().as_bytes(),
            )?;
        }
        if config != old_config {
            write_atomic(&self.root.join(HOST_FILE), config.to_toml().as_bytes())?;
        }
        self.config = config;
        self.inventory = inventory;
        Ok(value)
    }

    /// Every datastore, by name.
    pub fn datastores(&self) -> Vec<Datastore> {
        self.config
            .datastores
            .iter()
            .map(|(name, folder)| Datastore {
                name: name.clone(),
                path: self.root.join(folder),
            })
            .collect()
    }

    /// The datastore called `name`.
    ///
    /// # Errors
    /// [`Error::UnknownDatastore`].
    pub fn datastore(&self, name: &str) -> Result<Datastore> {
        self.config
            .datastores
            .get(name)
            .map(|folder| Datastore {
                name: name.to_owned(),
                path: self.root.join(folder),
            })
            .ok_or_else(|| Error::UnknownDatastore {
                name: name.to_owned(),
            })
    }

    /// Adds datastore `name` for the existing folder `path`.
    ///
    /// # Errors
    /// [`Error::BadName`], [`Error::DatastoreExists`] (name or folder taken),
    /// [`Error::MissingFile`] if the folder does not exist.
    pub fn add_datastore(&mut self, name: &str, path: &Path) -> Result<Datastore> {
        check_datastore_name(name)?;
        let folder = crate::fsutil::canonical(path, "datastore folder")?;
        if !folder.is_dir() {
            return Err(Error::bad_name(
                "datastore folder",
                &path.to_string_lossy(),
                "not a folder",
            ));
        }
        let text = folder
            .to_str()
            .ok_or_else(|| {
                Error::bad_name("datastore folder", &path.to_string_lossy(), "not UTF-8")
            })?
            .to_owned();
        let root = self.root.clone();
        self.update(|config, _| {
            if config.datastores.contains_key(name) {
                return Err(Error::DatastoreExists {
                    name: name.to_owned(),
                });
            }
            let taken = config
                .datastores
                .iter()
                .find(|(_, f)| fs::canonicalize(root.join(f)).is_ok_and(|c| c == folder));
            if let Some((other, _)) = taken {
                return Err(Error::DatastoreExists {
                    name: other.clone(),
                });
            }
            config.datastores.insert(name.to_owned(), text.clone());
            Ok(())
        })?;
        self.datastore(name)
    }

    /// Removes datastore `name` from the configuration (its files stay).
    ///
    /// # Errors
    /// [`Error::UnknownDatastore`], [`Error::DatastoreInUse`] while VMs are registered on it.
    pub fn remove_datastore(&mut self, name: &str) -> Result<()> {
        self.update(|config, inventory| {
            if config.datastores.remove(name).is_none() {
                return Err(Error::UnknownDatastore {
                    name: name.to_owned(),
                });
            }
            let count = inventory
                .vms
                .iter()
                .filter(|e| {
                    e.vmx
                        .parse::<DatastorePath>()
                        .is_ok_and(|p| p.datastore() == name)
                })
                .count();
            if count > 0 {
                return Err(Error::DatastoreInUse {
                    name: name.to_owned(),
                    count,
                });
            }
            Ok(())
        })
    }

    /// The file a datastore path names. The datastore path's rules keep it inside the
    /// datastore's folder (no `..`, not absolute).
    ///
    /// # Errors
    /// [`Error::UnknownDatastore`].
    pub fn resolve(&self, path: &DatastorePath) -> Result<PathBuf> {
        let ds = self.datastore(path.datastore())?;
        Ok(if path.path().is_empty() {
            ds.path
        } else {
            ds.path.join(path.path())
        })
    }

    /// The host's one path-confinement rule over its datastores as configured now.
    pub fn confined(&self) -> crate::Confined {
        crate::Confined::of(self)
    }

    /// The datastore path of an existing file or folder, if it lies inside a datastore
    /// (the innermost one when datastores nest).
    pub fn datastore_path_of(&self, path: &Path) -> Option<DatastorePath> {
        let canon = fs::canonicalize(path).ok()?;
        self.datastore_roots()
            .into_iter()
            .filter_map(|(name, root)| {
                let rel = canon.strip_prefix(&root).ok()?;
                let rel = rel.to_str()?.to_owned();
                Some((root.components().count(), name, rel))
            })
            .max_by_key(|(depth, _, _)| *depth)
            .and_then(|(_, name, rel)| DatastorePath::new(&name, &rel).ok())
    }

    /// True if the existing `path` lies inside one of the datastores.
    pub fn in_datastore(&self, path: &Path) -> bool {
        self.datastore_path_of(path).is_some()
    }

    /// The canonical folder of each datastore that exists.
    fn datastore_roots(&self) -> Vec<(String, PathBuf)> {
        self.datastores()
            .into_iter()
            .filter_map(|ds| Some((ds.name, fs::canonicalize(&ds.path).ok()?)))
            .collect()
    }

    /// The folders or pools, `/` first.
    pub fn containers(&self, kind: ContainerKind) -> Vec<String> {
        std::iter::once("/".to_owned())
            .chain(self.config.containers(kind).iter().cloned())
            .collect()
    }

    /// Creates a VM folder or resource pool (and its missing ancestors); returns its
    /// normalised path.
    ///
    /// # Errors
    /// [`Error::BadName`].
    pub fn create_container(&mut self, kind: ContainerKind, path: &str) -> Result<String> {
        let norm = normalize_container(kind, path)?;
        self.update(|config, _| {
            config.add_container(kind, &norm);
            Ok(())
        })?;
        Ok(norm)
    }

    /// The normalised path of an existing folder or pool.
    ///
    /// # Errors
    /// [`Error::BadName`]; [`Error::UnknownContainer`] if it does not exist.
    pub fn container(&self, kind: ContainerKind, path: &str) -> Result<String> {
        let norm = normalize_container(kind, path)?;
        if !self.config.has_container(kind, &norm) {
            return Err(Error::UnknownContainer {
                what: kind.what(),
                path: path.to_owned(),
            });
        }
        Ok(norm)
    }
}

fn load(root: &Path) -> Result<(HostConfig, Inventory)> {
    let host_file = root.join(HOST_FILE);
    let Some(text) = read_text_opt(&host_file, MAX_CONFIG_BYTES)? else {
        return Err(Error::NotInitialized {
            root: root.to_path_buf(),
        });
    };
    let config = HostConfig::parse(&text, &host_file)?;
    let inv_file = root.join(INVENTORY_FILE);
    let inventory = match read_text_opt(&inv_file, MAX_CONFIG_BYTES)? {
        Some(text) => Inventory::parse(&text, &inv_file)?,
        None => Inventory::default(),
    };
    Ok((config, inventory))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, "resolve", e))
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn system_hostname() -> String {
    read_text(Path::new("/proc/sys/kernel/hostname"), 4096)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_open_and_datastores() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut host = Host::init(&root, "esx1").unwrap();
        assert!(matches!(
            Host::init(&root, "esx1"),
            Err(Error::AlreadyInitialized { .. })
        ));
        assert_eq!(host.name(), "esx1");
        let ds1 = host.datastore("datastore1").unwrap();
        assert!(ds1.path.is_dir());
        let other = dir.path().join("nfs");
        fs::create_dir(&other).unwrap();
        host.add_datastore("nfs", &other).unwrap();
        assert!(matches!(
            host.add_datastore("nfs", &other),
            Err(Error::DatastoreExists { .. })
        ));
        assert!(matches!(
            host.add_datastore("again", &other),
            Err(Error::DatastoreExists { .. })
        ));
        let reopened = Host::open(&root).unwrap();
        assert_eq!(reopened.datastores().len(), 2);
        let dp: DatastorePath = "[nfs] vm/vm.vmx".parse().unwrap();
        fs::create_dir(other.join("vm")).unwrap();
        fs::write(other.join("vm/vm.vmx"), "").unwrap();
        let file = reopened.resolve(&dp).unwrap();
        assert_eq!(reopened.datastore_path_of(&file), Some(dp));
        assert_eq!(reopened.datastore_path_of(Path::new("/etc/passwd")), None);
        host.remove_datastore("nfs").unwrap();
        assert!(matches!(
            host.remove_datastore("nfs"),
            Err(Error::UnknownDatastore { .. })
        ));
    }

    #[test]
    fn containers_are_created_with_parents() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = Host::init(dir.path(), "h").unwrap();
        let p = host
            .create_container(ContainerKind::Folder, "/ha-datacenter/vm/A/B")
            .unwrap();
        assert_eq!(p, "/A/B");
        assert_eq!(host.containers(ContainerKind::Folder), ["/", "/A", "/A/B"]);
        assert_eq!(host.container(ContainerKind::Folder, "A").unwrap(), "/A");
        assert!(matches!(
            host.container(ContainerKind::Pool, "/Gold"),
            Err(Error::UnknownContainer { .. })
        ));
    }

    #[test]
    fn error_not_initialized() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Host::open(dir.path()),
            Err(Error::NotInitialized { .. })
        ));
    }
}
