//! The VM name cache (`VMNAMECACHE`): name, BIOS UUID and IP address of each VM, recorded
//! at every backup so that `ipaddr:` still finds a VM that is not running.
//!
//! One line per VM, fields separated by tabs:
//! ```text
//! vm37<TAB>564d78a1-8c1c-59b4-fa02-be14138797be<TAB>10.17.5.31<TAB>1732521600
//! ```
//! (display name, UUID in canonical form or empty, IP address or DNS name or empty, Unix
//! time of the recording). Lines starting with `#` and blank lines are ignored; malformed
//! lines are skipped and counted. [`record`] replaces the VM's line (matched by UUID, or by
//! name when there is no UUID) under a lock on `PATH.lock`, writing the file atomically.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{now_secs, read_text_opt, write_atomic};
use crate::lock::{FileLock, LockMode};

/// Largest cache file read.
const MAX_CACHE_BYTES: u64 = 64 << 20;

/// One VM's line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheEntry {
    /// Display name.
    pub name: String,
    /// BIOS UUID, canonical form, or empty.
    pub uuid: String,
    /// Guest address (IP or DNS name), or empty.
    pub ip: String,
    /// When it was recorded, seconds since the Unix epoch.
    pub timestamp_secs: u64,
}

/// The cache file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameCache {
    /// The entries, in file order.
    pub entries: Vec<CacheEntry>,
    /// Lines that were not `name<TAB>uuid<TAB>ip<TAB>timestamp`.
    pub skipped_lines: usize,
}

impl NameCache {
    /// Parses cache text.
    pub fn parse(text: &str) -> NameCache {
        let mut cache = NameCache::default();
        for line in text.lines() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                [name, uuid, ip, ts] if !name.is_empty() => match ts.trim().parse() {
                    Ok(timestamp_secs) => cache.entries.push(CacheEntry {
                        name: (*name).to_owned(),
                        uuid: normalize_uuid(uuid),
                        ip: ip.trim().to_owned(),
                        timestamp_secs,
                    }),
                    Err(_) => cache.skipped_lines += 1,
                },
                _ => cache.skipped_lines += 1,
            }
        }
        cache
    }

    /// The text of the file.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{}\t{}\t{}\t{}\n", e.name, e.uuid, e.ip, e.timestamp_secs))
            .collect()
    }

    /// The most recent entry for the VM with `uuid`.
    pub fn by_uuid(&self, uuid: &vmx::Uuid) -> Option<&CacheEntry> {
        let key = uuid.to_string();
        self.entries
            .iter()
            .filter(|e| e.uuid == key)
            .max_by_key(|e| e.timestamp_secs)
    }

    /// Entries whose address equals `text` (case-insensitive) or is one of `addrs`.
    pub fn by_address<'a>(
        &'a self,
        text: &'a str,
        addrs: &'a [std::net::IpAddr],
    ) -> impl Iterator<Item = &'a CacheEntry> {
        self.entries.iter().filter(move |e| {
            !e.ip.is_empty()
                && (e.ip.eq_ignore_ascii_case(text)
                    || e.ip
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| addrs.contains(&ip)))
        })
    }
}

fn normalize_uuid(s: &str) -> String {
    s.trim()
        .parse::<vmx::Uuid>()
        .map(|u| u.to_string())
        .unwrap_or_default()
}

/// Reads the cache at `path`; a missing file is an empty cache.
///
/// # Errors
/// [`Error::Io`], or [`Error::BadFile`] for a file that is not UTF-8 or too large.
pub fn load(path: &Path) -> Result<NameCache> {
    Ok(read_text_opt(path, MAX_CACHE_BYTES)?
        .map(|t| NameCache::parse(&t))
        .unwrap_or_default())
}

/// Records `name`, `uuid` and `ip` now, replacing the VM's previous line.
///
/// # Errors
/// [`Error::BadName`] for a name or address holding a tab or line break, or an empty
/// name; [`Error::Io`].
pub fn record(path: &Path, name: &str, uuid: Option<&vmx::Uuid>, ip: Option<&str>) -> Result<()> {
    let ip = ip.unwrap_or_default();
    for (what, value) in [("VM name", name), ("IP address", ip)] {
        if value.contains(['\t', '\n', '\r']) {
            return Err(Error::bad_name(what, value, "holds a tab or line break"));
        }
    }
    if name.is_empty() {
        return Err(Error::bad_name("VM name", name, "empty"));
    }
    let _lock = FileLock::acquire(&lock_path(path), LockMode::Wait)?;
    let mut cache = load(path)?;
    let uuid = uuid.map(|u| u.to_string()).unwrap_or_default();
    cache.entries.retain(|e| {
        if uuid.is_empty() {
            e.name != name || !e.uuid.is_empty()
        } else {
            e.uuid != uuid
        }
    });
    cache.entries.push(CacheEntry {
        name: name.to_owned(),
        uuid,
        ip: ip.to_owned(),
        timestamp_secs: now_secs(),
    });
    write_atomic(path, cache.to_text().as_bytes())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_replaces_the_vms_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cache");
        assert_eq!(load(&p).unwrap(), NameCache::default());
        let u: vmx::Uuid = "564d78a1-8c1c-59b4-fa02-be14138797be".parse().unwrap();
        record(&p, "vm37", Some(&u), Some("10.0.0.1")).unwrap();
        record(&p, "other", None, Some("10.0.0.2")).unwrap();
        record(&p, "vm37-renamed", Some(&u), Some("10.0.0.3")).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.by_uuid(&u).unwrap().ip, "10.0.0.3");
        let addrs = ["10.0.0.2".parse().unwrap()];
        assert_eq!(c.by_address("x", &addrs).next().unwrap().name, "other");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let c = NameCache::parse(
            "# comment\nvm\tbad-uuid\t1.2.3.4\t5\nno tabs\nvm2\t\t\tnot-a-number\n\n",
        );
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries[0].uuid, "");
        assert_eq!(c.skipped_lines, 2);
    }

    #[test]
    fn error_bad_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cache");
        assert!(matches!(
            record(&p, "a\tb", None, None),
            Err(Error::BadName { .. })
        ));
        assert!(matches!(
            record(&p, "", None, None),
            Err(Error::BadName { .. })
        ));
    }
}
