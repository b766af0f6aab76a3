//! Registering, unregistering and destroying VMs.

use std::fs;
use std::path::PathBuf;

use vmx::DatastorePath;

use crate::config::ContainerKind;
use crate::error::{Error, Result};
use crate::fsutil::{remove_file_if_exists, sync_dir};
use crate::lock::LockMode;
use crate::vm::{PowerState, Vm, VmRef};
use crate::Host;

/// What [`Host::destroy_vm`] removed and left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destroyed {
    /// Files deleted.
    pub deleted: Vec<PathBuf>,
    /// Files that belong to the VM but lie outside its folder, or other files found in
    /// its folder: left alone.
    pub left: Vec<PathBuf>,
}

impl Host {
    /// Prepares a change to the disk at `disk` by a disk tool: when it lies in a
    /// registered VM's folder, that VM's lock is taken (after finishing what an
    /// interrupted operation left) and returned, to be held for the whole change. A disk
    /// that a registered VM's chain uses as a parent (a linked clone's base, a snapshot's
    /// redo log parent) is refused: a parent with children is never written. `child`,
    /// when given, is the one link allowed to have `disk` as parent (a commit of it).
    ///
    /// # Errors
    /// [`Error::Busy`] (with [`LockMode::NoWait`]); [`Error::SharedParent`].
    pub fn lock_disk(
        &self,
        disk: &std::path::Path,
        mode: LockMode,
        child: Option<&std::path::Path>,
    ) -> Result<Option<crate::FileLock>> {
        self.check_shared_parent(disk, child)?;
        let canon = crate::fsutil::canonical(disk, "disk")?;
        let (vms, _) = self.vms();
        match vms
            .iter()
            .find(|vm| canon.parent() == Some(vm.dir.as_path()))
        {
            Some(vm) => Ok(Some(self.lock_vm(vm.moref, mode)?.into_lock())),
            None => Ok(None),
        }
    }

