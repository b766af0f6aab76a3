//! Quiescing through the guest agent (`guest-fsfreeze-freeze`/`thaw`, which also run the
//! guest's fsfreeze hook scripts, as VMware Tools runs pre-freeze/post-thaw scripts), and
//! the guest's IP addresses.
//!
//! A freeze is bounded: [`Vm::freeze`] returns a [`FreezeGuard`] whose watchdog thread
//! thaws the guest when the timeout passes, whatever the caller is doing; dropping the
//! guard thaws too. [`ThawReport::by_watchdog`] tells the caller that the freeze did not
//! cover everything it did (so its snapshot counts as crash-consistent only).

use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{Agent, SYNC_TIMEOUT};
use crate::error::Result;
use crate::vm::Vm;
use crate::vmlog;

/// The outcome of [`Vm::freeze`].
#[derive(Debug)]
pub enum Quiesce {
    /// The VM has no guest agent channel, or no agent answered: nothing was frozen.
    NoAgent,
    /// The guest is frozen until the guard is thawed, dropped or times out.
    Frozen(FreezeGuard),
}

/// What [`FreezeGuard::thaw`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThawReport {
    /// From the freeze command's answer to the thaw.
    pub frozen_for: Duration,
    /// The watchdog thawed the guest before the caller did (the timeout passed).
    pub by_watchdog: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Frozen,
    Thawed { by_watchdog: bool },
}

struct Shared {
    agent: Mutex<Option<Agent>>,
    state: Mutex<State>,
    changed: Condvar,
    log: std::path::PathBuf,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &*lock(&self.state))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Thaws through the agent unless already thawed; returns the state before.
    fn thaw(&self, by_watchdog: bool) -> (State, Result<()>) {
        let mut state = lock(&self.state);
        let before = *state;
        if before != State::Frozen {
            return (before, Ok(()));
        }
        *state = State::Thawed { by_watchdog };
        self.changed.notify_all();
        // The agent call may take its whole timeout: the watchdog (or the caller) must
        // see the new state meanwhile instead of waiting for this lock.
        drop(state);
        let result = match lock(&self.agent).as_mut() {
            Some(agent) => agent
                .execute("guest-fsfreeze-thaw", Value::Null, Duration::from_secs(30))
                .map(|_| ()),
            None => Ok(()),
        };
        let who = if by_watchdog { "watchdog" } else { "caller" };
        vmlog::append(&self.log, "vcb", &format!("guest thawed by {who}"));
        (before, result)
    }
}

/// Thaws the guest through `shared` when `deadline` passes while it is still frozen.
fn spawn_watchdog(shared: Arc<Shared>, deadline: Instant) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut state = lock(&shared.state);
        while *state == State::Frozen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(state);
                let _ = shared.thaw(true);
                return;
            }
            state = shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    })
}

/// A frozen guest. Thaw it with [`thaw`](FreezeGuard::thaw); dropping it thaws too.
#[derive(Debug)]
pub struct FreezeGuard {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    frozen_at: Instant,
    filesystems: u64,
}

impl FreezeGuard {
    /// How many file systems the agent froze (the guest's hook scripts ran either way).
    pub fn filesystems(&self) -> u64 {
        self.filesystems
    }

    /// Thaws the guest.
    ///
    /// # Errors
    /// Agent errors from `guest-fsfreeze-thaw`.
    pub fn thaw(mut self) -> Result<ThawReport> {
        self.finish()
    }

    fn finish(&mut self) -> Result<ThawReport> {
        let frozen_for = self.frozen_at.elapsed();
        let (before, result) = self.shared.thaw(false);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        result?;
        Ok(ThawReport {
            frozen_for,
            by_watchdog: before == State::Thawed { by_watchdog: true },
        })
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            let _ = self.finish();
        }
    }
}

impl Vm {
    fn agent(&self, timeout: Duration) -> Result<Option<Agent>> {
        let files = self.files()?;
        self.running(&files)?;
        if !files.agent.exists() {
            return Ok(None);
        }
        Agent::connect(&files.agent, timeout.min(SYNC_TIMEOUT))
    }

