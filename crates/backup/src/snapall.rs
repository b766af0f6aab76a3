//! vcbSnapAll: back up every VM a group specifier finds, one subfolder each.

use crate::dest::LocalDir;
use crate::error::{Error, Result};
use crate::export::{backup_vm, BackupOptions, BackupReport};
use crate::observer::Observer;
use std::path::{Path, PathBuf};

/// The outcome for one VM of a group backup.
#[derive(Debug)]
pub struct GroupItem {
    /// The VM's display name.
    pub vm: String,
    /// Its backup folder.
    pub dest: PathBuf,
    /// What happened.
    pub result: Result<BackupReport>,
}

/// Receives each VM's start and end, and everything its backup reports.
pub trait GroupObserver: Observer {
    /// The backup of `vm` into `dest` starts.
    fn vm_started(&mut self, _vm: &str, _dest: &Path) {}
    /// It ended.
    fn vm_finished(&mut self, _item: &GroupItem) {}
}

impl GroupObserver for () {}

/// Back up every VM `spec` finds into `<root>/<display name>`. One VM failing does not
/// stop the others; the caller decides the exit status from the items.
///
/// # Errors
/// Only for failures before any VM is looked at: a bad specifier, a missing `root`.
pub fn backup_group(
    host: &host::Host,
    spec: &str,
    root: &Path,
    opts: &BackupOptions,
    obs: &mut dyn GroupObserver,
) -> Result<Vec<GroupItem>> {
    let spec = host::Specifier::parse(spec)?;
    if !root.is_dir() {
        return Err(Error::DestinationParentMissing {
            path: root.to_path_buf(),
        });
    }
    let mut items = Vec::new();
    for moref in spec.find(host)? {
        let vm = host.vm(moref)?;
        let name = vm.name();
        let dest = root.join(folder_name(&name));
        obs.vm_started(&name, &dest);
        let mut d = LocalDir::new(&dest);
        let result = backup_vm(host, &format!("moref:{moref}"), &mut d, opts, obs);
        let item = GroupItem {
            vm: name,
            dest,
            result,
        };
        obs.vm_finished(&item);
        items.push(item);
    }
    Ok(items)
}

/// [`backup_group`] for a root given as the user wrote it: a local path, `file:///path`,
/// or an `scp://`/`sftp://` URL (each VM then goes to `<url>/<display name>` on the
/// server, reached with `remote`).
///
/// # Errors
/// As [`backup_group`]; for a remote root also [`Error::Remote`] when the server cannot
/// be reached and [`Error::DestinationParentMissing`] when the root folder is missing.
pub fn backup_group_to(
    host: &host::Host,
    spec: &str,
    root: &str,
    remote: &crate::remote::RemoteOptions,
    opts: &BackupOptions,
    obs: &mut dyn GroupObserver,
) -> Result<Vec<GroupItem>> {
    if !sftp::RemoteUrl::is_remote(root) {
        let dir = LocalDir::parse(root)?.dir().to_path_buf();
        return backup_group(host, spec, &dir, opts, obs);
    }
    let spec = host::Specifier::parse(spec)?;
    let url = sftp::RemoteUrl::parse(root)?;
    {
        let mut probe = crate::remote::Sftp::open(root, remote)?;
        let missing = || Error::DestinationParentMissing {
            path: PathBuf::from(root),
        };
        match probe.session_stat(&url.path) {
            Ok(st) if st.kind == sftp::FileKind::Dir => {}
            Ok(_) => return Err(missing()),
            Err(e) if e.is_not_found() => return Err(missing()),
            Err(e) => return Err(e.into()),
        }
        let _ = crate::dest::Destination::discard(&mut probe);
    }
    let base = root.trim_end_matches('/');
    let mut items = Vec::new();
    for moref in spec.find(host)? {
        let vm = host.vm(moref)?;
        let name = vm.name();
        let dest_spec = format!("{base}/{}", folder_name(&name));
        let dest = PathBuf::from(&dest_spec);
        obs.vm_started(&name, &dest);
        let result = crate::remote::Sftp::open(&dest_spec, remote)
            .and_then(|mut d| backup_vm(host, &format!("moref:{moref}"), &mut d, opts, obs));
        let item = GroupItem {
            vm: name,
            dest,
            result,
        };
        obs.vm_finished(&item);
        items.push(item);
    }
    Ok(items)
}

/// A display name as one folder name: `/` and control characters become `_`, and a
/// name that is empty or starts with `.` gets a `_` in front.
pub fn folder_name(display_name: &str) -> String {
    let mut s: String = display_name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_single_components() {
        assert_eq!(folder_name("vm37"), "vm37");
        assert_eq!(folder_name("a/b"), "a_b");
        assert_eq!(folder_name(".."), "_..");
        assert_eq!(folder_name(""), "_");
    }
}
