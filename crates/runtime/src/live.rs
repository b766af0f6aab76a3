//! Live snapshots and commits of a running VM's disks.
//!
//! QEMU cannot create a vmdk redo log on a disk it runs (it would reopen the parent,
//! which it holds locked for writing), so the runtime creates the redo log itself with
//! [`vmdk::create_child`] (an ESX `vmfsSparse` link whose descriptor records the parent's
//! CID and name; the parent is only read), opens it with `blockdev-add` (no backing), and
//! switches every disk onto its redo log in one QMP `transaction` of `blockdev-snapshot`
//! actions: all disks switch at the same instant or none does. From then on the parents
//! are static and can be copied while the guest writes into the redo logs.
//!
//! Commits are in the `commit` module.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmdk::ChildFormat;
use vmx::DiskNode;

use crate::cmdline::{device_id, node_name};
use crate::error::{Error, Result};
use crate::qmp::Qmp;
use crate::vm::Vm;
use crate::vmlog;

/// One disk switched onto a new redo log by [`Vm::live_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDisk {
    /// The disk.
    pub node: DiskNode,
    /// The file the disk wrote into before; static from now on.
    pub parent: PathBuf,
    /// The new redo log the disk writes into now.
    pub redo_log: PathBuf,
    /// The QEMU block node of the redo log.
    pub qemu_node: String,
}

/// What [`Vm::live_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSnapshot {
    /// The disks, in the order asked.
    pub disks: Vec<SnapshotDisk>,
    /// Creating the redo logs plus switching.
    pub elapsed: Duration,
    /// The QMP transaction alone (the instant the disks switched).
    pub switch_elapsed: Duration,
    /// How long the guest's vCPUs were stopped (opening the redo logs and switching).
    pub guest_paused: Duration,
    /// Soft problems (a parent whose CID changed while its redo log was being made).
    pub warnings: Vec<String>,
}

/// What a live snapshot made so far, to report or undo.
#[derive(Default)]
struct Prepared {
    /// The redo logs created.
    taken: Vec<SnapshotDisk>,
    /// The node each disk's redo log goes on (same order as `taken`).
    tops: Vec<String>,
    /// The redo log nodes opened.
    added: Vec<String>,
    /// vcb's dirty bitmap on each disk's top (same order as `taken`), rotated onto the
    /// redo log by the switch.
    bitmaps: Vec<Option<crate::tracking::Bitmap>>,
}

/// A disk device's block chain in the running QEMU.
pub(crate) struct DeviceChain {
    pub(crate) top_node: String,
    /// Top first.
    pub(crate) files: Vec<PathBuf>,
}

impl Vm {
    /// The files the running disk at `node` reads through, top first: the first one is
    /// the file it writes into.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; [`Error::UnknownDisk`]; QMP errors.
    pub fn node_chain(&self, node: DiskNode) -> Result<Vec<PathBuf>> {
        let mut q = self.qmp()?;
        Ok(self.device_chain(&mut q, node)?.files)
    }

    /// Switches each listed disk onto a new redo log at the given path (created here from
    /// the disk's current top, as an ESX COWD redo log), atomically across the disks. On
    /// failure nothing is switched and the new files are removed.
    ///
    /// The guest is stopped for the last step (opening the redo logs and switching, a
    /// few milliseconds; [`LiveSnapshot::guest_paused`]) so that no parent changes its
    /// CID after its redo log recorded it.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; [`Error::UnknownDisk`]; [`Error::Vmdk`] (the redo log
    /// exists already, ...); QMP errors.
    pub fn live_snapshot(&self, disks: &[(DiskNode, PathBuf)]) -> Result<LiveSnapshot> {
        self.live_snapshot_as(disks, ChildFormat::VmfsSparse)
    }

    /// [`live_snapshot`](Vm::live_snapshot) with redo logs of the given format.
    ///
    /// [`ChildFormat::VmfsSparse`] (ESX COWD, 512-byte grains) is what ESX itself
    /// writes. [`ChildFormat::HostedSparse`] (monolithicSparse, 64 KiB grains) is not
    /// an ESX format, but QEMU writes it faster (it syncs metadata once per new grain)
    /// and scans it about 50 times faster when a commit starts, which keeps the guest
    /// pause of [`live_commit`](Vm::live_commit) short on large disks (measured on a
    /// 2 GiB disk: 1.0-1.3 s with COWD, 14-21 ms with hosted sparse).
    ///
    /// # Errors
    /// As for [`live_snapshot`](Vm::live_snapshot).
    pub fn live_snapshot_as(
        &self,
        disks: &[(DiskNode, PathBuf)],
        format: ChildFormat,
    ) -> Result<LiveSnapshot> {
        self.switch_disks(disks, format, |_| Ok(()))
    }

