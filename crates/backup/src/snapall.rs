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
pub struct Member {
    /// Its managed object reference.
    pub moref: host::VmRef,
    /// Its display name.
    pub name: String,
    folder: String,
    broken: Option<Error>,
}

/// The members of a group a host agent found (moref and display name each), with
/// their folder names.
pub fn remote_members(found: Vec<(host::VmRef, String)>) -> Vec<Member> {
    let mut out: Vec<Member> = found
        .into_iter()
        .map(|(moref, name)| Member {
            moref,
            name,
            folder: String::new(),
            broken: None,
        })
        .collect();
    assign_folders(&mut out);
    out
}

/// Backs up one member into a destination.
pub type BackupOne<'a> = dyn FnMut(
        &Member,
        &mut dyn crate::dest::Destination,
        &mut dyn GroupObserver,
    ) -> Result<BackupReport>
    + 'a;

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
    assign_folders(&mut out);
    Ok(out)
}

/// VMs sharing a display name get `<name>_<moref>`.
fn assign_folders(out: &mut [Member]) {
    for i in 0..out.len() {
        let shared = out.iter().filter(|m| m.name == out[i].name).count() > 1;
        out[i].folder = if shared {
            folder_name(&format!("{}_{}", out[i].name, out[i].moref))
        } else {
            folder_name(&out[i].name)
        };
    }
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
    let mut one =
        |m: &Member, d: &mut dyn crate::dest::Destination, obs: &mut dyn GroupObserver| {
            backup_vm(host, &format!("moref:{}", m.moref), d, opts, obs)
        };
    let members = members(host, &spec)?;
    Ok(each_member(
        members,
        obs,
        &mut |folder| {
            let dest = root.join(folder);
            (
                dest.clone(),
                Ok(Box::new(LocalDir::new(&dest)) as Box<dyn crate::dest::Destination>),
            )
        },
        &mut one,
    ))
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
    let spec = host::Specifier::parse(spec)?;
    let mut one =
        |m: &Member, d: &mut dyn crate::dest::Destination, obs: &mut dyn GroupObserver| {
            backup_vm(host, &format!("moref:{}", m.moref), d, opts, obs)
        };
    backup_members_to(|| members(host, &spec), root, remote, obs, &mut one)
}

/// Back up `members` (listed once the root is known to exist) into `root` (a local
/// path, `file:///path` or an `scp://` URL), each through `one`: the loop both the
/// host and a backup proxy run.
///
/// # Errors
/// A root that is missing or cannot be reached; listing errors.
pub fn backup_members_to(
    members: impl FnOnce() -> Result<Vec<Member>>,
    root: &str,
    remote: &crate::remote::RemoteOptions,
    obs: &mut dyn GroupObserver,
    one: &mut BackupOne<'_>,
) -> Result<Vec<GroupItem>> {
    if !sftp::RemoteUrl::is_remote(root) {
        let dir = LocalDir::parse(root)?.dir().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::DestinationParentMissing { path: dir });
        }
        return Ok(each_member(
            members()?,
            obs,
            &mut |folder| {
                let dest = dir.join(folder);
                (
                    dest.clone(),
                    Ok(Box::new(LocalDir::new(&dest)) as Box<dyn crate::dest::Destination>),
                )
            },
            one,
        ));
    }
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
    Ok(each_member(
        members()?,
        obs,
        &mut |folder| {
            let dest_spec = format!("{base}/{folder}");
            let d = crate::remote::Sftp::open(&dest_spec, remote)
                .map(|d| Box::new(d) as Box<dyn crate::dest::Destination>);
            (PathBuf::from(&dest_spec), d)
        },
        one,
    ))
}

/// A destination for a member's folder name: where it is shown, and the destination.
type OpenDest<'a> = dyn FnMut(&str) -> (PathBuf, Result<Box<dyn crate::dest::Destination>>) + 'a;

fn each_member(
    members: Vec<Member>,
    obs: &mut dyn GroupObserver,
    open: &mut OpenDest<'_>,
    one: &mut BackupOne<'_>,
) -> Vec<GroupItem> {
    let mut items = Vec::new();
    for mut m in members {
        let (dest, d) = open(&m.folder);
        obs.vm_started(&m.name, &dest);
        let result = match (m.broken.take(), d) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(mut d)) => one(&m, d.as_mut(), obs),
        };
        let item = GroupItem {
            vm: m.name,
            dest,
            result,
        };
        obs.vm_finished(&item);
        items.push(item);
    }
    items
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