    /// Refuses `disk` when a registered VM's chain uses it as the parent of a link
    /// other than `child`.
    ///
    /// # Errors
    /// [`Error::SharedParent`].
    pub fn check_shared_parent(
        &self,
        disk: &std::path::Path,
        child: Option<&std::path::Path>,
    ) -> Result<()> {
        let canon = crate::fsutil::canonical(disk, "disk")?;
        let allowed = child.and_then(|c| std::fs::canonicalize(c).ok());
        let (vms, _) = self.vms();
        for vm in &vms {
            for chain in vm.all_chains(self) {
                let Some(i) = chain.iter().position(|l| *l == canon).filter(|&i| i > 0) else {
                    continue;
                };
                if allowed.as_ref() != Some(&chain[i - 1]) {
                    return Err(Error::SharedParent {
                        disk: canon,
                        child: chain[i - 1].clone(),
                        vm: vm.name(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Registers the VM whose .vmx is `vmx`. The .vmx must parse and every file name in
    /// it must stay inside the host's datastores.
    ///
    /// # Errors
    /// [`Error::UnknownDatastore`], [`Error::MissingFile`], [`Error::Vmx`],
    /// [`Error::OutsideDatastores`], [`Error::UnknownContainer`],
    /// [`Error::AlreadyRegistered`].
    pub fn register_vm(
        &mut self,
        vmx: &DatastorePath,
        folder: Option<&str>,
        pool: Option<&str>,
    ) -> Result<Vm> {
        let lock = self.lock_host(LockMode::Wait)?;
        self.register_vm_locked(&lock, vmx, folder, pool)
    }

    /// [`Host::register_vm`] with the host lock already held.
    ///
    /// # Errors
    /// As for [`Host::register_vm`].
    pub fn register_vm_locked(
        &mut self,
        lock: &crate::HostLock,
        vmx: &DatastorePath,
        folder: Option<&str>,
        pool: Option<&str>,
    ) -> Result<Vm> {
        let folder = self.container(ContainerKind::Folder, folder.unwrap_or("/"))?;
        let pool = self.container(ContainerKind::Pool, pool.unwrap_or("/"))?;
        let probe = Vm::load(self, VmRef(0), vmx, &folder, &pool)?;
        for d in probe.config.disks() {
            probe.resolve_name(self, &d.file_name)?;
        }
        if let Some(nvram) = probe.config.nvram().filter(|s| !s.is_empty()) {
            probe.resolve_name(self, nvram)?;
        }
        let me = self.clone();
        let moref = self.update_locked(lock, |_, inventory| {
            for (i, e) in inventory.vms.iter().enumerate() {
                let same = e
                    .vmx
                    .parse::<DatastorePath>()
                    .ok()
                    .and_then(|dp| me.resolve(&dp).ok())
                    .and_then(|p| fs::canonicalize(p).ok())
                    .is_some_and(|p| p == probe.vmx_path);
                if same {
                    return Err(Error::AlreadyRegistered {
                        vmx: e.vmx.clone(),
                        moref: inventory.moref_at(i),
                    });
                }
            }
            Ok(VmRef(inventory.add(vmx.to_string(), folder, pool)))
        })?;
        self.vm(moref)
    }

    /// Removes the VM from the inventory; its files stay. Takes the host lock, then the
    /// VM's lock (`mode` says whether to wait for it), so it never races a backup or a
    /// snapshot operation on the VM.
    ///
    /// # Errors
    /// [`Error::NotRegistered`], [`Error::Busy`].
    pub fn unregister_vm(&mut self, moref: VmRef, mode: LockMode) -> Result<()> {
        let lock = self.lock_host(LockMode::Wait)?;
        let vm = self.vm(moref)?;
        let _vm_lock = vm.lock(mode)?;
        self.unregister_vm_locked(&lock, moref)
    }

    /// Moves a registered VM to another folder and resource pool in one inventory write
    /// (its moref stays), with the host lock held.
    ///
    /// # Errors
    /// [`Error::NotRegistered`], [`Error::UnknownContainer`].
    pub fn place_vm_locked(
        &mut self,
        lock: &crate::HostLock,
        moref: VmRef,
        folder: Option<&str>,
        pool: Option<&str>,
    ) -> Result<Vm> {
        let folder = self.container(ContainerKind::Folder, folder.unwrap_or("/"))?;
        let pool = self.container(ContainerKind::Pool, pool.unwrap_or("/"))?;
        self.update_locked(lock, |_, inventory| {
            let i = inventory
                .index_of(moref.0)
                .ok_or(Error::NotRegistered { moref: moref.0 })?;
            inventory.vms[i].folder = folder;
            inventory.vms[i].pool = pool;
            Ok(())
        })?;
        self.vm(moref)
    }

    /// Removes the VM from the inventory with the host lock held; the caller holds the
    /// VM's lock too.
    ///
    /// # Errors
    /// [`Error::NotRegistered`].
    pub fn unregister_vm_locked(&mut self, lock: &crate::HostLock, moref: VmRef) -> Result<()> {
        self.update_locked(lock, |_, inventory| {
            let i = inventory
                .index_of(moref.0)
                .ok_or(Error::NotRegistered { moref: moref.0 })?;
            inventory.vms.remove(i);
            Ok(())
        })
    }

    /// Unregisters the VM and deletes its files: the .vmx, .vmsd, NVRAM, logs, snapshot
    /// state and memory files, suspended state and every disk link inside its folder;
    /// then the folder when it is empty. Disks outside the folder are left (another VM
    /// may use them).
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] for a running VM, [`Error::Busy`], and file errors.
    pub fn destroy_vm(&mut self, moref: VmRef, mode: LockMode) -> Result<Destroyed> {
        // Host lock, then VM lock: the order every other path takes them in.
        let host_lock = self.lock_host(LockMode::Wait)?;
        let me = self.clone();
        let mut locked = me.lock_vm(moref, mode)?;
        let vm = locked.vm().clone();
        let state = vm.power_state(self);
        if state == PowerState::PoweredOn {
            return Err(Error::WrongPowerState {
                vm: vm.name(),
                state,
                reason: "power it off first",
            });
        }
        let mut files = vm.config_files(self)?;
        files.extend(vm.suspend_file(self));
        let uids: Vec<u64> = locked
            .snapshots()
            .snapshots()
            .iter()
            .map(|s| s.uid)
            .collect();
        files.extend(
            uids.iter()
                .filter_map(|uid| locked.snapshot_memory_file(*uid)),
        );
        for disk in locked.disk_files()? {
            let links = vmdk::link_files(&disk).map_err(|e| Error::disk("list disk files", e))?;
            files.extend(links);
        }
        let mut out = Destroyed::default();
        let vm_dir = vm.dir.clone();
        let in_folder = |p: &PathBuf| crate::fsutil::parent_dir(p) == vm_dir;
        let (inside, outside): (Vec<PathBuf>, Vec<PathBuf>) =
            files.into_iter().partition(in_folder);
        out.left.extend(outside);
        self.unregister_vm_locked(&host_lock, moref)?;
        for f in inside {
            if !out.deleted.contains(&f) && remove_file_if_exists(&f)? {
                out.deleted.push(f);
            }
        }
        for name in [crate::lock::LOCK_FILE_NAME, crate::snapshot::JOURNAL_FILE] {
            remove_file_if_exists(&vm_dir.join(name))?;
        }
        drop(locked);
        drop(host_lock);
        let is_datastore_root = self
            .datastores()
            .iter()
            .any(|ds| fs::canonicalize(&ds.path).is_ok_and(|p| p == vm_dir));
        let rest: Vec<PathBuf> = fs::read_dir(&vm_dir)
            .map_err(|e| Error::io(&vm_dir, "list folder", e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if rest.is_empty() && !is_datastore_root {
            fs::remove_dir(&vm_dir).map_err(|e| Error::io(&vm_dir, "remove folder", e))?;
            sync_dir(&crate::fsutil::parent_dir(&vm_dir))?;
        } else if !is_datastore_root {
            out.left.extend(rest);
        }
        Ok(out)
    }
}
