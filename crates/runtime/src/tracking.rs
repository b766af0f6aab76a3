//! Changed-block tracking while QEMU runs a VM: QEMU's dirty bitmaps, handed over to the
//! disks' change-tracking files ([`vmdk::ctk`]).
//!
//! A disk the .vmx tracks (`ctkEnabled` and `<node>.ctkEnabled`) gets a dirty bitmap on
//! its top block node before the guest runs (QEMU starts paused with `-S`; a resume adds
//! it before `cont`), and its tracking file is marked `live` for this QEMU's session. The
//! bitmap's writes reach the file at three moments, each with the bitmap disabled so
//! its content is final (QEMU only exports a disabled bitmap read-only):
//! - a live snapshot: in the same transaction as the switch, a new bitmap starts on
//!   each redo log and the old one is disabled; the old one is read and merged, and the
//!   file moves to the redo log. So the file holds every write up to the switch instant,
//!   which is what a backup's checkpoint needs;
//! - a live commit: the commit target gets a new bitmap before the job starts; every
//!   block the job copies into it is marked (a superset of the guest's writes into the
//!   redo log), and the file moves to the target when the job pivots;
//! - QEMU stopping (power-off, suspend, shutdown, a guest's own power-off, which pauses
//!   QEMU through `-action shutdown=pause`): with the guest stopped, the bitmap is read
//!   and merged, and once QEMU is gone the file is marked `clean` with the disk's CID.
//!
//! The bitmap is read over NBD: QEMU's NBD server on a Unix socket in the VM folder
//! ([`NBD_SOCKET`]) exports the node with the `qemu:dirty-bitmap:` meta context, and the
//! `nbd` crate's client asks for its block status. Anything that goes wrong marks the file
//! lost (the next backup reads everything); a QEMU that dies leaves the file `live` for a
//! session that no longer runs, which is lost too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vmdk::ctk::{self, State, Status};
use vmx::DiskNode;

use crate::error::{Error, Result};
use crate::qmp::Qmp;
use crate::vm::Vm;
use crate::vmlog;

/// Names of vcb's dirty bitmaps: this prefix and a number that grows at each rotation.
pub const BITMAP_PREFIX: &str = "vcb-ctk-";
/// QEMU's NBD server socket (in the VM folder), up only while a bitmap is read.
pub const NBD_SOCKET: &str = ".vcb-nbd.sock";
const EXPORT: &str = "vcb-ctk";

/// A tracked disk of the running VM.
pub(crate) struct TrackedDisk {
    pub(crate) node: DiskNode,
    /// QEMU's block node the guest writes (the device's top).
    pub(crate) top_node: String,
    /// Its file.
    pub(crate) top_file: PathBuf,
    /// vcb's bitmap on that node, if any.
    pub(crate) bitmap: Option<Bitmap>,
}

impl Vm {
    /// Whether the .vmx turns changed-block tracking on for any disk.
    pub(crate) fn tracks_changes(&self) -> bool {
        self.config()
            .map(|c| c.disks().iter().any(|d| c.change_tracking(d.node)))
            .unwrap_or(false)
    }

    /// The tracked disks as QEMU runs them now.
    pub(crate) fn tracked_disks(&self, q: &mut Qmp) -> Result<Vec<TrackedDisk>> {
        let cfg = self.config()?;
        let mut out = Vec::new();
        for d in cfg.disks().iter().filter(|d| cfg.change_tracking(d.node)) {
            let Ok(chain) = self.device_chain(q, d.node) else {
                continue; // an independent or removable disk QEMU does not run
            };
            let Some(top_file) = chain.files.first().cloned() else {
                continue;
            };
            let bitmap = bitmap_on(q, &chain.top_node)?;
            out.push(TrackedDisk {
                node: d.node,
                top_node: chain.top_node,
                top_file,
                bitmap,
            });
        }
        Ok(out)
    }

    /// Before the guest runs: a dirty bitmap on each tracked disk, whose tracking file
    /// (kept when valid, else started afresh) now belongs to this QEMU.
    pub(crate) fn begin_tracking(&self, q: &mut Qmp, pid: u32) -> Result<()> {
        let log = self.files()?.log;
        let session = ctk::qemu_session(pid);
        for d in self.tracked_disks(q)? {
            let started = begin_disk(q, &d, &session);
            if let Err(e) = started {
                vmlog::append(&log, "vcb", &format!("change tracking of {}: {e}", d.node));
                let _ = ctk::mark_lost(&d.top_file, &format!("QEMU could not track it: {e}"));
            }
        }
        Ok(())
    }

    /// Reads the disabled bitmap `name` of block node `qemu_node` over NBD, merges its
    /// dirty areas into the tracking file of `file` and removes the bitmap.
    pub(crate) fn drain_bitmap(
        &self,
        q: &mut Qmp,
        qemu_node: &str,
        name: &str,
        file: &Path,
    ) -> Result<()> {
        let socket = self.folder().join(NBD_SOCKET);
        let dirty = read_bitmap(q, &socket, qemu_node, name);
        let removed = remove_bitmap(q, qemu_node, name);
        let dirty = dirty?;
        removed?;
        // Tracking no QEMU owns has nothing to take the writes.
        ctk::update_live(file, |t| {
            for (offset, len) in &dirty {
                t.mark(*offset, *len);
            }
        })
        .map(drop)
        .map_err(|e| Error::vmdk("save change tracking", e))
    }

