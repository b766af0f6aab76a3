//! Backup sessions: one thread per session holds the VM's lock and its snapshot, and
//! exports the static disks, until the client finishes it or its lease runs out.
//!
//! A record of each session (`sessions/<id>.json`) is written before the snapshot is
//! taken and removed after it is gone; an agent that starts and finds records (it was
//! killed) commits what those sessions left before it serves anyone.

use super::exports::{ExportTable, VmdkExport};
use crate::api::{BackupRequest, BackupSession, RemoteEvent};
use backup::FileSource;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A live session as the API sees it.
pub(crate) struct Live {
    pub(crate) user: String,
    moref: u32,
    files: Vec<(String, FileSource)>,
    deadline: Arc<Mutex<Instant>>,
    finish: mpsc::Sender<mpsc::Sender<Result<Vec<RemoteEvent>, String>>>,
}

/// Every live session.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Live>>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    vm: String,
    moref: u32,
    user: String,
}

/// What a session thread needs from the agent.
pub(crate) struct Context {
    pub(crate) root: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) exports: Arc<ExportTable>,
    pub(crate) lease: Duration,
    pub(crate) nbd_port: u16,
}

/// Collects what the host's half reports.
#[derive(Default)]
pub(crate) struct Collect(pub(crate) Vec<RemoteEvent>);

impl backup::Observer for Collect {
    fn event(&mut self, e: &backup::Event) {
        if let Some(r) = RemoteEvent::from_event(e) {
            self.0.push(r);
        }
    }
}

fn records_dir(dir: &Path) -> PathBuf {
    dir.join("sessions")
}

impl Sessions {
    /// Starts a session for `user` (blocking: hooks, quiesce and snapshot happen here).
    pub(crate) fn start(
        self: &Arc<Self>,
        ctx: Context,
        user: &str,
        req: BackupRequest,
    ) -> Result<BackupSession, String> {
        let found = host::Host::open(&ctx.root)
            .and_then(|h| h.find_vm(&req.vm))
            .map_err(|e| e.to_string())?;
        let moref = found.moref.0;
        let busy = self
            .live
            .lock()
            .is_ok_and(|m| m.values().any(|l| l.moref == moref));
        if busy {
            return Err(format!(
                "{}: a proxy session of this VM is open already (a backup or a file-level mount); wait for it to end",
                found.name()
            ));
        }
        let id = super::random_token()[..16].to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (finish_tx, finish_rx) = mpsc::channel();
        let deadline = Arc::new(Mutex::new(Instant::now() + ctx.lease));
        let (sessions, thread_id, thread_deadline) =
            (Arc::clone(self), id.clone(), Arc::clone(&deadline));
        let record = Record {
            vm: found.name(),
            moref,
            user: user.to_owned(),
        };
        std::thread::Builder::new()
            .name(format!("session-{id}"))
            .spawn(move || {
                run(
                    &ctx,
                    &thread_id,
                    &record,
                    &req,
                    &ready_tx,
                    &finish_rx,
                    &thread_deadline,
                );
                if let Ok(mut m) = sessions.live.lock() {
                    m.remove(&thread_id);
                }
            })
            .map_err(|e| format!("cannot start a session: {e}"))?;
        let (session, files) = ready_rx
            .recv()
            .map_err(|_| "the session stopped before it was ready".to_owned())??;
        if let Ok(mut m) = self.live.lock() {
            m.insert(
                id,
                Live {
                    user: user.to_owned(),
                    moref,
                    files,
                    deadline,
                    finish: finish_tx,
                },
            );
        }
        Ok(session)
    }

    /// Runs `f` on the session `id` if `user` owns it (admins own every session).
    pub(crate) fn with<T>(
        &self,
        id: &str,
        user: &str,
        admin: bool,
        f: impl FnOnce(&Live) -> T,
    ) -> Option<T> {
        let m = self.live.lock().ok()?;
        m.get(id).filter(|l| admin || l.user == user).map(f)
    }

    /// Extends the lease of session `id`.
    pub(crate) fn keepalive(&self, id: &str, user: &str, admin: bool, lease: Duration) -> bool {
        self.with(id, user, admin, |l| {
            if let Ok(mut d) = l.deadline.lock() {
                *d = Instant::now() + lease;
            }
        })
        .is_some()
    }

    /// The configuration file `name` of session `id`.
    pub(crate) fn file(&self, id: &str, user: &str, admin: bool, name: &str) -> Option<FileSource> {
        self.with(id, user, admin, |l| {
            l.files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
        })
        .flatten()
    }

    /// Ends session `id`: the snapshot is removed before this returns.
    pub(crate) fn finish(
        &self,
        id: &str,
        user: &str,
        admin: bool,
    ) -> Option<Result<Vec<RemoteEvent>, String>> {
        let tx = self.with(id, user, admin, |l| l.finish.clone())?;
        let (reply_tx, reply_rx) = mpsc::channel();
        tx.send(reply_tx).ok()?;
        Some(
            reply_rx
                .recv()
                .unwrap_or_else(|_| Err("the session ended already".into())),
        )
    }