    /// The live snapshot transaction: creates the redo logs, stops the guest, opens
    /// them and switches, runs `then` (still stopped, the disks now on the redo logs),
    /// and continues the guest. On failure before the switch nothing is switched and the
    /// new files are removed; when `then` fails the disks stay switched (the caller
    /// undoes that; the guest runs again either way).
    pub(crate) fn switch_disks(
        &self,
        disks: &[(DiskNode, PathBuf)],
        format: ChildFormat,
        then: impl FnOnce(&mut Qmp) -> Result<()>,
    ) -> Result<LiveSnapshot> {
        let started = Instant::now();
        let log = self.files()?.log;
        let mut q = self.qmp()?;
        let mut work = Prepared::default();
        let mut result = self.create_redo_logs(&mut q, disks, format, &mut work);
        let mut guest_paused = Duration::ZERO;
        let mut switch_elapsed = Duration::ZERO;
        if result.is_ok() {
            // The guest is stopped from the parents' last CID check to the switch: QEMU
            // gives a parent a new CID at its first write after opening it, and a redo
            // log whose parentCID is stale makes QEMU fail reads that fall through it.
            let paused = Instant::now();
            let mut switched = false;
            result = with_guest_stopped(&mut q, |q| {
                let actions = self.open_redo_logs(q, &mut work)?;
                let switching = Instant::now();
                q.execute("transaction", json!({ "actions": actions }))?;
                switch_elapsed = switching.elapsed();
                switched = true;
                then(q)
            });
            guest_paused = paused.elapsed();
            if switched {
                if let Err(e) = result {
                    // The disks run on the redo logs: undoing that is the caller's.
                    vmlog::append(&log, "vcb", &format!("after the live switch: {e}"));
                    return Err(e);
                }
            }
        }
        if let Err(e) = result {
            for n in &work.added {
                let _ = q.execute("blockdev-del", json!({ "node-name": n }));
            }
            for d in &work.taken {
                let _ = vmdk::delete(&d.redo_log);
            }
            vmlog::append(&log, "vcb", &format!("live snapshot failed: {e}"));
            return Err(e);
        }
        self.hand_over_tracking(&mut q, &work, &log);
        let mut warnings = Vec::new();
        for d in &work.taken {
            if let Some(w) = cid_mismatch(&d.parent, &d.redo_log) {
                warnings.push(w);
            }
            let text = format!(
                "live snapshot: {} now writes {}",
                d.node,
                d.redo_log.display()
            );
            vmlog::append(&log, "vcb", &text);
        }
        Ok(LiveSnapshot {
            disks: work.taken,
            elapsed: started.elapsed(),
            switch_elapsed,
            guest_paused,
            warnings,
        })
    }

    /// Creates a redo log on each disk's current top (the guest still runs).
    fn create_redo_logs(
        &self,
        q: &mut Qmp,
        disks: &[(DiskNode, PathBuf)],
        format: ChildFormat,
        work: &mut Prepared,
    ) -> Result<()> {
        let mut names = node_names(q)?;
        for (node, redo) in disks {
            let chain = self.device_chain(q, *node)?;
            let parent = chain.files[0].clone();
            vmdk::create_child(&parent, redo, format).map_err(|e| {
                let what = format!("create redo log {} of {}", redo.display(), parent.display());
                Error::vmdk(what, e)
            })?;
            let overlay = (1..)
                .map(|i| format!("{}-redo{i}", node_name(*node)))
                .find(|n| !names.contains(n))
                .unwrap_or_default();
            names.push(overlay.clone());
            work.taken.push(SnapshotDisk {
                node: *node,
                parent,
                redo_log: redo.clone(),
                qemu_node: overlay,
            });
            work.bitmaps
                .push(crate::tracking::bitmap_on(q, &chain.top_node)?);
            work.tops.push(chain.top_node);
        }
        Ok(())
    }

    /// After a switch: each old (now disabled) bitmap's writes go into the tracking file
    /// of the old top, and the file moves to the redo log, where the new bitmap counts.
    fn hand_over_tracking(&self, q: &mut Qmp, work: &Prepared, log: &Path) {
        for ((d, top), bitmap) in work.taken.iter().zip(&work.tops).zip(&work.bitmaps) {
            let Some(old) = bitmap else { continue };
            let moved = self
                .drain_bitmap(q, top, &old.name, &d.parent)
                .and_then(|()| {
                    vmdk::ctk::move_live(&d.parent, &d.redo_log)
                        .map_err(|e| Error::vmdk("move change tracking", e))
                });
            if let Err(e) = moved {
                vmlog::append(log, "vcb", &format!("change tracking of {}: {e}", d.node));
                let _ = vmdk::ctk::forget(&d.parent);
                let _ = vmdk::ctk::mark_lost(
                    &d.redo_log,
                    &format!("its QEMU bitmap could not be read: {e}"),
                );
            }
        }
    }

