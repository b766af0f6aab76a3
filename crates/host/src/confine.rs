//! The host's one path-confinement rule: [`Confined`].
//!
//! Every file name vcb reads from a .vmx, .vmsd, disk descriptor, catalog or runtime key
//! is untrusted. [`Confined`] turns such a name into a path, or refuses it, by one rule
//! that host, runtime (through [`runtime::PathPolicy`]) and backup all use:
//!
//! - A VM file (disk, NVRAM, serial file, log, suspend or snapshot folder, `vcb.kernel`,
//!   `vcb.initrd`, EFI variables) resolves inside one of the host's datastores. Names
//!   are relative to the VM folder, `[datastore] path`, `/vmfs/volumes/<ds>/...`, or
//!   absolute; symbolic links are resolved *before* the check (for a file that does not
//!   exist yet, its nearest existing folder is resolved).
//! - An existing name must be a regular file or a folder: a FIFO or device is refused
//!   (raw device mappings are disk extents, confined by the vmdk layer's own rule).
//! - Disk chains open with [`vmdk::Confinement::Roots`] over the same datastores: an
//!   extent or parent lies in its descriptor's folder, or anywhere in the datastores
//!   when the descriptor does too (linked clones).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use vmx::DatastorePath;

use crate::Host;

/// The host's confinement rule over its datastores (see the module doc).
#[derive(Debug, Clone)]
pub struct Confined {
    /// Canonical folders of the datastores that exist.
    roots: Arc<[PathBuf]>,
    /// Datastore name → folder as configured.
    datastores: BTreeMap<String, PathBuf>,
}

impl Confined {
    /// The rule over `host`'s datastores as configured now.
    pub fn of(host: &Host) -> Confined {
        let datastores: BTreeMap<String, PathBuf> = host
            .datastores()
            .into_iter()
            .map(|d| (d.name, d.path))
            .collect();
        let roots: Vec<PathBuf> = datastores
            .values()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        Confined {
            roots: roots.into(),
            datastores,
        }
    }

    /// The canonical datastore folders.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// True if the canonical `path` lies inside a datastore.
    pub fn contains(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r))
    }

    /// The path a name written in a .vmx or .vmsd of the VM in `vm_dir` stands for,
    /// checked (see the module doc). Canonical when the file exists.
    ///
    /// # Errors
    /// A one-line reason when the name is refused.
    pub fn vm_file(&self, vm_dir: &Path, name: &str) -> Result<PathBuf, String> {
        if name.is_empty() || name.contains(char::is_control) {
            return Err(format!("{name:?} is not a file name"));
        }
        let path = if name.trim_start().starts_with('[') {
            let dp: DatastorePath = name.parse().map_err(|e| format!("{name:?}: {e}"))?;
            self.join(&dp)?
        } else if let Some(rest) = name.strip_prefix("/vmfs/volumes/") {
            let (ds, rel) = rest.split_once('/').unwrap_or((rest, ""));
            let dp = DatastorePath::new(ds, rel).map_err(|e| format!("{name:?}: {e}"))?;
            self.join(&dp)?
        } else if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            vmx::validate_relative_name(name).map_err(|e| e.to_string())?;
            vm_dir.join(name)
        };
        self.check(&path, name)
    }

    /// The path a datastore path (from a catalog or the user) stands for, checked.
    ///
    /// # Errors
    /// A one-line reason: unknown datastore, or a path leaving it through a link.
    pub fn datastore_path(&self, dp: &DatastorePath) -> Result<PathBuf, String> {
        let path = self.join(dp)?;
        // A datastore path stays in its own datastore, not just in some datastore.
        let own = self
            .datastores
            .get(dp.datastore())
            .and_then(|p| std::fs::canonicalize(p).ok());
        let resolved = resolve_existing(&path);
        match own {
            Some(root) if resolved.starts_with(&root) => self.check(&path, &dp.to_string()),
            _ => Err(format!("leaves datastore {}", dp.datastore())),
        }
    }

    /// Options that open disk chains under this rule.
    pub fn disk_options(&self, writable: bool) -> vmdk::OpenOptions {
        vmdk::OpenOptions {
            writable,
            confinement: vmdk::Confinement::Roots(self.roots.clone()),
            source: None,
        }
    }

    /// The rule as the runtime's [`runtime::PathPolicy`].
    pub fn policy(&self) -> Arc<dyn runtime::PathPolicy> {
        Arc::new(self.clone())
    }

    fn join(&self, dp: &DatastorePath) -> Result<PathBuf, String> {
        let folder = self
            .datastores
            .get(dp.datastore())
            .ok_or_else(|| format!("{dp}: unknown datastore {:?}", dp.datastore()))?;
        Ok(if dp.path().is_empty() {
            folder.clone()
        } else {
            folder.join(dp.path())
        })
    }

    /// Resolves `path` (links followed, as far as it exists) and checks it.
    fn check(&self, path: &Path, name: &str) -> Result<PathBuf, String> {
        let resolved = resolve_existing(path);
        if !self.contains(&resolved) {
            return Err(format!("{name:?} lies outside the host's datastores"));
        }
        if let Ok(meta) = std::fs::metadata(&resolved) {
            if !(meta.is_file() || meta.is_dir()) {
                return Err(format!("{name:?} is not a regular file or folder"));
            }
        }
        Ok(resolved)
    }
}

impl runtime::PathPolicy for Confined {
    fn resolve(&self, vm_folder: &Path, _key: &str, name: &str) -> Result<PathBuf, String> {
        self.vm_file(vm_folder, name)
    }
}

/// `path` with symbolic links resolved: canonical when it exists, else its nearest
/// existing ancestor canonical with the rest appended (`..` taken lexically).
pub(crate) fn resolve_existing(path: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(path) {
        return c;
    }
    let mut tail = Vec::new();
    let mut cur = path.to_path_buf();
    loop {
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                let parent = parent.to_path_buf();
                if let Ok(c) = std::fs::canonicalize(&parent) {
                    let mut out = c;
                    for n in tail.iter().rev() {
                        out.push(n);
                    }
                    return lexical(&out);
                }
                cur = parent;
            }
            _ => return lexical(path),
        }
    }
}

fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_files_stay_in_the_datastores() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::init(&dir.path().join("root"), "h").unwrap();
        let ds = host.datastore("datastore1").unwrap().path;
        let vm = ds.join("vm");
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::write(vm.join("vm.nvram"), "").unwrap();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, vm.join("link.log")).unwrap();
        let c = Confined::of(&host);
        let canon_vm = std::fs::canonicalize(&vm).unwrap();
        assert_eq!(
            c.vm_file(&vm, "vm.nvram").unwrap(),
            canon_vm.join("vm.nvram")
        );
        assert_eq!(c.vm_file(&vm, "new.log").unwrap(), canon_vm.join("new.log"));
        assert_eq!(
            c.vm_file(&vm, "[datastore1] vm/vm.nvram").unwrap(),
            canon_vm.join("vm.nvram")
        );
        assert_eq!(
            c.vm_file(&vm, "/vmfs/volumes/datastore1/vm/x").unwrap(),
            canon_vm.join("x")
        );
        for bad in [
            "/some/host/file",
            "link.log",
            "../../../secret",
            "[nosuch] a",
            "",
            "/dev/null",
            "/vmfs/volumes/datastore1/../../secret",
        ] {
            assert!(c.vm_file(&vm, bad).is_err(), "{bad}");
        }
        let fifo = vm.join("pipe");
        let cs = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(cs.as_ptr(), 0o600) }, 0);
        let e = c.vm_file(&vm, "pipe").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
