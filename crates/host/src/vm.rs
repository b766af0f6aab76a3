//! [`Vm`]: a registered VM as read from its .vmx, with its files confined to the host's
//! datastores.

use std::fmt;
use std::path::{Path, PathBuf};

use vmx::{DatastorePath, DiskNode, Uuid, VmConfig};

use crate::error::{Error, Result};
use crate::fsutil::{canonical, parent_dir, read_text};
use crate::lock::{FileLock, LockMode, LOCK_FILE_NAME};
use crate::Host;

/// A VM's managed object reference: a number assigned when the inventory is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct VmRef(pub u32);

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A VM's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerState {
    /// Running: a live QEMU runs the VM (see [`Vm::runtime`]).
    PoweredOn,
    /// Not running, no suspended state.
    PoweredOff,
    /// A suspended state file (.vmss) exists.
    Suspended,
}

impl PowerState {
    /// The specifier spelling: `on`, `off` or `suspended`.
    pub fn short_name(self) -> &'static str {
        match self {
            PowerState::PoweredOn => "on",
            PowerState::PoweredOff => "off",
            PowerState::Suspended => "suspended",
        }
    }

    /// Parses `on`, `off` or `suspended` (and the vSphere names), any case.
    pub fn parse(s: &str) -> Option<PowerState> {
        match s.to_ascii_lowercase().as_str() {
            "on" | "poweredon" => Some(PowerState::PoweredOn),
            "off" | "poweredoff" => Some(PowerState::PoweredOff),
            "suspended" => Some(PowerState::Suspended),
            _ => None,
        }
    }
}

impl fmt::Display for PowerState {
    /// The vSphere name: `poweredOn`, `poweredOff`, `suspended`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::PoweredOn => "poweredOn",
            PowerState::PoweredOff => "poweredOff",
            PowerState::Suspended => "suspended",
        })
    }
}

/// A registered VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Its moref.
    pub moref: VmRef,
    /// The .vmx as registered.
    pub vmx: DatastorePath,
    /// The .vmx file (canonical).
    pub vmx_path: PathBuf,
    /// The VM folder: the folder holding the .vmx (canonical).
    pub dir: PathBuf,
    /// The VM folder in the inventory (normalised; `/` is the root).
    pub folder: String,
    /// The resource pool (normalised; `/` is the root pool).
    pub pool: String,
    /// The .vmx contents.
    pub config: VmConfig,
}

/// One virtual disk of a VM, its file resolved and confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDiskFile {
    /// Where it is attached.
    pub node: DiskNode,
    /// `<node>.fileName` as written in the .vmx.
    pub file_name: String,
    /// The descriptor (canonical path).
    pub path: PathBuf,
    /// `<node>.mode` is `independent-*`: snapshots leave the disk alone.
    pub independent: bool,
}

impl Vm {
    /// Reads the VM registered as `vmx` with moref `moref`.
    ///
    /// # Errors
    /// [`Error::UnknownDatastore`], [`Error::MissingFile`], [`Error::Vmx`] (a malformed or
    /// hostile .vmx: bad lines, duplicate keys, bad values).
    pub fn load(
        host: &Host,
        moref: VmRef,
        vmx: &DatastorePath,
        folder: &str,
        pool: &str,
    ) -> Result<Vm> {
        let path = host.resolve(vmx)?;
        let vmx_path = canonical(&path, ".vmx file")?;
        if let Err(reason) = host.confined().datastore_path(vmx) {
            return Err(Error::OutsideDatastores {
                file: path,
                name: vmx.to_string(),
                reason,
            });
        }
        let config = read_vmx(&vmx_path)?;
        Ok(Vm {
            moref,
            vmx: vmx.clone(),
            dir: parent_dir(&vmx_path),
            vmx_path,
            folder: folder.to_owned(),
            pool: pool.to_owned(),
            config,
        })
    }

    /// The display name, or the .vmx file's stem when there is none.
    pub fn name(&self) -> String {
        match self.config.display_name() {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => self.stem(),
        }
    }

    /// The .vmx file name without `.vmx`: the base of the VM's other file names.
    pub fn stem(&self) -> String {
        let name = self
            .vmx_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.strip_suffix(".vmx").map(str::to_owned).unwrap_or(name)
    }

    /// `uuid.bios`.
    pub fn uuid(&self) -> Option<Uuid> {
        self.config.uuid_bios()
    }

    /// `guestinfo.ip`.
    pub fn guest_ip(&self) -> Option<&str> {
        self.config.guest_ip().filter(|s| !s.is_empty())
    }