    /// Freezes the guest's file systems through its agent, for at most `timeout`: if the
    /// freeze command does not answer in time the guest is thawed and this fails, and
    /// once frozen a watchdog thaws the guest when `timeout` (counted from this call)
    /// passes.
    ///
    /// # Errors
    /// [`Error::NotRunning`](crate::Error::NotRunning); [`Error::Timeout`](crate::Error::Timeout); [`Error::Agent`](crate::Error::Agent) when the guest
    /// refuses (a hook script failed; the agent has thawed).
    pub fn freeze(&self, timeout: Duration) -> Result<Quiesce> {
        let started = Instant::now();
        let log = self.files()?.log;
        let Some(mut agent) = self.agent(timeout)? else {
            vmlog::append(
                &log,
                "vcb",
                "freeze: no guest agent; snapshot will be crash-consistent",
            );
            return Ok(Quiesce::NoAgent);
        };
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let frozen = match agent.execute("guest-fsfreeze-freeze", Value::Null, left) {
            Ok(n) => n.as_u64().unwrap_or(0),
            Err(e) => {
                // The agent may still complete the freeze: always ask for a thaw.
                let _ = agent.execute("guest-fsfreeze-thaw", Value::Null, Duration::from_secs(30));
                vmlog::append(&log, "vcb", &format!("freeze failed: {e}"));
                return Err(e);
            }
        };
        vmlog::append(
            &log,
            "vcb",
            &format!("guest frozen ({frozen} file systems)"),
        );
        let shared = Arc::new(Shared {
            agent: Mutex::new(Some(agent)),
            state: Mutex::new(State::Frozen),
            changed: Condvar::new(),
            log,
        });
        let deadline = started + timeout;
        let watchdog = spawn_watchdog(Arc::clone(&shared), deadline);
        Ok(Quiesce::Frozen(FreezeGuard {
            shared,
            watchdog: Some(watchdog),
            frozen_at: Instant::now(),
            filesystems: frozen,
        }))
    }

    /// Thaws the guest's file systems, for recovery when a freezing process died.
    /// Returns `None` when there is no agent.
    ///
    /// # Errors
    /// [`Error::NotRunning`](crate::Error::NotRunning); agent errors.
    pub fn thaw(&self) -> Result<Option<u64>> {
        let Some(mut agent) = self.agent(SYNC_TIMEOUT)? else {
            return Ok(None);
        };
        let n = agent.execute("guest-fsfreeze-thaw", Value::Null, Duration::from_secs(30))?;
        Ok(Some(n.as_u64().unwrap_or(0)))
    }

    /// The guest's IP addresses (loopback excluded) from its agent; `None` when the VM
    /// has no agent channel or no agent answers (use `guestinfo.ip` then).
    ///
    /// # Errors
    /// [`Error::NotRunning`](crate::Error::NotRunning); agent errors.
    pub fn guest_ips(&self) -> Result<Option<Vec<IpAddr>>> {
        let Some(mut agent) = self.agent(SYNC_TIMEOUT)? else {
            return Ok(None);
        };
        agent.ip_addresses(Duration::from_secs(10)).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(timeout: Duration) -> FreezeGuard {
        let dir = std::env::temp_dir();
        let shared = Arc::new(Shared {
            agent: Mutex::new(None),
            state: Mutex::new(State::Frozen),
            changed: Condvar::new(),
            log: dir.join("vcb-runtime-quiesce-test.log"),
        });
        let watchdog = spawn_watchdog(Arc::clone(&shared), Instant::now() + timeout);
        FreezeGuard {
            shared,
            watchdog: Some(watchdog),
            frozen_at: Instant::now(),
            filesystems: 0,
        }
    }

    #[test]
    fn watchdog_thaws_when_the_caller_is_late() {
        let g = guard(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(200));
        assert!(g.thaw().unwrap().by_watchdog);
    }

    #[test]
    fn caller_thaws_in_time() {
        let g = guard(Duration::from_secs(60));
        let started = Instant::now();
        let r = g.thaw().unwrap();
        assert!(!r.by_watchdog);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "watchdog did not wake"
        );
    }
}
