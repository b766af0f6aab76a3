//! `vcbMounter -t file` and `vcbMounter -U`: the guest's file systems of a VM snapshot
//! mounted read-only under a folder, as VCB's file-level mode does, for any file-level
//! backup agent to read.
//!
//! `-t file` takes the quiesced snapshot (kept: [`backup::hold_snapshot`]), records the
//! mount in `<host root>/file-mounts/` (crash-safe write) and starts a detached mount
//! server (this binary again), returning once the mount is there. The mount outlives
//! vcbMounter. `-U` works from the record alone, from any process and also after the
//! server died: it unmounts, ends the server, removes the snapshot (committing what the
//! guest wrote meanwhile), removes the record and the folder it created.

use crate::cmd::files::{open_held, serve_mount, unmount};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `-U` needs to undo a mount.
#[derive(Debug, Serialize, Deserialize)]
pub struct MountRecord {
    /// The mount folder (absolute).
    pub mountdir: PathBuf,
    /// Whether `-t file` created the folder (then `-U` removes it).
    pub created_dir: bool,
    /// The VM's display name and reference.
    pub vm: String,
    /// Its moref.
    pub moref: u32,
    /// The held snapshot's uid; `None` while it is being taken (the record is written
    /// first, so a vcbMounter killed at any point leaves a record `-U` finishes from).
    pub uid: Option<u64>,
    /// Each disk's node and static base.
    pub disks: Vec<(String, PathBuf)>,
    /// The mount server's process id, once started.
    pub server_pid: Option<u32>,
}

fn records_dir(host: &host::Host) -> PathBuf {
    host.root().join("file-mounts")
}

fn record_path(host: &host::Host, r: &MountRecord) -> PathBuf {
    records_dir(host).join(format!("{}.json", r.moref))
}

fn write_record(path: &Path, r: &MountRecord) -> Result<()> {
    fsio::write_atomic(path, &serde_json::to_vec_pretty(r)?)
        .with_context(|| path.display().to_string())
}

/// `vcbMounter -a VM -r DIR -t file`.
pub fn mount_vm(
    host: &host::Host,
    vm: &str,
    dest: &str,
    opts: &backup::BackupOptions,
    render: &mut crate::cmd::backup::render::Render,
) -> Result<()> {
    let dir = mount_dir(dest)?;
    let vm_ref = host.find_vm(vm)?.moref;
    if let Some((_, r)) = records(host).into_iter().find(|(_, r)| r.moref == vm_ref.0) {
        // A second snapshot's base would be the first one's redo log, which `-U` of the
        // first merges away under the second mount.
        bail!(
            "{} is file-mounted at {} already; `vcbMounter -U {}` first",
            r.vm,
            r.mountdir.display(),
            r.mountdir.display()
        );
    }
    let created_dir = prepare_dir(&dir)?;
    let mut record = MountRecord {
        mountdir: dir.clone(),
        created_dir,
        vm: vm.to_string(),
        moref: vm_ref.0,
        uid: None,
        disks: Vec::new(),
        server_pid: None,
    };
    let path = record_path(host, &record);
    let pending = std::fs::create_dir_all(records_dir(host))
        .map_err(anyhow::Error::from)
        .and_then(|()| write_record(&path, &record));
    if let Err(e) = pending {
        if created_dir {
            let _ = std::fs::remove_dir(&dir);
        }
        return Err(e);
    }
    let held = backup::hold_snapshot(host, vm, opts, render)
        .map_err(anyhow::Error::from)
        .and_then(|held| {
            record.vm = held.vm.clone();
            record.uid = Some(held.uid);
            record.disks = held.disks.clone();
            write_record(&path, &record)?;
            start_server(host, &path, &mut record)?;
            Ok(held)
        });
    let held = match held {
        Ok(h) => h,
        Err(e) => {
            undo(host, &record, &path, render).ok();
            return Err(e);
        }
    };
    println!(
        "Mounted the file systems of {} (snapshot {}, {}) read-only on {}; `vcbMounter -U {}` ends it",
        held.vm,
        held.uid,
        if held.quiesced { "quiesced" } else { "crash-consistent" },
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The absolute mount folder `-r` names (a local folder only).
pub(crate) fn mount_dir(dest: &str) -> Result<PathBuf> {
    if dest.contains("://") || dest.starts_with("repo:") {
        bail!("{dest}: -t file mounts under a local folder");
    }
    std::path::absolute(dest).with_context(|| dest.to_string())
}

/// The mount folder: created (true), or an existing empty one (false).
pub(crate) fn prepare_dir(dir: &Path) -> Result<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_dir(dir)
                .with_context(|| dir.display().to_string())?
                .next()
                .is_some()
            {
                bail!("{}: exists and is not empty", dir.display());
            }
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("{}: create", dir.display())),
    }
}