    /// The snapshot database file (`NAME.vmsd` beside the .vmx).
    pub fn vmsd_path(&self) -> PathBuf {
        self.dir.join(format!("{}.vmsd", self.stem()))
    }

    /// The VM folder's lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE_NAME)
    }

    /// Takes the VM folder lock.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds it and `mode` is [`LockMode::NoWait`].
    pub fn lock(&self, mode: LockMode) -> Result<FileLock> {
        FileLock::acquire(&self.lock_path(), mode)
    }

    /// The power state: powered on while a live QEMU runs the VM, else suspended when a
    /// .vmss exists, else powered off. A QEMU that died counts as off (its stale pid file
    /// and sockets are removed), so a suspended VM with a stale pid file is suspended.
    ///
    /// Cheap for VMs that do not run (one `stat` of QEMU's pid file): listings call it
    /// for every VM.
    pub fn power_state(&self, host: &Host) -> PowerState {
        if matches!(self.runtime_state(host), Ok(Some(_))) {
            PowerState::PoweredOn
        } else if self.suspend_file(host).is_some() {
            PowerState::Suspended
        } else {
            PowerState::PoweredOff
        }
    }

    /// The VM's handle in the QEMU runtime, resolving `[datastore] path` names through
    /// the host's datastores. It holds no lock: take the VM lock ([`Host::lock_vm`])
    /// before changing the VM through it, or use the power operations of
    /// [`LockedVm`](crate::LockedVm).
    pub fn runtime(&self, host: &Host) -> runtime::Vm {
        let datastores = host
            .datastores()
            .into_iter()
            .map(|d| (d.name, d.path))
            .collect();
        runtime::Vm::new(&self.vmx_path)
            .with_datastores(datastores)
            .with_policy(host.confined().policy())
    }

    /// The runtime handle when a live QEMU runs the VM, `None` when none does.
    ///
    /// # Errors
    /// [`Error::Runtime`] when the runtime cannot tell (its files cannot be located).
    pub(crate) fn runtime_state(&self, host: &Host) -> Result<Option<runtime::Vm>> {
        // QEMU writes its pid file before it runs anything: without one no QEMU runs,
        // and asking the runtime (which parses the .vmx again) is not needed.
        if !self.dir.join(runtime::PID_FILE).exists() {
            return Ok(None);
        }
        let rt = self.runtime(host);
        match rt.status() {
            Ok(runtime::RuntimeState::Running { .. }) => Ok(Some(rt)),
            Ok(_) => Ok(None),
            Err(source) => Err(Error::Runtime {
                vm: self.name(),
                source: Box::new(source),
            }),
        }
    }

    /// The guest's IP addresses: from the guest agent while the VM runs and has one,
    /// else `guestinfo.ip` from the .vmx (empty when neither knows). Asking an agent
    /// takes a round trip to the guest (at most a few seconds when it does not answer).
    pub fn guest_ips(&self, host: &Host) -> Vec<String> {
        if let Ok(Some(rt)) = self.runtime_state(host) {
            if let Ok(Some(ips)) = rt.guest_ips() {
                if !ips.is_empty() {
                    return ips.iter().map(ToString::to_string).collect();
                }
            }
        }
        self.guest_ip().map(str::to_owned).into_iter().collect()
    }

    /// The suspended state file, if one exists: `checkpoint.vmState`, else `NAME.vmss` or
    /// `NAME-*.vmss` in the suspend folder.
    pub fn suspend_file(&self, host: &Host) -> Option<PathBuf> {
        let dir = match self.config.suspend_dir().filter(|s| !s.is_empty()) {
            Some(d) => self.resolve_name(host, d).ok()?,
            None => self.dir.clone(),
        };
        if let Some(state) = self
            .config
            .dict()
            .get("checkpoint.vmState")
            .filter(|s| !s.is_empty())
        {
            if let Ok(p) = self.resolve_name(host, state) {
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        let stem = self.stem();
        let entries = std::fs::read_dir(&dir).ok()?;
        entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_suffix(".vmss")
                    .is_some_and(|s| s == stem || s.starts_with(&format!("{stem}-")))
            })
        })
    }

    /// Resolves a file name written in the .vmx or .vmsd by the host's one rule
    /// ([`Confined::vm_file`](crate::Confined::vm_file)): relative to the VM folder, a
    /// datastore path, or an absolute path; the result (canonical when the file exists)
    /// lies inside one of the host's datastores.
    ///
    /// # Errors
    /// [`Error::OutsideDatastores`] saying why the name is refused.
    pub fn resolve_name(&self, host: &Host, name: &str) -> Result<PathBuf> {
        host.confined()
            .vm_file(&self.dir, name)
            .map_err(|reason| Error::OutsideDatastores {
                file: self.vmx_path.clone(),
                name: name.to_owned(),
                reason,
            })
    }

    /// How to write `path` into the .vmx or .vmsd: a bare name inside the VM folder, else
    /// a datastore path (else the absolute path).
    pub fn ref_name(&self, host: &Host, path: &Path) -> String {
        if parent_dir(path) == self.dir {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                return name.to_owned();
            }
        }
        match host.datastore_path_of(path) {
            Some(dp) => dp.to_string(),
            None => path.to_string_lossy().into_owned(),
        }
    }

    /// The VM's disks, resolved and confined. Each descriptor must exist.
    ///
    /// # Errors
    /// As for [`Vm::resolve_name`]; [`Error::MissingFile`].
    pub fn disks(&self, host: &Host) -> Result<Vec<VmDiskFile>> {
        self.config
            .disks()
            .iter()
            .map(|d| {
                let path = self.resolve_name(host, &d.file_name)?;
                if !path.exists() {
                    return Err(Error::MissingFile { path, what: "disk" });
                }
                let mode = self
                    .config
                    .dict()
                    .get(&format!("{}.mode", d.node))
                    .unwrap_or_default();
                Ok(VmDiskFile {
                    node: d.node,
                    file_name: d.file_name.clone(),
                    path,
                    independent: mode.to_ascii_lowercase().starts_with("independent"),
                })
            })
            .collect()
    }

    /// The configuration files that exist: .vmx, .vmsd, .vmxf, NVRAM, the EFI variable
    /// store (`<stem>.efivars.fd`), snapshot state files (.vmsn) and logs
    /// (`vmware*.log`) in the VM folder.
    ///
    /// # Errors
    /// As for [`Vm::resolve_name`] (for the NVRAM name).
    pub fn config_files(&self, host: &Host) -> Result<Vec<PathBuf>> {
        let mut files = vec![self.vmx_path.clone()];
        if let Some(nvram) = self.config.nvram().filter(|s| !s.is_empty()) {
            let p = self.resolve_name(host, nvram)?;
            if p.is_file() {
                files.push(p);
            }
        }
        let stem = self.stem();
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, "list folder", e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                n == format!("{stem}.vmsd")
                    || n == format!("{stem}.vmxf")
                    || n == format!("{stem}.efivars.fd")
                    || n.ends_with(".vmsn")
                    || (n.starts_with("vmware") && n.ends_with(".log"))
            })
            .collect();
        extra.sort();
        for p in extra {
            if !files.contains(&p) {
                files.push(p);
            }
        }
        Ok(files)
    }
}