    /// With the guest stopped: brings each redo log's parentCID up to date, opens it,
    /// and returns the transaction's actions.
    fn open_redo_logs(&self, q: &mut Qmp, work: &mut Prepared) -> Result<Vec<Value>> {
        let mut actions = Vec::new();
        for (d, top) in work.taken.iter().zip(&work.tops) {
            refresh_parent_cid(&d.parent, &d.redo_log)?;
            let overlay = &d.qemu_node;
            let file = json!({"driver": "file", "filename": d.redo_log, "node-name": format!("{overlay}-file")});
            q.execute(
                "blockdev-add",
                json!({"driver": "vmdk", "node-name": overlay, "backing": null, "file": file}),
            )?;
            work.added.push(overlay.clone());
            actions.push(json!({
                "type": "blockdev-snapshot",
                "data": {"node": top, "overlay": overlay},
            }));
        }
        // Change tracking: new bitmaps start on the redo logs at the switch instant and
        // the old ones stop, in the same transaction.
        for ((d, top), bitmap) in work.taken.iter().zip(&work.tops).zip(&work.bitmaps) {
            let Some(old) = bitmap else { continue };
            actions.push(json!({
                "type": "block-dirty-bitmap-add",
                "data": {"node": d.qemu_node, "name": old.next_name(),
                         "granularity": old.granularity},
            }));
            actions.push(json!({
                "type": "block-dirty-bitmap-disable",
                "data": {"node": top, "name": old.name},
            }));
        }
        Ok(actions)
    }

    /// The running chain of the disk at `node`, from `query-block`.
    pub(crate) fn device_chain(&self, q: &mut Qmp, node: DiskNode) -> Result<DeviceChain> {
        let dev = device_id(node);
        let blocks = q.execute("query-block", Value::Null)?;
        let peripheral = format!("/machine/peripheral/{dev}");
        let entry = blocks.as_array().into_iter().flatten().find(|b| {
            let qdev = b["qdev"].as_str().unwrap_or("");
            qdev == dev || qdev == peripheral || qdev.starts_with(&format!("{peripheral}/"))
        });
        let unknown = || Error::UnknownDisk {
            vmx: self.vmx.clone(),
            node,
        };
        let inserted = entry.and_then(|b| b.get("inserted")).ok_or_else(unknown)?;
        let top_node = inserted["node-name"]
            .as_str()
            .ok_or_else(unknown)?
            .to_owned();
        let files = chain_files(inserted, &self.folder());
        if files.is_empty() {
            return Err(unknown());
        }
        Ok(DeviceChain { top_node, files })
    }

    /// Every file the running VM's disk devices read through, over all devices (the
    /// files vcb must neither write nor delete while QEMU runs).
    ///
    /// # Errors
    /// [`Error::NotRunning`]; QMP errors.
    pub fn open_files(&self) -> Result<Vec<PathBuf>> {
        let mut q = self.qmp()?;
        self.chained_files(&mut q)
    }

    fn chained_files(&self, q: &mut Qmp) -> Result<Vec<PathBuf>> {
        let blocks = q.execute("query-block", Value::Null)?;
        let folder = self.folder();
        Ok(blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("inserted"))
            .flat_map(|inserted| chain_files(inserted, &folder))
            .collect())
    }

    /// Closes the block node that opens `file` when no disk device reads through it any
    /// more (a redo log whose commit finished but whose node a killed process never
    /// deleted), so the file can be deleted. Returns whether a node was closed.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; QMP errors.
    pub fn close_detached(&self, file: &Path) -> Result<bool> {
        let mut q = self.qmp()?;
        let folder = self.folder();
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let want = canon(&folder.join(file));
        if self.chained_files(&mut q)?.iter().any(|f| canon(f) == want) {
            return Ok(false);
        }
        let Some(node) = format_node_of(&mut q, file, &folder)? else {
            return Ok(false);
        };
        q.execute("blockdev-del", json!({ "node-name": node }))?;
        let file_node = format!("{node}-file");
        if node_names(&mut q)?.contains(&file_node) {
            q.execute("blockdev-del", json!({ "node-name": file_node }))?;
        }
        vmlog::append(
            &self.files()?.log,
            "vcb",
            &format!("closed detached node {node} of {}", file.display()),
        );
        Ok(true)
    }

    pub(crate) fn folder(&self) -> PathBuf {
        let vmx = std::path::absolute(&self.vmx).unwrap_or_else(|_| self.vmx.clone());
        vmx.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// The files of a `query-block` entry's `inserted` chain, top first.
fn chain_files(inserted: &Value, folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let (mut image, mut dir) = (inserted.get("image"), folder.to_path_buf());
    let mut resolved: Option<PathBuf> = None;
    while let Some(img) = image {
        let name = plain_filename(img["filename"].as_str().unwrap_or_default());
        let path = resolved.take().unwrap_or_else(|| dir.join(name));
        dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        resolved = img["full-backing-filename"].as_str().map(PathBuf::from);
        files.push(path);
        image = img.get("backing-image");
    }
    files
}

/// The names of all named block nodes.
pub(crate) fn node_names(q: &mut Qmp) -> Result<Vec<String>> {
    let nodes = q.execute("query-named-block-nodes", json!({ "flat": true }))?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node-name"].as_str().map(str::to_owned))
        .collect())
}