/// Start the detached server and wait until its mount is visible.
fn start_server(host: &host::Host, record_path: &Path, record: &mut MountRecord) -> Result<()> {
    let args = [
        "--serve-file-mount".as_ref(),
        record_path.as_os_str(),
        "--root".as_ref(),
        host.root().as_os_str(),
    ];
    let mountdir = record.mountdir.clone();
    spawn_mount_server(
        &args,
        &record_path.with_extension("log"),
        &mountdir,
        |pid| {
            record.server_pid = Some(pid);
            write_record(record_path, record)
        },
    )
}

/// Start vcbMounter again with `args` as a detached mount server (its output in `log`),
/// tell `spawned` its pid, and wait until `mountdir` is mounted.
pub(crate) fn spawn_mount_server(
    args: &[&std::ffi::OsStr],
    log: &Path,
    mountdir: &Path,
    spawned: impl FnOnce(u32) -> Result<()>,
) -> Result<()> {
    let exe = std::env::current_exe().context("locate vcbMounter")?;
    let out = std::fs::File::create(log)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches the server from our session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the mount server")?;
    spawned(child.id())?;
    let started = Instant::now();
    while !is_mounted(mountdir) {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "the mount server ended ({status}): {}",
                text.lines().last().unwrap_or("no message")
            );
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            bail!("the mount did not appear within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether a file system is mounted on `dir` (per /proc/self/mountinfo).
pub(crate) fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
    })
}

/// The hidden `--serve-file-mount RECORD`: serve the mount until it is unmounted.
pub fn serve(host: &host::Host, record_path: &Path) -> Result<()> {
    let record: MountRecord = serde_json::from_slice(&std::fs::read(record_path)?)
        .with_context(|| record_path.display().to_string())?;
    let read = host.confined().disk_options(false);
    let opened = open_held(&record.vm, &record.disks, &read)?;
    serve_mount(opened, &record.mountdir, crate::cmd::files::DEFAULT_THREADS)
}

/// Every mount record of the host, with its path (unreadable ones are skipped).
fn records(host: &host::Host) -> Vec<(PathBuf, MountRecord)> {
    let Ok(entries) = std::fs::read_dir(records_dir(host)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let r = serde_json::from_slice::<MountRecord>(&std::fs::read(&p).ok()?).ok()?;
            Some((p, r))
        })
        .collect()
}

/// `vcbMounter -U DIR`.
pub fn unmount_vm(
    host: &host::Host,
    dest: &Path,
    render: &mut crate::cmd::backup::render::Render,
) -> Result<()> {
    let dir = std::path::absolute(dest).with_context(|| dest.display().to_string())?;
    let found = records(host).into_iter().find(|(_, r)| r.mountdir == dir);
    let Some((path, record)) = found else {
        bail!(
            "{}: no file-level mount of vcbMounter is recorded there",
            dir.display()
        );
    };
    undo(host, &record, &path, render)?;
    println!(
        "Unmounted {} and removed the file-access snapshot of {}",
        dir.display(),
        record.vm
    );
    Ok(())
}

/// Unmount, stop the server, release the snapshot, forget the record. Each step is
/// skipped when already done, so a half-finished `-U` is finished by the next one.
fn undo(
    host: &host::Host,
    r: &MountRecord,
    path: &Path,
    render: &mut crate::cmd::backup::render::Render,
) -> Result<()> {
    unmount(&r.mountdir).with_context(|| {
        format!(
            "{}: unmount (is a program still using it?)",
            r.mountdir.display()
        )
    })?;
    if let Some(pid) = r.server_pid {
        stop_server(pid, "--serve-file-mount");
    }
    let removed = backup::release_snapshot(host, host::VmRef(r.moref), r.uid, render)?;
    if removed == 0 && r.uid.is_some() {
        eprintln!(
            "warning: the file-access snapshot of {} was already gone",
            r.vm
        );
    }
    if r.created_dir {
        let _ = std::fs::remove_dir(&r.mountdir);
    }
    std::fs::remove_file(path).with_context(|| path.display().to_string())?;
    let _ = std::fs::remove_file(path.with_extension("log"));
    fsio::sync_dir(&records_dir(host)).ok();
    Ok(())
}

/// Wait for the server (unmounted, it ends by itself); kill it if it does not. `flag`
/// is its command line's mark (a pid reused by another program is left alone).
pub(crate) fn stop_server(pid: u32, flag: &str) {
    let alive =
        || std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains(flag));
    let started = Instant::now();
    while alive() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive() {
        // SAFETY: kill has no memory-safety preconditions; the pid was checked to be ours.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}
