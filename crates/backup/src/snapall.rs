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

/// One VM of a group: its moref, name and backup folder name, or why it cannot be loaded.
struct Member {
    moref: host::VmRef,
    name: String,
    folder: String,
    broken: Option<Error>,
}

/// The VMs `spec` finds, each with a folder name of its own: VMs sharing a display name
/// get `<name>_<moref>` (so none overwrites or refuses another's backup). With `any:`,
/// VMs whose .vmx cannot be loaded are members too, with their error: they are reported
/// as failed instead of silently left out.
fn members(host: &host::Host, spec: &host::Specifier) -> Result<Vec<Member>> {
    let mut out: Vec<Member> = Vec::new();
    for moref in spec.find(host)? {
        match host.vm(moref) {
            Ok(vm) => out.push(Member {
                moref,
                name: vm.name(),
                folder: String::new(),
                broken: None,
            }),
            Err(e) => out.push(broken(host, moref, e)),
        }
    }
    if *spec == host::Specifier::Any {
        let (_, bad) = host.vms();
        for (moref, e) in bad {
            if !out.iter().any(|m| m.moref == moref) {
                out.push(broken(host, moref, e));
            }
        }
        out.sort_by_key(|m| m.moref);
    }
    for i in 0..out.len() {
        let shared = out.iter().filter(|m| m.name == out[i].name).count() > 1;
        out[i].folder = if shared {
            folder_name(&format!("{}_{}", out[i].name, out[i].moref))
        } else {
            folder_name(&out[i].name)
        };
    }
    Ok(out)
}

fn broken(host: &host::Host, moref: host::VmRef, e: impl Into<Error>) -> Member {
    let name = host
        .entries()
        .into_iter()
        .find(|(m, _)| *m == moref)
        .map_or_else(|| format!("moref {moref}"), |(_, entry)| entry.vmx.clone());
    Member {
        moref,
        name,
        folder: String::new(),
        broken: Some(e.into()),
    }
}

/// Back up every VM `spec` finds into `<root>/<display name>`. One VM failing (even one
/// whose .vmx cannot be read) does not stop the others; the caller decides the exit
/// status from the items.
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
    for m in members(host, &spec)? {
        let dest = root.join(&m.folder);
        obs.vm_started(&m.name, &dest);
        let result = match m.broken {
            Some(e) => Err(e),
            None => {
                let mut d = LocalDir::new(&dest);
                backup_vm(host, &format!("moref:{}", m.moref), &mut d, opts, obs)
            }
        };
        let item = GroupItem {
            vm: m.name,
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
    for m in members(host, &spec)? {
        let dest_spec = format!("{base}/{}", m.folder);
        let dest = PathBuf::from(&dest_spec);
        obs.vm_started(&m.name, &dest);
        let moref = m.moref;
        let result = match m.broken {
            Some(e) => Err(e),
            None => crate::remote::Sftp::open(&dest_spec, remote)
                .and_then(|mut d| backup_vm(host, &format!("moref:{moref}"), &mut d, opts, obs)),
        };
        let item = GroupItem {
            vm: m.name,
            dest,
            result,
        };
        obs.vm_finished(&item);
        items.push(item);
    }
    Ok(items)
}

/// Back up every VM `spec` finds into the repository `repo` (one point each; VMs are
/// grouped by uuid in the repository, so twins need no folder names).
///
/// # Errors
/// Only for a bad specifier; each VM's outcome is in its item.
pub fn backup_group_to_repo(
    host: &host::Host,
    spec: &str,
    repo: &repo::Repository,
    opts: &BackupOptions,
    obs: &mut dyn GroupObserver,
) -> Result<Vec<GroupItem>> {
    let spec = host::Specifier::parse(spec)?;
    let dest = PathBuf::from(repo.location());
    let mut items = Vec::new();
    for m in members(host, &spec)? {
        obs.vm_started(&m.name, &dest);
        let result = match m.broken {
            Some(e) => Err(e),
            None => crate::export::backup_vm_to_repo(
                host,
                &format!("moref:{}", m.moref),
                repo,
                opts,
                obs,
            ),
        };
        let item = GroupItem {
            vm: m.name,
            dest: dest.clone(),
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