    /// With the guest stopped, before QEMU ends: every bitmap handed over. Returns the
    /// files whose tracking [`finish_tracking`] marks clean once QEMU is gone.
    pub(crate) fn stop_tracking(&self, q: &mut Qmp) -> Vec<PathBuf> {
        let log = self.files().map(|f| f.log).unwrap_or_default();
        let mut done = Vec::new();
        let Ok(disks) = self.tracked_disks(q) else {
            return done;
        };
        for d in disks {
            let Some(bitmap) = &d.bitmap else { continue };
            let name = &bitmap.name;
            let drained = q
                .execute(
                    "block-dirty-bitmap-disable",
                    json!({"node": d.top_node, "name": name}),
                )
                .and_then(|_| self.drain_bitmap(q, &d.top_node, name, &d.top_file));
            match drained {
                Ok(()) => done.push(d.top_file),
                Err(e) => {
                    vmlog::append(&log, "vcb", &format!("change tracking of {}: {e}", d.node));
                    let _ = ctk::mark_lost(
                        &d.top_file,
                        &format!("its QEMU bitmap could not be read: {e}"),
                    );
                }
            }
        }
        done
    }
}

/// After QEMU ended cleanly: the tracking files `files` hold every write; they become
/// `clean`, bound to each link's CID as QEMU left it.
pub(crate) fn finish_tracking(files: &[PathBuf]) {
    for f in files {
        let finished = vmdk::read_descriptor(f).and_then(|(desc, _)| {
            ctk::update_live(f, |t| {
                t.state = State::Clean;
                t.cid = desc.cid;
            })
        });
        if let Err(e) = finished {
            let _ = ctk::mark_lost(f, &format!("could not record QEMU's last writes: {e}"));
        }
    }
}

fn begin_disk(q: &mut Qmp, d: &TrackedDisk, session: &str) -> Result<()> {
    let mut t = match ctk::status(&d.top_file).map_err(|e| Error::vmdk("change tracking", e))? {
        Status::Valid(t) => t,
        Status::Untracked | Status::Invalid(_) => {
            ctk::start(&d.top_file).map_err(|e| Error::vmdk("start change tracking", e))?
        }
    };
    t.state = State::Live {
        session: session.to_owned(),
    };
    t.save(&ctk::ctk_path(&d.top_file))
        .map_err(|e| Error::vmdk("save change tracking", e))?;
    q.execute(
        "block-dirty-bitmap-add",
        json!({"node": d.top_node, "name": format!("{BITMAP_PREFIX}1"), "granularity": t.block_size()}),
    )?;
    Ok(())
}

/// One of vcb's dirty bitmaps in QEMU.
#[derive(Debug, Clone)]
pub(crate) struct Bitmap {
    pub(crate) name: String,
    /// Bytes per bit.
    pub(crate) granularity: u64,
}

impl Bitmap {
    /// The name following this one in the rotation.
    pub(crate) fn next_name(&self) -> String {
        format!("{BITMAP_PREFIX}{}", bitmap_number(&self.name) + 1)
    }
}

/// vcb's bitmap on `node`, if it has one (the newest, should there be several).
pub(crate) fn bitmap_on(q: &mut Qmp, node: &str) -> Result<Option<Bitmap>> {
    let nodes = q.execute("query-named-block-nodes", json!({ "flat": true }))?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["node-name"] == node)
        .filter_map(|n| n["dirty-bitmaps"].as_array())
        .flatten()
        .filter_map(|b| {
            let name = b["name"]
                .as_str()
                .filter(|n| n.starts_with(BITMAP_PREFIX))?;
            let granularity = b["granularity"].as_u64().unwrap_or(vmdk::ctk::MIN_BLOCK);
            Some(Bitmap {
                name: name.to_owned(),
                granularity,
            })
        })
        .max_by_key(|b| bitmap_number(&b.name)))
}

fn bitmap_number(name: &str) -> u64 {
    name.strip_prefix(BITMAP_PREFIX)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The dirty areas of the disabled bitmap `name` of `node`, through a temporary NBD export.
fn read_bitmap(q: &mut Qmp, socket: &Path, node: &str, name: &str) -> Result<Vec<(u64, u64)>> {
    let _ = q.execute("nbd-server-stop", Value::Null);
    let _ = std::fs::remove_file(socket);
    q.execute(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "data": {"path": socket}}}),
    )?;
    let exported = q.execute(
        "block-export-add",
        json!({"type": "nbd", "id": EXPORT, "node-name": node, "name": EXPORT,
               "writable": false, "bitmaps": [name]}),
    );
    let read = exported.and_then(|_| {
        let proto = |e: nbd::Error| Error::Protocol {
            socket: socket.to_path_buf(),
            reason: e.to_string(),
        };
        let context = format!("qemu:dirty-bitmap:{name}");
        let mut c = nbd::Client::connect(socket, EXPORT, &context).map_err(proto)?;
        let size = c.size();
        let extents = c.block_status(0, size).map_err(proto)?;
        c.close();
        Ok(extents
            .into_iter()
            .filter(|e| e.flags & 1 == 1)
            .map(|e| (e.offset, e.len))
            .collect())
    });
    let _ = q.execute("block-export-del", json!({"id": EXPORT, "mode": "hard"}));
    let _ = q.wait_event("export deleted", Duration::from_secs(10), |e| {
        e.name == "BLOCK_EXPORT_DELETED" && e.data["id"] == EXPORT
    });
    let _ = q.execute("nbd-server-stop", Value::Null);
    let _ = std::fs::remove_file(socket);
    read
}

/// Removes a bitmap; one still busy with a closing export is retried briefly.
fn remove_bitmap(q: &mut Qmp, node: &str, name: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        match q.execute(
            "block-dirty-bitmap-remove",
            json!({"node": node, "name": name}),
        ) {
            Ok(_) => return Ok(()),
            Err(_) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}
