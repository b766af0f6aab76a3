//! Restore sessions: the proxy verifies a backup where it lies, then sends its
//! configuration files (HTTP) and its disks (NBD writes into new thin disks) into a
//! staging folder on the host; a commit runs the host's own restore pipeline
//! ([`backup::restore::restore_from`]: path confinement, conflicts, the journalled swap,
//! registration) from that staging folder, which then goes.
//!
//! A session whose client disappears is removed when its lease runs out; staging
//! folders a killed agent left are removed when it starts.

use super::exports::ExportTable;
use crate::api::{RestoreDone, RestoreRequest, RestoreSession};
use backup::restore::RestoreSource;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One restore session.
struct Live {
    user: String,
    dir: PathBuf,
    request: RestoreRequest,
    exports: Vec<String>,
    deadline: Instant,
}

/// Every restore session.
#[derive(Default)]
pub(crate) struct Restores {
    live: Mutex<HashMap<String, Live>>,
}

fn staging_root(agent_dir: &Path) -> PathBuf {
    agent_dir.join("restores")
}

/// Removes what a killed agent's restore sessions staged.
pub(crate) fn recover(agent_dir: &Path) {
    let root = staging_root(agent_dir);
    if root.exists() {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            tracing::warn!("{}: {e}", root.display());
        }
    }
}

fn checked(name: &str) -> Result<&str, String> {
    vmx::validate_relative_name(name).map_err(|e| format!("{name:?}: {e}"))?;
    if name.contains('/') {
        return Err(format!("{name:?}: not a plain file name"));
    }
    Ok(name)
}

