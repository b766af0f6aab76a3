//! `host.toml`: the host's name, datastores, VM folders and resource pools.
//!
//! ```toml
//! version = 1
//! name = "esx1.example.com"
//! folders = ["/Production", "/Production/Web"]
//! pools = ["/Gold"]
//!
//! [datastores]
//! datastore1 = "volumes/datastore1"      # relative to the root, or absolute
//! ```
//! Folder and pool paths are stored relative to the datacenter's VM folder
//! (`/ha-datacenter/vm`) and the host's root pool (`/ha-datacenter/host/NAME/Resources`);
//! `/` is that root itself and is always present.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version of `host.toml` and `inventory.toml` this build writes and reads.
pub const CONFIG_VERSION: u32 = 1;

/// Largest `host.toml` or `inventory.toml` read (they are small; this bounds hostile input).
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The datacenter every standalone host shows (as ESX's host agent does).
pub const DATACENTER: &str = "ha-datacenter";

/// The contents of `host.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// File format version ([`CONFIG_VERSION`]).
    pub version: u32,
    /// The host's name (shown in resource pool paths and catalogs).
    pub name: String,
    /// VM folders, normalised (`/Production/Web`), sorted.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Resource pools, normalised (`/Gold`), sorted.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Datastore name -> folder (relative to the root, or absolute).
    pub datastores: BTreeMap<String, String>,
}

/// The two kinds of inventory container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// A VM folder (`/ha-datacenter/vm/...`).
    Folder,
    /// A resource pool (`/ha-datacenter/host/NAME/Resources/...`).
    Pool,
}

impl ContainerKind {
    /// `VM folder` or `resource pool`.
    pub fn what(self) -> &'static str {
        match self {
            ContainerKind::Folder => "VM folder",
            ContainerKind::Pool => "resource pool",
        }
    }
}

impl HostConfig {
    /// A new configuration with the default datastore `datastore1`.
    pub fn new(name: &str) -> Result<HostConfig> {
        check_host_name(name)?;
        let mut datastores = BTreeMap::new();
        datastores.insert("datastore1".to_owned(), "volumes/datastore1".to_owned());
        Ok(HostConfig {
            version: CONFIG_VERSION,
            name: name.to_owned(),
            folders: Vec::new(),
            pools: Vec::new(),
            datastores,
        })
    }

    /// Parses and validates `host.toml` text read from `path`.
    ///
    /// # Errors
    /// [`Error::BadFile`] for TOML errors, bad names or paths;
    /// [`Error::UnsupportedVersion`].
    pub fn parse(text: &str, path: &Path) -> Result<HostConfig> {
        let config: HostConfig =
            toml::from_str(text).map_err(|e| Error::bad_file(path, one_line(&e.to_string())))?;
        if config.version != CONFIG_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: config.version,
                supported: CONFIG_VERSION,
            });
        }
        config
            .validate()
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        Ok(config)
    }

    /// Checks every name and path.
    ///
    /// # Errors
    /// [`Error::BadName`] for the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_host_name(&self.name)?;
        for (name, folder) in &self.datastores {
            check_datastore_name(name)?;
            if folder.is_empty() || folder.contains('\0') {
                return Err(Error::bad_name(
                    "datastore folder",
                    folder,
                    "empty or holds NUL",
                ));
            }
        }
        for (kind, list) in [
            (ContainerKind::Folder, &self.folders),
            (ContainerKind::Pool, &self.pools),
        ] {
            for p in list {
                if normalize_container(kind, p)? != *p || p == "/" {
                    return Err(Error::bad_name(kind.what(), p, "not in normal form"));
                }
            }
        }
        Ok(())
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        // Serialising plain strings, vectors and maps cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The list of containers of `kind`.
    pub fn containers(&self, kind: ContainerKind) -> &[String] {
        match kind {
            ContainerKind::Folder => &self.folders,
            ContainerKind::Pool => &self.pools,
        }
    }

    /// True if `path` (normalised) exists; `/` always does.
    pub fn has_container(&self, kind: ContainerKind, path: &str) -> bool {
        path == "/" || self.containers(kind).iter().any(|p| p == path)
    }

    /// Adds `path` (normalised) and every missing ancestor; returns true if anything was
    /// added.
    pub fn add_container(&mut self, kind: ContainerKind, path: &str) -> bool {
        let list = match kind {
            ContainerKind::Folder => &mut self.folders,
            ContainerKind::Pool => &mut self.pools,
        };
        let mut added = false;
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            if !list.contains(&prefix) {
                list.push(prefix.clone());
                added = true;
            }
        }
        list.sort();
        added
    }

    /// The full inventory path of a container (`/ha-datacenter/vm/Production`).
    pub fn display_container(&self, kind: ContainerKind, path: &str) -> String {
        let base = match kind {
            ContainerKind::Folder => format!("/{DATACENTER}/vm"),
            ContainerKind::Pool => format!("/{DATACENTER}/host/{}/Resources", self.name),
        };
        if path == "/" {
            base
        } else {
            format!("{base}{path}")
        }
    }
}

