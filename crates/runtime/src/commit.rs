//! Live commit: QEMU's active `block-commit` of a running disk's top redo log into its
//! parent. The job copies, reports `BLOCK_JOB_READY` when the parent has caught up, and
//! `job-complete` pivots the device onto the parent. The redo log's node is then deleted
//! (`blockdev-del`) and its files removed.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmdk::Progress;
use vmx::DiskNode;

use crate::cmdline::node_name;
use crate::error::{Error, Result};
use crate::live::{format_node_of, node_names, with_guest_stopped};
use crate::qmp::Qmp;
use crate::vm::Vm;
use crate::vmlog;

/// How long a commit job may run.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(3600);

/// What [`Vm::live_commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// The disk.
    pub node: DiskNode,
    /// The redo log committed and deleted.
    pub redo_log: PathBuf,
    /// The file the disk writes into now.
    pub parent: PathBuf,
    /// Bytes the job copied.
    pub copied_bytes: u64,
    /// How long the guest's vCPUs were stopped while the job took stock of the redo log
    /// (see [`Vm::live_commit`]).
    pub guest_paused: Duration,
    /// From the call to the redo log's files being deleted.
    pub elapsed: Duration,
}

impl Vm {
    /// Commits the top redo log of the running disk at `node` into its parent and
    /// deletes the redo log's files. `progress` sees the bytes the job copies; breaking
    /// cancels the job, leaving the disk on its redo log (still consistent).
    ///
    /// The guest is stopped (`stop`/`cont`) while the job starts: QEMU 10.0's commit job
    /// first scans which clusters the redo log holds and only then starts tracking new
    /// writes, so a guest write landing behind the scan would never be copied and would
    /// be lost with the redo log (seen here as lost blocks in about one commit in 30;
    /// fixed in later QEMU). The pause lasts as long as the scan, which grows with the
    /// disk's size (tens of milliseconds for 64 MiB); it is reported in
    /// [`CommitReport::guest_paused`].
    ///
    /// # Errors
    /// [`Error::NotRunning`]; [`Error::UnknownDisk`]; [`Error::NothingToCommit`];
    /// [`Error::JobFailed`]; [`Error::Cancelled`]; QMP errors.
    pub fn live_commit(&self, node: DiskNode, progress: &mut dyn Progress) -> Result<CommitReport> {
        let started = Instant::now();
        let log = self.files()?.log;
        let mut q = self.qmp()?;
        let chain = self.device_chain(&mut q, node)?;
        let (Some(top), Some(parent)) = (chain.files.first(), chain.files.get(1)) else {
            return Err(Error::NothingToCommit {
                vmx: self.vmx.clone(),
                node,
                top: chain.files.first().cloned().unwrap_or_default(),
            });
        };
        let base_node =
            format_node_of(&mut q, parent, &self.folder())?.ok_or_else(|| Error::Protocol {
                socket: q.socket().to_path_buf(),
                reason: format!("no block node opens {}", parent.display()),
            })?;
        let job = format!("commit-{}", node_name(node));
        vmlog::append(
            &log,
            "vcb",
            &format!("live commit of {} into {}", top.display(), parent.display()),
        );
        // A process killed during a commit leaves its job in QEMU under the same id; a
        // new job of that id would be refused, so the old one is carried to its end.
        let (guest_paused, ready) = match adopt_leftover_job(&mut q, &job)? {
            Leftover::None => {
                // Change tracking: the target gets its own bitmap; every block the job
                // copies into it (all the redo log holds) counts as written.
                if let Some(old) = crate::tracking::bitmap_on(&mut q, &chain.top_node)? {
                    q.execute(
                        "block-dirty-bitmap-add",
                        json!({"node": base_node, "name": old.next_name(),
                               "granularity": old.granularity}),
                    )?;
                }
                let args = json!({"job-id": job, "device": chain.top_node, "base-node": base_node});
                (start_commit(&mut q, &args, &job)?, false)
            }
            Leftover::Running => {
                vmlog::append(&log, "vcb", &format!("adopting leftover job {job}"));
                (Duration::ZERO, false)
            }
            Leftover::Ready => {
                vmlog::append(&log, "vcb", &format!("completing leftover job {job}"));
                q.execute("job-complete", json!({ "id": job }))?;
                (Duration::ZERO, true)
            }
        };
        let copied_bytes = self.follow_commit(&mut q, &job, ready, progress)?;
        if self.device_chain(&mut q, node)?.files.first() == Some(top) {
            return Err(Error::JobFailed {
                vmx: self.vmx.clone(),
                job,
                reason: format!("ended without pivoting off {}", top.display()),
            });
        }
        // The guest now writes the parent and the redo log is stale: it goes at once
        // (QEMU keeps its open descriptor until the node is closed), because once QEMU
        // is gone, a leftover redo log cannot be told from one whose commit never
        // pivoted, and committing a stale one would undo the guest's newer writes.
        // The tracking file follows the disk onto the parent (whose bitmap counts now).
        if vmdk::ctk::ctk_path(top).exists() {
            if crate::tracking::bitmap_on(&mut q, &base_node)?.is_some() {
                let _ = vmdk::ctk::move_live(top, parent);
            } else {
                let _ = vmdk::ctk::mark_lost(
                    parent,
                    "a live commit left the disk without a QEMU bitmap",
                );
            }
        }
        vmdk::delete(top)
            .map_err(|e| Error::vmdk(format!("delete committed redo log {}", top.display()), e))?;
        // The old top is no longer in the device's chain; its node (and, for a node
        // opened at power-on, its separate protocol node) can be closed.
        q.execute("blockdev-del", json!({ "node-name": chain.top_node }))?;
        let file_node = format!("{}-file", chain.top_node);
        if node_names(&mut q)?.contains(&file_node) {
            q.execute("blockdev-del", json!({ "node-name": file_node }))?;
        }
        vmlog::append(
            &log,
            "vcb",
            &format!("live commit done ({copied_bytes} bytes)"),
        );
        Ok(CommitReport {
            node,
            redo_log: top.clone(),
            parent: parent.clone(),
            copied_bytes,
            guest_paused,
            elapsed: started.elapsed(),
        })
    }