impl Restores {
    /// Creates the staging folder and one new thin disk per disk of the request, each
    /// exported writable over NBD.
    pub(crate) fn start(
        &self,
        agent_dir: &Path,
        exports: &ExportTable,
        user: &str,
        lease: Duration,
        nbd_port: u16,
        request: RestoreRequest,
    ) -> Result<RestoreSession, String> {
        let dict = vmx::Dict::parse(&request.catalog).map_err(|e| format!("catalog: {e}"))?;
        vmx::Catalog::from_dict(&dict).map_err(|e| format!("catalog: {e}"))?;
        let id = super::random_token()[..16].to_owned();
        let dir = staging_root(agent_dir).join(&id);
        for sub in ["files", "disks"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut names = Vec::new();
        let mut out = Vec::new();
        let made = (|| {
            for d in &request.disks {
                let path = dir.join("disks").join(checked(&d.name)?);
                let adapter = vmdk::AdapterType::parse(&d.adapter).unwrap_or_default();
                let spec = vmdk::CreateSpec {
                    adapter,
                    ..vmdk::CreateSpec::new(d.capacity, vmdk::DiskFormat::Thin)
                };
                vmdk::create(&path, &spec).map_err(|e| e.to_string())?;
                let ticket = exports.add(Arc::new(StagedDisk {
                    path,
                    size: d.capacity,
                }));
                names.push(ticket.clone());
                out.push((d.name.clone(), ticket));
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = made {
            exports.remove(&names);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        if let Ok(mut m) = self.live.lock() {
            m.insert(
                id.clone(),
                Live {
                    user: user.to_owned(),
                    dir,
                    request,
                    exports: names,
                    deadline: Instant::now() + lease,
                },
            );
        }
        Ok(RestoreSession {
            id,
            lease_secs: lease.as_secs().max(1),
            nbd_port,
            exports: out,
        })
    }

    fn with<T>(
        &self,
        id: &str,
        user: &str,
        admin: bool,
        f: impl FnOnce(&mut Live) -> T,
    ) -> Option<T> {
        let mut m = self.live.lock().ok()?;
        m.get_mut(id).filter(|l| admin || l.user == user).map(f)
    }

    /// Where the configuration file `name` of session `id` is staged (the lease renewed).
    pub(crate) fn file_path(
        &self,
        id: &str,
        user: &str,
        admin: bool,
        name: &str,
        lease: Duration,
    ) -> Option<Result<PathBuf, String>> {
        self.with(id, user, admin, |l| {
            l.deadline = Instant::now() + lease;
            if !l.request.files.iter().any(|(n, _)| n == name) {
                return Err(format!("{name} is not a file of this restore"));
            }
            checked(name).map(|n| l.dir.join("files").join(n))
        })
    }

    /// The declared size of file `name`.
    pub(crate) fn file_size(&self, id: &str, name: &str) -> Option<u64> {
        let m = self.live.lock().ok()?;
        m.get(id)?
            .request
            .files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
    }

    /// Extends the lease of session `id`.
    pub(crate) fn keepalive(&self, id: &str, user: &str, admin: bool, lease: Duration) -> bool {
        self.with(id, user, admin, |l| l.deadline = Instant::now() + lease)
            .is_some()
    }

    /// Removes session `id` and its staging folder.
    pub(crate) fn cancel(&self, id: &str, user: &str, admin: bool, exports: &ExportTable) -> bool {
        let live = {
            let Ok(mut m) = self.live.lock() else {
                return false;
            };
            match m.get(id) {
                Some(l) if admin || l.user == user => m.remove(id),
                _ => None,
            }
        };
        let Some(l) = live else { return false };
        exports.remove(&l.exports);
        let _ = std::fs::remove_dir_all(&l.dir);
        true
    }

    /// Sessions whose lease ran out go.
    pub(crate) fn reap(&self, exports: &ExportTable) {
        let expired: Vec<String> = self.live.lock().map_or_else(
            |_| Vec::new(),
            |m| {
                let now = Instant::now();
                m.iter()
                    .filter(|(_, l)| l.deadline <= now)
                    .map(|(k, _)| k.clone())
                    .collect()
            },
        );
        for id in expired {
            tracing::warn!("restore session {id}: lease expired; its staged files are removed");
            self.cancel(&id, "", true, exports);
        }
    }

    /// Restores the staged VM onto the host in `root` and ends the session.
    pub(crate) fn commit(
        &self,
        id: &str,
        user: &str,
        admin: bool,
        root: &Path,
        exports: &ExportTable,
    ) -> Option<Result<RestoreDone, String>> {
        let (dir, request, names) = {
            let mut m = self.live.lock().ok()?;
            let l = m.get(id).filter(|l| admin || l.user == user)?;
            let taken = (l.dir.clone(), l.request.clone(), l.exports.clone());
            m.remove(id);
            taken
        };
        // New connections are refused from here; the staged disks are complete.
        exports.remove(&names);
        let result = restore_staged(root, &dir, &request);
        let _ = std::fs::remove_dir_all(&dir);
        Some(result)
    }
}

fn restore_staged(
    root: &Path,
    dir: &Path,
    request: &RestoreRequest,
) -> Result<RestoreDone, String> {
    let parse = |text: &str| {
        vmx::Dict::parse(text)
            .and_then(|d| vmx::Catalog::from_dict(&d))
            .map_err(|e| format!("catalog: {e}"))
    };
    let catalog = parse(&request.catalog)?;
    let opts = backup::RestoreOptions {
        alternate_catalog: request
            .alternate_catalog
            .as_deref()
            .map(parse)
            .transpose()?,
        policy: request.policy.parse().map_err(|e: String| e)?,
        disk_format: request
            .disk_format
            .as_deref()
            .map(vmdk::DiskFormat::parse)
            .transpose()
            .map_err(|e| e.to_string())?,
        allow_rdm: request.allow_rdm,
        power_off: request.power_off,
        wait: request.wait,
    };
    for (name, size) in &request.files {
        let staged = dir.join("files").join(checked(name)?);
        let got = std::fs::metadata(&staged)
            .map(|m| m.len())
            .map_err(|_| format!("{name} was not sent"))?;
        if got != *size {
            return Err(format!("{name}: {got} bytes sent, {size} declared"));
        }
    }
    let mut host = host::Host::open(root).map_err(|e| e.to_string())?;
    let source = Staged {
        dir: dir.to_path_buf(),
        count: request.files.len() + request.disks.len(),
    };
    let mut events = super::sessions::Collect::default();
    let report = backup::restore::restore_from(&mut host, &source, &catalog, &opts, &mut events)
        .map_err(|e| e.to_string())?;
    Ok(RestoreDone {
        vm: report.vm,
        vmx: report.vmx.to_string(),
        moref: report.moref.map(|m| m.to_string()),
        kept: report.kept,
        events: events.0,
    })
}

/// The staging folder as a restore source.
struct Staged {
    dir: PathBuf,
    count: usize,
}

impl RestoreSource for Staged {
    fn location(&self) -> String {
        "the backup proxy".to_owned()
    }

    fn count(&self) -> usize {
        self.count
    }

    fn reader(&self, name: &str) -> backup::Result<Box<dyn Read + Send>> {
        let missing = || backup::Error::MissingFile {
            location: self.location(),
            name: name.to_owned(),
        };
        let name = checked(name).map_err(|_| missing())?;
        let f = fsio::open_regular(&self.dir.join("files").join(name), fsio::OpenKind::Read)
            .map_err(|_| missing())?;
        Ok(Box::new(f))
    }

    fn open_disk(&self, name: &str) -> backup::Result<Box<dyn vmdk::DiskSource>> {
        let name = checked(name).map_err(backup::Error::Agent)?;
        let path = self.dir.join("disks").join(name);
        Ok(Box::new(vmdk::Disk::open(
            &path,
            &vmdk::OpenOptions::read_only(),
        )?))
    }
}

/// A new thin disk the proxy writes into.
struct StagedDisk {
    path: PathBuf,
    size: u64,
}

impl nbd::Export for StagedDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        true
    }

    fn open(&self) -> std::io::Result<Box<dyn nbd::Backend>> {
        let disk = vmdk::Disk::open(&self.path, &vmdk::OpenOptions::writable())
            .map_err(std::io::Error::other)?;
        Ok(Box::new(super::exports::DiskBackend { disk }))
    }
}