    /// Ends every session (a graceful stop): their snapshots are removed.
    pub(crate) fn finish_all(&self) {
        let ids: Vec<String> = self
            .live
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            if let Some(Err(e)) = self.finish(&id, "", true) {
                tracing::warn!("session {id}: {e}");
            }
        }
    }

    /// Sessions live now.
    pub(crate) fn count(&self) -> usize {
        self.live.lock().map_or(0, |m| m.len())
    }
}

type Ready = Result<(BackupSession, Vec<(String, FileSource)>), String>;

fn run(
    ctx: &Context,
    id: &str,
    vm: &Record,
    req: &BackupRequest,
    ready: &mpsc::Sender<Ready>,
    finish: &mpsc::Receiver<mpsc::Sender<Result<Vec<RemoteEvent>, String>>>,
    deadline: &Mutex<Instant>,
) {
    let host = match host::Host::open(&ctx.root) {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let record = records_dir(&ctx.dir).join(format!("{id}.json"));
    if let Err(e) = write_record(&record, vm) {
        let _ = ready.send(Err(e));
        return;
    }
    let opts = backup::BackupOptions {
        no_quiesce: req.no_quiesce,
        quiesce_timeout: req.quiesce_timeout_secs.map(Duration::from_secs),
        skip_physical_rdm: req.skip_physical_rdm,
        tool_version: req.tool_version.clone(),
        ..Default::default()
    };
    let mut events = Collect::default();
    let session = match backup::open_host_session(
        &host,
        &format!("moref:{}", vm.moref),
        &opts,
        &mut events,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&record);
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut names = Vec::new();
    let mut exports = Vec::new();
    for d in &session.manifest().disks {
        if let Some((path, options)) = session.disk(&d.node) {
            let name = ctx.exports.add(Arc::new(VmdkExport {
                path: path.to_path_buf(),
                options: options.clone(),
                size: d.capacity,
            }));
            exports.push((d.node.clone(), name.clone()));
            names.push(name);
        }
    }
    let files = session
        .manifest()
        .files
        .iter()
        .filter_map(|n| session.file(n).map(|f| (n.clone(), f.clone())))
        .collect();
    let reply = BackupSession {
        id: id.to_owned(),
        lease_secs: ctx.lease.as_secs().max(1),
        nbd_port: ctx.nbd_port,
        manifest: session.manifest().clone(),
        exports,
        events: std::mem::take(&mut events.0),
    };
    if ready.send(Ok((reply, files))).is_err() {
        ctx.exports.remove(&names);
        drop(session);
        let _ = std::fs::remove_file(&record);
        return;
    }
    let reply_to = wait(finish, deadline, id);
    ctx.exports.remove(&names);
    let mut events = Collect::default();
    let result = session
        .finish(&mut events)
        .map(|()| events.0)
        .map_err(|e| e.to_string());
    if result.is_ok() {
        let _ = std::fs::remove_file(&record);
        let _ = fsio::sync_dir(&records_dir(&ctx.dir));
    }
    if let Some(tx) = reply_to {
        let _ = tx.send(result);
    }
}

/// Waits for the client's finish (returned: where to reply) or the lease's end (`None`).
fn wait(
    finish: &mpsc::Receiver<mpsc::Sender<Result<Vec<RemoteEvent>, String>>>,
    deadline: &Mutex<Instant>,
    id: &str,
) -> Option<mpsc::Sender<Result<Vec<RemoteEvent>, String>>> {
    loop {
        match finish.recv_timeout(Duration::from_millis(250)) {
            Ok(tx) => return Some(tx),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let over = deadline.lock().map_or(true, |d| Instant::now() >= *d);
                if over {
                    tracing::warn!("session {id}: lease expired; removing its snapshot");
                    return None;
                }
            }
        }
    }
}

fn write_record(record: &Path, vm: &Record) -> Result<(), String> {
    let text = serde_json::to_vec(vm).map_err(|e| e.to_string())?;
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fsio::write_private(record, &text).map_err(|e| e.to_string())
}

/// Finishes what sessions of a killed agent left: their snapshots are committed.
/// Returns the VMs cleaned.
pub(crate) fn recover(root: &Path, dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(records_dir(dir)) else {
        return Vec::new();
    };
    let Ok(host) = host::Host::open(root) else {
        return Vec::new();
    };
    let mut cleaned = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record: Option<Record> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(record) = record else {
            tracing::warn!("{}: unreadable session record; removed", path.display());
            let _ = std::fs::remove_file(&path);
            continue;
        };
        match backup::clean_after_proxy(&host, host::VmRef(record.moref), &mut ()) {
            Ok(()) => {
                tracing::info!(
                    "{}: committed what an interrupted proxy backup left",
                    record.vm
                );
                let _ = std::fs::remove_file(&path);
                cleaned.push(record.vm);
            }
            Err(e) => tracing::warn!(
                "{}: cleanup after an interrupted proxy backup: {e}",
                record.vm
            ),
        }
    }
    cleaned
}
