//! `vcb files`: browse and restore single files from any backup (a backup folder, an
//! incremental chain, a repository point) without restoring its disks. The guest's file
//! systems are read in user space by `guestfs`; the host kernel never mounts them.
//!
//! Paths inside a backup start with the volume: its number as `vcb files ls SOURCE`
//! lists it (`1/etc/passwd`), or its label or UUID (`boot/grub/grub.cfg`).

mod get;
mod mount;
mod source;

pub use get::GetArgs;
pub(crate) use mount::{serve as serve_mount, unmount, DEFAULT_THREADS};
pub(crate) use source::{open_held, open_sources};

/// `vcb files get` with `a` (the demo's single-file restore).
pub fn get(a: &GetArgs) -> Result<()> {
    get::run(
        &open_source(&a.source, &crate::cmd::backup::RemoteArgs::default(), None)?,
        a,
    )
}

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use guestfs::{Attr, FileSystem, Kind};
use serde_json::json;
use source::{open_source, Opened};
use std::io::Write;
use std::sync::Arc;

/// `vcb files ...`
#[derive(Args, Debug)]
pub struct FilesArgs {
    #[command(subcommand)]
    cmd: FilesCmd,
    /// SSH and repository settings.
    #[command(flatten)]
    remote: crate::cmd::backup::RemoteArgs,
    /// The host's root folder, for a VM as the source (default: $VCB_ROOT, else
    /// /var/lib/vcb for root, else ~/.local/share/vcb).
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum FilesCmd {
    /// List the volumes of a backup, or a directory of one.
    Ls(PathArgs),
    /// Attributes of one file.
    Stat(PathArgs),
    /// Write one file's bytes to standard output.
    Cat(PathArgs),
    /// Restore files and trees into a local folder (modes, times, links; owners as root).
    Get(get::GetArgs),
    /// Which points of a repository hold files whose name matches a pattern.
    Find(FindArgs),
    /// Mount a backup read-only (FUSE) in VCB's layout: digits/, letters/, volumes/.
    Mount(mount::MountArgs),
}

#[derive(Args, Debug)]
struct PathArgs {
    /// A backup folder, `repo:REPO#POINT`, or a disk file (VMDK or raw).
    source: String,
    /// VOLUME/PATH inside it (VOLUME: number, label or UUID).
    path: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct FindArgs {
    /// A repository (`repo:REPO`, optionally `#VM` to look at one VM's points only).
    source: String,
    /// Shell pattern the file name must match (`*`, `?`, `[...]`).
    #[arg(long)]
    name: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Run `vcb files`.
pub fn run(a: FilesArgs) -> Result<()> {
    match a.cmd {
        FilesCmd::Ls(p) => ls(
            &open_source(&p.source, &a.remote, a.root.as_deref())?,
            p.path.as_deref(),
            p.json,
        ),
        FilesCmd::Stat(p) => stat(
            &open_source(&p.source, &a.remote, a.root.as_deref())?,
            &need_path(&p)?,
            p.json,
        ),
        FilesCmd::Cat(p) => cat(
            &open_source(&p.source, &a.remote, a.root.as_deref())?,
            &need_path(&p)?,
        ),
        FilesCmd::Get(g) => get::run(&open_source(&g.source, &a.remote, a.root.as_deref())?, &g),
        FilesCmd::Find(f) => find(&f, &a.remote),
        FilesCmd::Mount(m) => mount::run(open_source(&m.source, &a.remote, a.root.as_deref())?, &m),
    }
}

fn need_path(p: &PathArgs) -> Result<String> {
    p.path.clone().context("name a file: VOLUME/PATH")
}

/// A resolved path: the volume's file system and the inode.
pub(crate) struct Resolved {
    pub fs: Arc<dyn FileSystem>,
    pub ino: u64,
    pub attr: Attr,
    pub shown: String,
}

/// Resolve `VOLUME/PATH` in `src`.
pub(crate) fn resolve(src: &Opened, path: &str) -> Result<Resolved> {
    let path = path.trim_start_matches('/');
    let (vol, rest) = path.split_once('/').unwrap_or((path, ""));
    let fs = src.volume(vol)?;
    let ino =
        guestfs::lookup(fs.as_ref(), rest).with_context(|| format!("{}: {path}", src.name))?;
    let attr = fs.stat(ino)?;
    Ok(Resolved {
        fs,
        ino,
        attr,
        shown: path.to_string(),
    })
}

fn kind_char(k: Kind) -> char {
    match k {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
        Kind::Special => '?',
    }
}

pub(crate) fn attr_json(name: &str, a: &Attr, target: Option<String>) -> serde_json::Value {
    json!({
        "name": name,
        "type": match a.kind { Kind::Dir => "dir", Kind::File => "file", Kind::Symlink => "symlink", Kind::Special => "special" },
        "size": a.size, "mode": format!("{:o}", a.perm), "uid": a.uid, "gid": a.gid, "nlink": a.nlink,
        "mtime": a.mtime.secs, "mtime_ns": a.mtime.nanos, "target": target,
    })
}

fn ls(src: &Opened, path: Option<&str>, as_json: bool) -> Result<()> {
    let Some(path) = path.filter(|p| !p.trim_matches('/').is_empty()) else {
        return list_volumes(src, as_json);
    };
    let r = resolve(src, path)?;
    let entries: Vec<(String, Attr)> = if r.attr.kind == Kind::Dir {
        let mut v = Vec::new();
        for e in r.fs.read_dir(r.ino)? {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            match r.fs.stat(e.ino) {
                Ok(a) => v.push((name, a)),
                Err(err) => eprintln!("vcb: {}/{name}: {err}", r.shown),
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    } else {
        vec![(r.shown.clone(), r.attr.clone())]
    };
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = entries
            .iter()
            .map(|(n, a)| attr_json(n, a, link_target(r.fs.as_ref(), a)))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    for (name, a) in &entries {
        let link = link_target(r.fs.as_ref(), a)
            .map(|t| format!(" -> {t}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{}{:04o} {:>5} {:>5} {:>12} {} {name}{link}",
            kind_char(a.kind),
            a.perm,
            a.uid,
            a.gid,
            a.size,
            time_text(a.mtime.secs)
        )?;
    }
    Ok(())
}

fn link_target(fs: &dyn FileSystem, a: &Attr) -> Option<String> {
    (a.kind == Kind::Symlink).then(|| {
        fs.read_link(a.ino)
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_else(|e| format!("? ({e})"))
    })
}

fn list_volumes(src: &Opened, as_json: bool) -> Result<()> {
    if as_json {
        let list: Vec<_> = src
            .volumes
            .iter()
            .map(|v| {
                let (format, label, uuid, error) = match &v.fs {
                    Ok(fs) => (Some(fs.format()), fs.label(), fs.uuid(), None),
                    Err(e) => (None, None, None, Some(e.to_string())),
                };
                json!({"number": v.number, "disk": v.disk, "place": v.place, "size": v.size, "format": format, "label": label, "uuid": uuid, "error": error})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if src.volumes.is_empty() {
        bail!(
            "{}: no volume with a file system vcb reads (MBR/GPT, LVM2; FAT, NTFS, ext2/3/4, XFS)",
            src.name
        );
    }
    for v in &src.volumes {
        let what = match &v.fs {
            Ok(fs) => format!(
                "{:<5} {:<16} {}",
                fs.format(),
                fs.label().unwrap_or_else(|| "-".into()),
                fs.uuid().unwrap_or_default()
            ),
            Err(e) => format!("unreadable: {e}"),
        };
        println!(
            "{:>3}  {:<28} {:>10}  {what}",
            v.number,
            format!("{} {}", v.disk, v.place),
            crate::output::human_bytes(v.size)
        );
    }
    Ok(())
}

fn stat(src: &Opened, path: &str, as_json: bool) -> Result<()> {
    let r = resolve(src, path)?;
    let target = link_target(r.fs.as_ref(), &r.attr);
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&attr_json(&r.shown, &r.attr, target))?
        );
        return Ok(());
    }
    let a = &r.attr;
    println!(
        "  File: {}{}",
        r.shown,
        target.map(|t| format!(" -> {t}")).unwrap_or_default()
    );
    println!(
        "  Type: {:?}  Size: {}  Links: {}  Inode: {}",
        a.kind, a.size, a.nlink, a.ino
    );
    println!("  Mode: {:04o}  Uid: {}  Gid: {}", a.perm, a.uid, a.gid);
    for (n, t) in [
        ("Modify", a.mtime),
        ("Access", a.atime),
        ("Change", a.ctime),
    ] {
        println!("{n:>6}: {}.{:09}", time_text(t.secs), t.nanos);
    }
    Ok(())
}

fn cat(src: &Opened, path: &str) -> Result<()> {
    let r = resolve(src, path)?;
    if r.attr.kind != Kind::File {
        bail!("{}: not a regular file", r.shown);
    }
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n =
            r.fs.read(r.ino, off, &mut buf)
                .with_context(|| r.shown.clone())?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        off += n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Shell-style pattern match on bytes: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
pub(crate) fn glob(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while n < name.len() {
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some(p);
                mark = n;
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pat, p, name[n]),
            Some(&c) if c == name[n] => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                n += 1;
            }
            (None, Some(s)) => {
                p = s + 1;
                mark += 1;
                n = mark;
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

fn class(pat: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(pat.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let first = i;
    while let Some(&x) = pat.get(i) {
        if x == b']' && i > first {
            return (hit != negate).then_some(i + 1);
        }
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|&e| e != b']') {
            hit |= (x..=pat[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= x == c;
            i += 1;
        }
    }
    None
}

fn find(f: &FindArgs, remote: &crate::cmd::backup::RemoteArgs) -> Result<()> {
    let Some(spec) = crate::cmd::backup::repo_spec(&f.source) else {
        bail!(
            "{}: find searches a repository: repo:REPO (or repo:REPO#VM)",
            f.source
        );
    };
    let (repo_spec, vm) = match spec.rsplit_once('#') {
        Some((r, v)) => (r, Some(v)),
        None => (spec, None),
    };
    let repo = crate::cmd::repo::access::RepoAccess::new(repo_spec, remote).open()?;
    let (mut points, errors) = repo.points()?;
    for e in errors {
        eprintln!("vcb: {e}");
    }
    points.retain(|p| vm.is_none_or(|v| p.vm.name == v || p.vm.uuid.as_deref() == Some(v)));
    points.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut hits = Vec::new();
    for p in points {
        let opened = match source::open_point(&repo, p.clone()) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("vcb: point {}: {e:#}", p.id);
                continue;
            }
        };
        for v in &opened.volumes {
            let Ok(fs) = &v.fs else { continue };
            guestfs::walk(fs.as_ref(), fs.root(), &mut |w| match w {
                Ok((path, a)) => {
                    let name = path.rsplit(|&c| c == b'/').next().unwrap_or(&path);
                    if glob(f.name.as_bytes(), name) {
                        hits.push((
                            p.id.clone(),
                            p.time,
                            p.vm.name.clone(),
                            format!("{}/{}", v.number, String::from_utf8_lossy(&path)),
                            a,
                        ));
                    }
                }
                Err(e) => tracing::warn!("point {}: volume {}: {e}", p.id, v.number),
            });
        }
    }
    if f.json {
        let list: Vec<_> = hits.iter().map(|(id, t, vm, path, a)| json!({"point": id, "time": t, "vm": vm, "path": path, "size": a.size, "mtime": a.mtime.secs})).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (id, t, vm, path, a) in &hits {
        println!(
            "{id:<16}  {}  {vm:<16}  {:>12}  {}  {path}",
            time_text(*t as i64),
            a.size,
            time_text(a.mtime.secs)
        );
    }
    if hits.is_empty() {
        bail!("no point holds a file named like {}", f.name);
    }
    Ok(())
}

fn time_text(secs: i64) -> String {
    crate::cmd::repo::show::local_time(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_the_shell() {
        for (p, n, want) in [
            ("*.txt", "a.txt", true),
            ("*.txt", "a.txt.bak", false),
            ("a?c", "abc", true),
            ("[ab]*", "bz", true),
            ("[!ab]*", "bz", false),
            ("[a-c]x", "cx", true),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b", "aXc", false),
        ] {
            assert_eq!(glob(p.as_bytes(), n.as_bytes()), want, "{p} {n}");
        }
    }
}
