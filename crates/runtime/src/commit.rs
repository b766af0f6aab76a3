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
        let args = json!({"job-id": job, "device": chain.top_node, "base-node": base_node});
        let guest_paused = start_commit(&mut q, &args, &job)?;
        let copied_bytes = self.follow_commit(&mut q, &job, progress)?;
        // The old top is no longer in the device's chain; its node (and, for a node
        // opened at power-on, its separate protocol node) must go before the file does.
        q.execute("blockdev-del", json!({ "node-name": chain.top_node }))?;
        let file_node = format!("{}-file", chain.top_node);
        if node_names(&mut q)?.contains(&file_node) {
            q.execute("blockdev-del", json!({ "node-name": file_node }))?;
        }
        vmdk::delete(top)
            .map_err(|e| Error::vmdk(format!("delete committed redo log {}", top.display()), e))?;
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
    fn follow_commit(&self, q: &mut Qmp, job: &str, progress: &mut dyn Progress) -> Result<u64> {
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        let (mut started, mut reported) = (false, 0u64);
        let mut completing = false;
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
                    let (len, offset) = job_progress(q, job)?;
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

/// (len, offset) of a running block job.
fn job_progress(q: &mut Qmp, job: &str) -> Result<(u64, u64)> {
    let jobs = q.execute("query-block-jobs", Value::Null)?;
    let j = jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["device"] == job);
    Ok(j.map(|j| {
        (
            j["len"].as_u64().unwrap_or(0),
            j["offset"].as_u64().unwrap_or(0),
        )
    })
    .unwrap_or((0, 0)))
}