/// Reads and parses a .vmx file.
pub(crate) fn read_vmx(path: &Path) -> Result<VmConfig> {
    let max = u64::try_from(vmx::MAX_INPUT_BYTES).unwrap_or(u64::MAX);
    let text = read_text(path, max)?;
    let dict = vmx::Dict::parse(&text).map_err(|e| Error::vmx(path, e))?;
    VmConfig::from_dict(&dict).map_err(|e| Error::vmx(path, e))
}

impl Host {
    /// The registered VMs' morefs, .vmx paths, folders and pools, in inventory order.
    pub fn entries(&self) -> Vec<(VmRef, &crate::InventoryEntry)> {
        self.inventory
            .vms
            .iter()
            .enumerate()
            .map(|(i, e)| (VmRef(self.inventory.moref_at(i)), e))
            .collect()
    }

    /// Loads the VM with `moref`.
    ///
    /// # Errors
    /// [`Error::NotRegistered`], and as for [`Vm::load`].
    pub fn vm(&self, moref: VmRef) -> Result<Vm> {
        let i = self
            .inventory
            .index_of(moref.0)
            .ok_or(Error::NotRegistered { moref: moref.0 })?;
        let e = &self.inventory.vms[i];
        let dp: DatastorePath = e
            .vmx
            .parse()
            .map_err(|err| Error::vmx(self.root().join(crate::host::INVENTORY_FILE), err))?;
        Vm::load(self, moref, &dp, &e.folder, &e.pool)
    }

    /// Every registered VM that loads, with the errors of those that do not.
    pub fn vms(&self) -> (Vec<Vm>, Vec<(VmRef, Error)>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (moref, _) in self.entries() {
            match self.vm(moref) {
                Ok(vm) => good.push(vm),
                Err(e) => bad.push((moref, e)),
            }
        }
        (good, bad)
    }
}

#[cfg(test)]
#[path = "vm_tests.rs"]
mod tests;
