//! What a restore may not touch: the files and folders of other registered VMs, and
//! file names in the restored .vmx that lead there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folders and files registered VMs own (one VM may be left out: the one a restore
/// replaces).
#[derive(Debug, Default)]
pub(super) struct Owned {
    /// VM folder (canonical) → VM name.
    dirs: BTreeMap<PathBuf, String>,
    /// File (canonical) → VM name.
    files: BTreeMap<PathBuf, String>,
}

impl Owned {
    /// What every registered VM but `except` owns.
    pub(super) fn of(host: &host::Host, except: Option<host::VmRef>) -> Owned {
        let mut out = Owned::default();
        for (moref, entry) in host.entries() {
            if Some(moref) == except {
                continue;
            }
            let name = format!("{} (moref {moref})", entry.vmx);
            // A VM whose .vmx does not load still owns its folder.
            if let Some(dir) = entry
                .vmx
                .parse::<vmx::DatastorePath>()
                .ok()
                .and_then(|dp| host.resolve(&dp).ok())
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .and_then(|d| std::fs::canonicalize(d).ok())
            {
                out.dirs.insert(dir, name.clone());
            }
            if let Ok(vm) = host.vm(moref) {
                for f in vm.owned_files(host) {
                    out.files.insert(canonical(&f), name.clone());
                }
            }
        }
        out
    }

    /// The VM that owns `path` (a file or folder), if any.
    pub(super) fn owner(&self, path: &Path) -> Option<&str> {
        let path = canonical(path);
        if let Some(vm) = self.files.get(&path) {
            return Some(vm);
        }
        self.dirs
            .iter()
            .find(|(dir, _)| path.starts_with(dir))
            .map(|(_, vm)| vm.as_str())
    }

    /// Refuses `path` (named `what`) when another VM owns it.
    pub(super) fn refuse(&self, what: &str, path: &Path) -> Result<()> {
        match self.owner(path) {
            Some(vm) => Err(Error::unsafe_path(
                what,
                path.display().to_string(),
                format!("belongs to registered VM {vm}; a restore never overwrites or reuses another VM's files"),
            )),
            None => Ok(()),
        }
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        match (
            p.parent().and_then(|d| std::fs::canonicalize(d).ok()),
            p.file_name(),
        ) {
            (Some(d), Some(n)) => d.join(n),
            _ => p.to_path_buf(),
        }
    })
}

/// Whether the .vmx key `key` names a file (checked like the disks are).
pub(super) fn is_path_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with(".filename")
        || matches!(
            k.as_str(),
            "nvram"
                | "suspend.directory"
                | "checkpoint.vmstate"
                | "workingdir"
                | "log.filename"
                | "sched.swap.dir"
                | "sched.swap.derivedname"
                | "vcb.kernel"
                | "vcb.initrd"
                | "uefi.vars.filename"
        )
}

/// Keys of the runtime's own (`vcb.*`) that name files: dropped from a restored .vmx
/// when they lead outside the datastores or into another VM's files.
pub(super) fn is_runtime_key(key: &str) -> bool {
    key.to_ascii_lowercase().starts_with("vcb.")
}