/// The format (non-`file`) node that opens `path`.
pub(crate) fn format_node_of(q: &mut Qmp, path: &Path, cwd: &Path) -> Result<Option<String>> {
    let canon = |p: &Path| std::fs::canonicalize(cwd.join(p)).unwrap_or_else(|_| cwd.join(p));
    let want = canon(path);
    let nodes = q.execute("query-named-block-nodes", json!({ "flat": true }))?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["drv"] != "file")
        .find(|n| {
            n["file"]
                .as_str()
                .is_some_and(|f| canon(&plain_filename(f)) == want)
        })
        .and_then(|n| n["node-name"].as_str().map(str::to_owned)))
}

/// The file a block node's filename names. QEMU describes a node whose backing was given
/// explicitly (our redo logs) as `json:{"driver": "vmdk", "file": {"driver": "file",
/// "filename": ...}, "backing": ...}`; the image file is its `file.filename`.
fn plain_filename(name: &str) -> PathBuf {
    let from_json = name
        .strip_prefix("json:")
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .and_then(|v| v["file"]["filename"].as_str().map(PathBuf::from));
    from_json.unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `f` with the guest's vCPUs stopped (and its I/O drained), if they were running;
/// always resumes them, whatever `f` returns.
pub(crate) fn with_guest_stopped<T>(
    q: &mut Qmp,
    f: impl FnOnce(&mut Qmp) -> Result<T>,
) -> Result<T> {
    let running = q.execute("query-status", Value::Null)?["running"] == json!(true);
    if running {
        q.execute("stop", Value::Null)?;
    }
    let result = f(q);
    if running {
        let resumed = q.execute("cont", Value::Null);
        let value = result?;
        resumed?;
        return Ok(value);
    }
    result
}

/// Sets `child`'s parentCID to `parent`'s current CID if they differ (the parent got its
/// first write of the session after the child was made). The child is not open yet.
fn refresh_parent_cid(parent: &Path, child: &Path) -> Result<()> {
    let read = |p: &Path| {
        vmdk::read_descriptor(p)
            .map_err(|e| Error::vmdk(format!("read descriptor of {}", p.display()), e))
    };
    let (p, _) = read(parent)?;
    let (mut c, store) = read(child)?;
    if c.parent_cid != p.cid {
        c.parent_cid = p.cid;
        vmdk::write_descriptor(child, store, &c)
            .map_err(|e| Error::vmdk(format!("update parentCID of {}", child.display()), e))?;
    }
    Ok(())
}

/// A warning when `child` does not record `parent`'s current CID (the parent got its
/// first write of the session between the redo log's creation and the switch).
fn cid_mismatch(parent: &Path, child: &Path) -> Option<String> {
    let (p, _) = vmdk::read_descriptor(parent).ok()?;
    let (c, _) = vmdk::read_descriptor(child).ok()?;
    (p.cid != c.parent_cid).then(|| {
        format!(
            "{}: parentCID {:08x} but {} now has CID {:08x}",
            child.display(),
            c.parent_cid,
            parent.display(),
            p.cid
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_filenames_name_their_image_file() {
        let j = r#"json:{"backing": {"driver": "vmdk", "file": {"driver": "file", "filename": "/v/a.vmdk"}}, "driver": "vmdk", "file": {"driver": "file", "filename": "/v/a-000001.vmdk"}}"#;
        assert_eq!(plain_filename(j), Path::new("/v/a-000001.vmdk"));
        assert_eq!(plain_filename("/v/a.vmdk"), Path::new("/v/a.vmdk"));
        assert_eq!(plain_filename("json:{bad"), Path::new("json:{bad"));
    }
}
