//! A small QMP client: JSON over QEMU's monitor socket.
//!
//! [`Qmp::connect`] reads the greeting and sends `qmp_capabilities`. Every command
//! carries an `id`; answers are matched by it, and events that arrive meanwhile are
//! buffered for [`Qmp::wait_event`] (and, when the connection has a log, appended to the
//! VM's `vmware.log`). Every read has a deadline.
//!
//! QEMU serves one monitor client at a time: a second client connects but gets its
//! greeting only when the first disconnects, so this crate holds connections only for the
//! length of one operation.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::vmlog;
use crate::wire::{self, JsonLines};

/// How long an ordinary command may take to be answered.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// An asynchronous event QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name (`BLOCK_JOB_READY`, `SHUTDOWN`...).
    pub name: String,
    /// Its `data` member (`Null` when absent).
    pub data: Value,
}

/// A connection to a QEMU monitor in QMP mode.
pub struct Qmp {
    wire: JsonLines,
    next_id: u64,
    events: VecDeque<Event>,
    log: Option<PathBuf>,
    version: String,
}

impl Qmp {
    /// Connects to the monitor at `socket`, reads the greeting and leaves capabilities
    /// negotiation mode, all within `timeout`.
    ///
    /// # Errors
    /// [`Error::Io`] if nothing listens there; [`Error::Timeout`] if the greeting does not
    /// come (another client holds the monitor); [`Error::Protocol`] for a peer that is not
    /// QMP.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = wire::connect(socket)?;
        let mut wire = JsonLines::new(stream, socket)?;
        let greeting = wire.recv(deadline, "the QMP greeting")?;
        let Some(q) = greeting.get("QMP") else {
            return Err(Error::Protocol {
                socket: socket.to_path_buf(),
                reason: format!("not a QMP greeting: {greeting:.200}"),
            });
        };
        let v = &q["version"]["qemu"];
        let version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        let mut qmp = Qmp {
            wire,
            next_id: 1,
            events: VecDeque::new(),
            log: None,
            version,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        qmp.execute_within(
            "qmp_capabilities",
            Value::Null,
            left.max(Duration::from_millis(1)),
        )?;
        Ok(qmp)
    }

    /// Appends every event received from now on to `log` (the VM's `vmware.log`).
    pub fn log_events_to(&mut self, log: &Path) {
        self.log = Some(log.to_path_buf());
    }

    /// QEMU's version, `major.minor.micro`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The socket this connection uses.
    pub fn socket(&self) -> &Path {
        self.wire.socket()
    }

    /// Runs `command` with `args` (`Value::Null` for none) and returns its `return`
    /// member, waiting at most [`COMMAND_TIMEOUT`].
    ///
    /// # Errors
    /// [`Error::Qmp`] when QEMU answers with an error; [`Error::Timeout`];
    /// [`Error::Protocol`] when the connection breaks.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        self.execute_within(command, args, COMMAND_TIMEOUT)
    }

    /// Like [`execute`](Qmp::execute) with an explicit timeout.
    ///
    /// # Errors
    /// As for [`execute`](Qmp::execute).
    pub fn execute_within(
        &mut self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        self.wire.send(&msg, deadline)?;
        let what = format!("the answer to {command}");
        loop {
            let reply = self.wire.recv(deadline, &what)?;
            if self.buffer_event(&reply) {
                continue;
            }
            if reply.get("id") != Some(&json!(id)) {
                // An answer to a command of an earlier, abandoned call: skip it.
                continue;
            }
            if let Some(err) = reply.get("error") {
                return Err(Error::Qmp {
                    socket: self.wire.socket().to_path_buf(),
                    command: command.to_owned(),
                    class: err["class"].as_str().unwrap_or("?").to_owned(),
                    desc: err["desc"].as_str().unwrap_or("?").to_owned(),
                });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Waits for the first event (buffered or new) for which `matches` is true, removing
    /// it from the buffer. Other events stay buffered.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming `what`; [`Error::Protocol`] when the connection breaks
    /// (QEMU exited).
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&mut matches) {
                if let Some(event) = self.events.remove(i) {
                    return Ok(event);
                }
            }
            let msg = match self.wire.recv(deadline, what) {
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        what: format!("{}: {what}", self.wire.socket().display()),
                        after: timeout,
                    })
                }
                other => other?,
            };
            self.buffer_event(&msg);
        }
    }

    /// Removes and returns the buffered events.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Buffers `msg` if it is an event; tells whether it was.
    fn buffer_event(&mut self, msg: &Value) -> bool {
        let Some(name) = msg.get("event").and_then(Value::as_str) else {
            return false;
        };
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        if let Some(log) = &self.log {
            vmlog::append(log, "qmp", &format!("event {name} {data}"));
        }
        self.events.push_back(Event {
            name: name.to_owned(),
            data,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command by the script.
    fn fake(script: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 10, \"minor\": 0, \"micro\": 2}}, \"capabilities\": []}}\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for answer in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let req: Value = serde_json::from_str(&line).unwrap();
                let text = answer.replace("ID", &req["id"].to_string());
                s.write_all(text.as_bytes()).unwrap();
            }
            let mut rest = String::new();
            let _ = r.read_line(&mut rest);
        });
        (dir, path)
    }

    #[test]
    fn matches_answers_by_id_and_buffers_events() {
        let (_dir, path) = fake(vec![
            "{\"return\": {}, \"id\": ID}\n",
            "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}, \"id\": ID}\n{\"event\": \"BLOCK_JOB_READY\", \"data\": {\"device\": \"j\"}}\n",
        ]);
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(q.version(), "10.0.2");
        let r = q.execute("query-status", Value::Null).unwrap();
        assert_eq!(r["status"], "paused");
        let e = q
            .wait_event("ready", Duration::from_secs(5), |e| {
                e.name == "BLOCK_JOB_READY"
            })
            .unwrap();
        assert_eq!(e.data["device"], "j");
        assert_eq!(q.take_events().len(), 1);
    }

    #[test]
    fn error_qmp_answer() {
        let (_dir, path) = fake(vec![
            "{\"return\": {}, \"id\": ID}\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": ID}\n",
        ]);
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let err = q.execute("cont", Value::Null).unwrap_err();
        assert!(
            matches!(&err, Error::Qmp { class, .. } if class == "GenericError"),
            "{err}"
        );
    }

    #[test]
    fn error_event_timeout() {
        let (_dir, path) = fake(vec!["{\"return\": {}, \"id\": ID}\n"]);
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let err = q
            .wait_event("nothing", Duration::from_millis(100), |_| true)
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }
}
