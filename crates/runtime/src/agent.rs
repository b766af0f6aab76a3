//! The QEMU guest agent (qemu-ga): the role VMware Tools plays for quiescing and guest
//! information.
//!
//! The agent speaks QMP-like JSON over a virtio-serial port that QEMU exposes as
//! [`AGENT_SOCKET`](crate::paths::AGENT_SOCKET). Nothing tells whether an agent runs in
//! the guest, so every connection starts with `guest-sync-delimited`: a 0xFF byte resets
//! the agent's parser, and the answer, preceded by 0xFF, carries a fresh id, which
//! discards anything a previous client left in the channel. No answer within the timeout
//! means no agent.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::wire::{self, JsonLines};

/// How long to wait for an agent to answer the sync before deciding there is none.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to a guest agent that answered the sync.
pub(crate) struct Agent {
    wire: JsonLines,
}

impl Agent {
    /// Connects and synchronises. `Ok(None)`: the channel exists but no agent answered
    /// within `timeout`.
    pub(crate) fn connect(socket: &Path, timeout: Duration) -> Result<Option<Agent>> {
        let deadline = Instant::now() + timeout;
        let mut wire = JsonLines::new(wire::connect(socket)?, socket)?;
        let id = u64::from(std::process::id()) << 20 | u64::from(rand_u16());
        wire.send_raw(&[0xff], deadline)?;
        wire.send(
            &json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}),
            deadline,
        )?;
        loop {
            match wire.skip_past(0xff, deadline, "the guest agent's sync") {
                Err(Error::Timeout { .. }) => return Ok(None),
                other => other?,
            }
            match wire.recv(deadline, "the guest agent's sync") {
                Err(Error::Timeout { .. }) => return Ok(None),
                Ok(reply) if reply["return"] == json!(id) => return Ok(Some(Agent { wire })),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `command` and returns its `return` member.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut msg = json!({ "execute": command });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        self.wire.send(&msg, deadline)?;
        let reply = self
            .wire
            .recv(deadline, &format!("the guest agent's answer to {command}"))?;
        if let Some(err) = reply.get("error") {
            return Err(Error::Agent {
                socket: self.wire.socket().to_path_buf(),
                command: command.to_owned(),
                class: err["class"].as_str().unwrap_or("?").to_owned(),
                desc: err["desc"].as_str().unwrap_or("?").to_owned(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// The guest's IP addresses, loopback excluded.
    pub(crate) fn ip_addresses(&mut self, timeout: Duration) -> Result<Vec<IpAddr>> {
        let ifaces = self.execute("guest-network-get-interfaces", Value::Null, timeout)?;
        Ok(parse_addresses(&ifaces))
    }
}

/// The addresses in a `guest-network-get-interfaces` answer, loopback excluded.
pub(crate) fn parse_addresses(ifaces: &Value) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for iface in ifaces.as_array().into_iter().flatten() {
        for addr in iface["ip-addresses"].as_array().into_iter().flatten() {
            let ip = addr["ip-address"]
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok());
            if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                out.push(ip);
            }
        }
    }
    out
}

/// 16 bits that differ between calls, for sync ids (no cryptographic use).
fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos ^ (nanos >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn addresses_skip_loopback() {
        let v = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1"}, {"ip-address": "::1"}]},
            {"name": "eth0", "ip-addresses": [{"ip-address": "10.0.2.15"}, {"ip-address": "fe80::1"}]},
            {"name": "dummy"}
        ]);
        let got: Vec<String> = parse_addresses(&v)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["10.0.2.15", "fe80::1"]);
    }

    /// A fake agent that first answers the 0xFF byte with an error (as qemu-ga does),
    /// then the sync, then one command.
    #[test]
    fn syncs_past_garbage_and_runs_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut ff = [0u8; 1];
            r.read_exact(&mut ff).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let req: Value = serde_json::from_str(&line).unwrap();
            let id = &req["arguments"]["id"];
            s.write_all(b"{\"return\": 1}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"stray\"}}\n").unwrap();
            let mut sync = vec![0xffu8];
            sync.extend(format!("{{\"return\": {id}}}\n").bytes());
            s.write_all(&sync).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"frozen\"}}\n")
                .unwrap();
        });
        let mut a = Agent::connect(&path, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let err = a
            .execute("guest-fsfreeze-freeze", Value::Null, Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Agent { desc, .. } if desc == "frozen"),
            "{err}"
        );
    }

    #[test]
    fn silence_means_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let a = Agent::connect(&path, Duration::from_millis(200)).unwrap();
        assert!(a.is_none());
    }
}