/// Normalises a folder or pool path given by a user or catalog: the short form
/// (`/Production`, `Production/`), or the full inventory path
/// (`/ha-datacenter/vm/Production`, `/ha-datacenter/host/ANY/Resources/Gold`). Returns
/// `/` for the root.
///
/// # Errors
/// [`Error::BadName`] for empty, `.`, `..` or control-character components.
pub fn normalize_container(kind: ContainerKind, path: &str) -> Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let rest: &[&str] = match (kind, parts.as_slice()) {
        (ContainerKind::Folder, [dc, "vm", rest @ ..]) if *dc == DATACENTER => rest,
        (ContainerKind::Pool, [dc, "host", _, "Resources", rest @ ..]) if *dc == DATACENTER => rest,
        (_, all) => all,
    };
    for part in rest {
        if *part == "." || *part == ".." || part.contains(char::is_control) || part.trim() != *part
        {
            return Err(Error::bad_name(kind.what(), path, "bad path component"));
        }
    }
    Ok(format!("/{}", rest.join("/")))
}

/// Checks a host name: non-empty, printable, no `/`.
fn check_host_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.contains(|c: char| c == '/' || c.is_control()) {
        return Err(Error::bad_name(
            "host name",
            name,
            "empty, too long, or holds `/` or control characters",
        ));
    }
    Ok(())
}

/// Checks a datastore name with the rules of a datastore path (`[name] ...`).
pub(crate) fn check_datastore_name(name: &str) -> Result<()> {
    vmx::DatastorePath::new(name, "")
        .map(|_| ())
        .map_err(|e| Error::bad_name("datastore name", name, e.to_string()))
}

/// The first line of a multi-line parser message.
pub(crate) fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let mut c = HostConfig::new("esx1").unwrap();
        assert!(c.add_container(ContainerKind::Folder, "/Production/Web"));
        assert!(!c.add_container(ContainerKind::Folder, "/Production"));
        c.add_container(ContainerKind::Pool, "/Gold");
        let text = c.to_toml();
        let back = HostConfig::parse(&text, Path::new("host.toml")).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.folders, ["/Production", "/Production/Web"]);
        assert_eq!(
            c.display_container(ContainerKind::Folder, "/Production"),
            "/ha-datacenter/vm/Production"
        );
        assert_eq!(
            c.display_container(ContainerKind::Pool, "/"),
            "/ha-datacenter/host/esx1/Resources"
        );
    }

    #[test]
    fn normalizes_short_and_full_paths() {
        let f = |s| normalize_container(ContainerKind::Folder, s).unwrap();
        assert_eq!(f("/ha-datacenter/vm/Production"), "/Production");
        assert_eq!(f("Production//Web/"), "/Production/Web");
        assert_eq!(f("/"), "/");
        assert_eq!(f("/ha-datacenter/vm"), "/");
        let p = |s| normalize_container(ContainerKind::Pool, s).unwrap();
        assert_eq!(p("/ha-datacenter/host/other/Resources/Gold"), "/Gold");
        assert!(matches!(
            normalize_container(ContainerKind::Folder, "/a/../b"),
            Err(Error::BadName { .. })
        ));
    }

    #[test]
    fn error_unsupported_version_and_bad_file() {
        let text = HostConfig::new("h")
            .unwrap()
            .to_toml()
            .replace("version = 1", "version = 9");
        assert!(matches!(
            HostConfig::parse(&text, Path::new("h.toml")),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
        assert!(matches!(
            HostConfig::parse("name = [", Path::new("h.toml")),
            Err(Error::BadFile { .. })
        ));
        let bad = "version = 1\nname = \"h\"\n[datastores]\n\"a]b\" = \"x\"\n";
        let e = HostConfig::parse(bad, Path::new("h.toml")).unwrap_err();
        assert!(e.to_string().contains("datastore name"), "{e}");
    }
}