    /// Follows a commit job to its end: progress while it copies, `job-complete` once
    /// ready. Returns the bytes copied.
    fn follow_commit(
        &self,
        q: &mut Qmp,
        job: &str,
        completing: bool,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        let (mut started, mut reported) = (false, 0u64);
        let mut completing = completing;
        let failed = |reason: String| Error::JobFailed {
            vmx: self.vmx.clone(),
            job: job.to_owned(),
            reason,
        };
        loop {
            let ours = |e: &crate::qmp::Event| {
                e.data["device"] == job
                    && matches!(
                        e.name.as_str(),
                        "BLOCK_JOB_READY" | "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED"
                    )
            };
            match q.wait_event("commit job events", Duration::from_millis(200), ours) {
                Ok(e) => {
                    let len = e.data["len"].as_u64().unwrap_or(0);
                    let offset = e.data["offset"].as_u64().unwrap_or(0);
                    if !started {
                        progress.start(len);
                        started = true;
                    }
                    let _ = progress.advance(offset.saturating_sub(reported));
                    reported = reported.max(offset);
                    match e.name.as_str() {
                        "BLOCK_JOB_READY" if !completing => {
                            q.execute("job-complete", json!({ "id": job }))?;
                            completing = true;
                        }
                        "BLOCK_JOB_COMPLETED" => {
                            if let Some(err) = e.data["error"].as_str() {
                                return Err(failed(err.to_owned()));
                            }
                            progress.finish();
                            return Ok(offset);
                        }
                        "BLOCK_JOB_CANCELLED" => {
                            return Err(Error::Cancelled {
                                what: format!("commit job {job}"),
                            })
                        }
                        _ => {}
                    }
                }
                Err(Error::Timeout { .. }) => {
                    if Instant::now() >= deadline {
                        let _ =
                            q.execute("block-job-cancel", json!({ "device": job, "force": true }));
                        return Err(failed(format!("not finished after {COMMIT_TIMEOUT:?}")));
                    }
                    // Gone without an event on this connection: it ended before we
                    // connected (an adopted job); the caller checks the chain.
                    let Some((len, offset)) = job_progress(q, job)? else {
                        progress.finish();
                        return Ok(reported);
                    };
                    if !started && len > 0 {
                        progress.start(len);
                        started = true;
                    }
                    let step = progress.advance(offset.saturating_sub(reported));
                    reported = reported.max(offset);
                    if step == ControlFlow::Break(()) && !completing {
                        q.execute("block-job-cancel", json!({ "device": job, "force": true }))?;
                        completing = true;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Starts the commit job `args` with the guest stopped until the job has scanned the
/// redo log (its progress total is known, or it is ready, or already over). Returns how
/// long the guest was stopped.
fn start_commit(q: &mut Qmp, args: &Value, job: &str) -> Result<Duration> {
    let stopped_at = Instant::now();
    with_guest_stopped(q, |q| {
        q.execute("block-commit", args.clone())?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let jobs = q.execute("query-block-jobs", Value::Null)?;
            let ours = jobs
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j["device"] == job);
            let scanned = ours
                .is_none_or(|j| j["len"].as_u64().unwrap_or(0) > 0 || j["ready"] == json!(true));
            if scanned {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("commit job {job} taking stock of the redo log"),
                    after: Duration::from_secs(600),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })?;
    Ok(stopped_at.elapsed())
}

/// (len, offset) of a block job, `None` when QEMU has no such job.
fn job_progress(q: &mut Qmp, job: &str) -> Result<Option<(u64, u64)>> {
    Ok(find_job(q, job)?.map(|j| {
        (
            j["len"].as_u64().unwrap_or(0),
            j["offset"].as_u64().unwrap_or(0),
        )
    }))
}

/// QEMU's description of block job `job`, if it exists.
fn find_job(q: &mut Qmp, job: &str) -> Result<Option<Value>> {
    let jobs = q.execute("query-block-jobs", Value::Null)?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["device"] == job)
        .cloned())
}

/// A commit job left in QEMU by an earlier (killed) process.
enum Leftover {
    /// No job of that id: start one.
    None,
    /// Still copying (or finishing): follow it.
    Running,
    /// Caught up and waiting for `job-complete`.
    Ready,
}

/// Looks for a job called `job` and brings it into a state a commit can carry on from:
/// a paused job is resumed, a concluded one dismissed, an aborting one waited for.
fn adopt_leftover_job(q: &mut Qmp, job: &str) -> Result<Leftover> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(j) = find_job(q, job)? else {
            return Ok(Leftover::None);
        };
        match j["status"].as_str().unwrap_or_default() {
            "ready" => return Ok(Leftover::Ready),
            "paused" | "standby" if j["ready"] == json!(true) => {
                q.execute("block-job-resume", json!({ "device": job }))?;
                return Ok(Leftover::Ready);
            }
            "paused" | "standby" => {
                q.execute("block-job-resume", json!({ "device": job }))?;
                return Ok(Leftover::Running);
            }
            "concluded" | "null" => {
                q.execute("job-dismiss", json!({ "id": job }))?;
            }
            "aborting" | "undefined" => {}
            _ => return Ok(Leftover::Running),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("leftover block job {job} to end"),
                after: Duration::from_secs(60),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
