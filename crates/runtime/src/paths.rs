//! The runtime's files in a VM folder, and resolving file names read from a .vmx.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use vmx::{DatastorePath, VmConfig};

use crate::error::{Error, Result};

/// QEMU's pid file (written and locked by QEMU, removed when it exits cleanly).
pub const PID_FILE: &str = ".vcb-qemu.pid";
/// The QMP monitor socket.
pub const QMP_SOCKET: &str = ".vcb-qmp.sock";
/// The guest agent socket (present when the VM has a guest agent channel).
pub const AGENT_SOCKET: &str = ".vcb-qga.sock";
/// The VM's log: QEMU's output, runtime actions and QMP events.
pub const LOG_FILE: &str = "vmware.log";

/// Where a VM's runtime files are. All paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    /// The VM folder (the .vmx file's folder). QEMU runs with it as working directory.
    pub folder: PathBuf,
    /// The .vmx file.
    pub vmx: PathBuf,
    /// [`PID_FILE`] in the folder.
    pub pid: PathBuf,
    /// [`QMP_SOCKET`] in the folder.
    pub qmp: PathBuf,
    /// [`AGENT_SOCKET`] in the folder.
    pub agent: PathBuf,
    /// [`LOG_FILE`] in the folder.
    pub log: PathBuf,
    /// The suspend file: `<vmx stem>.vmss` in `suspend.Directory`, else in the folder.
    pub vmss: PathBuf,
}

impl VmFiles {
    /// The files of the VM whose .vmx is `vmx`, with `suspend.Directory` taken from `cfg`
    /// when given.
    ///
    /// # Errors
    /// [`Error::Io`] if `vmx` cannot be made absolute; [`Error::Unsupported`] for a
    /// `suspend.Directory` that cannot be resolved.
    pub fn new(vmx: &Path, cfg: Option<&VmConfig>) -> Result<VmFiles> {
        VmFiles::locate(vmx, cfg, &BTreeMap::new(), None)
    }

    /// [`VmFiles::new`], resolving a `[datastore] path` suspend folder through
    /// `datastores`.
    pub(crate) fn locate(
        vmx: &Path,
        cfg: Option<&VmConfig>,
        datastores: &BTreeMap<String, PathBuf>,
        policy: Option<&dyn PathPolicy>,
    ) -> Result<VmFiles> {
        let vmx = std::path::absolute(vmx).map_err(|e| Error::io(vmx, "resolve", e))?;
        let folder = vmx.parent().unwrap_or(Path::new("/")).to_path_buf();
        let stem = vmx
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vm".to_owned());
        let suspend_dir = match cfg
            .and_then(VmConfig::suspend_dir)
            .filter(|d| !d.is_empty())
        {
            Some(dir) => {
                Resolver::new(&vmx, datastores, policy).resolve("suspend.Directory", dir)?
            }
            None => folder.clone(),
        };
        Ok(VmFiles {
            pid: folder.join(PID_FILE),
            qmp: folder.join(QMP_SOCKET),
            agent: folder.join(AGENT_SOCKET),
            log: folder.join(LOG_FILE),
            vmss: suspend_dir.join(format!("{stem}.vmss")),
            folder,
            vmx,
        })
    }
}

/// Where the file names a .vmx holds may lead: the host layer's one confinement rule
/// implements it (`host::Confined`), so the runtime resolves exactly what the host does.
pub trait PathPolicy: Send + Sync + std::fmt::Debug {
    /// The file the .vmx key `key` names with `name`, for the VM whose folder is
    /// `vm_folder`; `Err(reason)` refuses it.
    ///
    /// # Errors
    /// A one-line reason when the name is refused.
    fn resolve(
        &self,
        vm_folder: &Path,
        key: &str,
        name: &str,
    ) -> std::result::Result<PathBuf, String>;
}

/// Turns file names from a .vmx into paths: through the caller's [`PathPolicy`] when it
/// gave one; else relative to the VM folder (never leaving it: no `..`, no absolute
/// path) or `[datastore] path` through the datastore map.
pub(crate) struct Resolver<'a> {
    vmx: &'a Path,
    folder: &'a Path,
    datastores: &'a BTreeMap<String, PathBuf>,
    policy: Option<&'a dyn PathPolicy>,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(
        vmx: &'a Path,
        datastores: &'a BTreeMap<String, PathBuf>,
        policy: Option<&'a dyn PathPolicy>,
    ) -> Resolver<'a> {
        Resolver {
            vmx,
            folder: vmx.parent().unwrap_or(Path::new("/")),
            datastores,
            policy,
        }
    }

    /// Resolves the value `name` of the .vmx key `key`.
    pub(crate) fn resolve(&self, key: &str, name: &str) -> Result<PathBuf> {
        let unsupported = |reason: String| Error::Unsupported {
            vmx: self.vmx.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        if let Some(policy) = self.policy {
            return policy.resolve(self.folder, key, name).map_err(unsupported);
        }
        if name.trim_start().starts_with('[') {
            let ds: DatastorePath = name
                .parse()
                .map_err(|e| unsupported(format!("{name:?}: {e}")))?;
            let root = self
                .datastores
                .get(ds.datastore())
                .ok_or_else(|| unsupported(format!("{name:?}: unknown datastore")))?;
            return Ok(root.join(ds.path()));
        }
        let path = Path::new(name);
        let confined = !name.is_empty()
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !confined {
            return Err(unsupported(format!("{name:?} leaves the VM folder")));
        }
        Ok(self.folder.join(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_live_in_the_vm_folder() {
        let f = VmFiles::new(Path::new("/ds/vm37/vm37.vmx"), None).unwrap();
        assert_eq!(f.pid, Path::new("/ds/vm37/.vcb-qemu.pid"));
        assert_eq!(f.vmss, Path::new("/ds/vm37/vm37.vmss"));
        let text = "suspend.Directory = \"fast/suspend\"\n";
        let cfg = VmConfig::from_dict(&vmx::Dict::parse(text).unwrap()).unwrap();
        let f = VmFiles::new(Path::new("/ds/vm37/vm37.vmx"), Some(&cfg)).unwrap();
        assert_eq!(f.vmss, Path::new("/ds/vm37/fast/suspend/vm37.vmss"));
    }

    #[test]
    fn resolves_relative_absolute_and_datastore_names() {
        let mut ds = BTreeMap::new();
        ds.insert("datastore1".to_owned(), PathBuf::from("/vol/ds1"));
        let r = Resolver::new(Path::new("/vol/ds1/vm/vm.vmx"), &ds, None);
        assert_eq!(
            r.resolve("k", "d.vmdk").unwrap(),
            Path::new("/vol/ds1/vm/d.vmdk")
        );
        assert!(
            r.resolve("k", "/x/d.vmdk").is_err(),
            "absolute names need a policy"
        );
        assert_eq!(
            r.resolve("k", "[datastore1] other/d.vmdk").unwrap(),
            Path::new("/vol/ds1/other/d.vmdk")
        );
    }

    #[test]
    fn error_unsupported_names() {
        let ds = BTreeMap::new();
        let r = Resolver::new(Path::new("/vol/vm/vm.vmx"), &ds, None);
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "",
            "[nosuch] d.vmdk",
            "[bad",
            "/etc/x",
        ] {
            assert!(
                matches!(r.resolve("k", bad), Err(Error::Unsupported { .. })),
                "{bad}"
            );
        }
    }
}
