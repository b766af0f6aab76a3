//! The restored .vmx: the backup's .vmx with disk, NVRAM and suspend folder names
//! pointing at where things are restored.

use super::verify::RestoreSource;
use crate::error::{Error, Result};
use std::io::Read;
use vmx::DiskNode;

/// The .vmx of the backup (as verified), as a [`VmxEdit`].
pub(super) fn read_vmx(files: &dyn RestoreSource, name: &str) -> Result<VmxEdit> {
    let mut bytes = Vec::new();
    let what = format!("{}/{name}", files.location());
    files
        .reader(name)?
        .take(u64::try_from(vmx::MAX_INPUT_BYTES).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&what, "read", e))?;
    let dict = vmx::Dict::parse_bytes(&bytes).map_err(|e| Error::dict(&what, e))?;
    let config = vmx::VmConfig::from_dict(&dict).map_err(|e| Error::dict(&what, e))?;
    Ok(VmxEdit { config })
}

/// The restored .vmx being edited.
#[derive(Debug)]
pub(super) struct VmxEdit {
    config: vmx::VmConfig,
}

impl VmxEdit {
    pub(super) fn display_name(&self) -> Option<&str> {
        self.config.display_name()
    }
    pub(super) fn nvram(&self) -> Option<&str> {
        self.config.nvram()
    }
    /// The disks the .vmx attaches.
    pub(super) fn disks(&self) -> &[vmx::VmDisk] {
        self.config.disks()
    }
    /// Every key and value.
    pub(super) fn entries(&self) -> Vec<(String, String)> {
        self.config
            .dict()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
    /// Removes `key`.
    pub(super) fn remove(&mut self, key: &str) {
        let mut dict = self.config.dict().clone();
        dict.remove(key);
        // Removing a key cannot make a valid configuration invalid.
        if let Ok(c) = vmx::VmConfig::from_dict(&dict) {
            self.config = c;
        }
    }
    /// A raw .vmx value.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.config.dict().get(key)
    }
    pub(super) fn set_disk_file(
        &mut self,
        node: DiskNode,
        name: &str,
    ) -> std::result::Result<(), vmx::Error> {
        self.config.set_disk_file(node, name)
    }
    pub(super) fn set_nvram(&mut self, name: &str) -> std::result::Result<(), vmx::Error> {
        self.dict_set("nvram", name)
    }
    pub(super) fn dict_set(
        &mut self,
        key: &str,
        value: &str,
    ) -> std::result::Result<(), vmx::Error> {
        let mut dict = self.config.dict().clone();
        dict.set(key, value)?;
        self.config = vmx::VmConfig::from_dict(&dict)?;
        Ok(())
    }
}

impl std::fmt::Display for VmxEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.config, f)
    }
}
