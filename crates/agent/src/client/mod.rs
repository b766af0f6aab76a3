//! The agent's client: what the tools use on a backup proxy.

mod http;
mod prefetch;
mod remote;
mod restore;

pub use remote::RemoteBackup;
pub use restore::RestoreSettings;

use crate::api::*;
use crate::tls::TrustPolicy;
use crate::{Error, Result};
use http::Endpoint;
use rustls::pki_types::ServerName;
use std::sync::Arc;

/// How disk data travels between the agent and the proxy (VMware's transport modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// NBD over TLS (the default, as VMware's NBDSSL).
    #[default]
    NbdSsl,
    /// Plain NBD: for a trusted backup network; the agent accepts it only when started
    /// with `--allow-plain-nbd`.
    Nbd,
}

impl std::str::FromStr for Transport {
    type Err = Error;
    fn from_str(s: &str) -> Result<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "nbdssl" => Ok(Transport::NbdSsl),
            "nbd" => Ok(Transport::Nbd),
            _ => Err(Error::Invalid(format!(
                "transport {s:?}: expected nbdssl or nbd"
            ))),
        }
    }
}

/// The agent's port when `VCHOST` names none.
pub const DEFAULT_PORT: u16 = 8443;

/// Most bytes of a JSON reply read.
const MAX_JSON: u64 = 16 << 20;

/// A logged-in connection to a host agent.
pub struct Agent {
    endpoint: Endpoint,
    token: String,
    role: String,
}

/// `https://host[:port][/]` (or `host[:port]`) as host and port.
///
/// # Errors
/// Plain `http://` and malformed addresses.
pub fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Invalid(format!("host {url:?}: {why}"));
    if url.starts_with("http://") {
        return Err(bad("the host agent speaks HTTPS only (use https://)"));
    }
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad("expected https://HOST[:PORT]"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if tail.is_empty() => DEFAULT_PORT,
            None => return Err(bad("expected https://[V6]:PORT")),
        };
        (format!("[{h}]"), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
            None => (rest.to_owned(), DEFAULT_PORT),
        }
    };
    Ok((host, port))
}

impl Agent {
    /// Connects to the agent at `url` and logs in as `user`.
    ///
    /// # Errors
    /// A bad URL; connection, certificate or login failures (one line each).
    pub fn login(url: &str, user: &str, password: &str, policy: TrustPolicy) -> Result<Agent> {
        let mut agent = Agent::connect(url, policy)?;
        let body = serde_json::to_vec(&LoginRequest {
            user: user.to_owned(),
            password: password.to_owned(),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let reply: LoginReply = agent.call("POST", "/api/v1/login", Some(&body))?;
        agent.token = reply.token;
        agent.role = reply.role;
        Ok(agent)
    }

    fn connect(url: &str, policy: TrustPolicy) -> Result<Agent> {
        let (host, port) = parse_url(url)?;
        let name = format!("{host}:{port}");
        let addr = Endpoint::resolve(&host, port)?;
        let (tls, refused) = crate::tls::client_config(&name, &policy)?;
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(bare.clone())
            .map_err(|_| Error::Invalid(format!("host {host:?}: not a valid name")))?;
        let endpoint = Endpoint {
            name,
            host: host.clone(),
            addr,
            tls,
            server_name,
            refused,
        };
        Ok(Agent {
            endpoint,
            token: String::new(),
            role: String::new(),
        })
    }

    /// Resumes a login another process made (its session token), checking it works.
    ///
    /// # Errors
    /// As for [`Agent::login`]; an expired token.
    pub fn resume(url: &str, token: &str, policy: TrustPolicy) -> Result<Agent> {
        let mut agent = Agent::connect(url, policy)?;
        agent.token = token.to_owned();
        agent.role = agent.ping()?.role;
        Ok(agent)
    }

    /// The session token (a secret: whoever holds it acts as the user).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The user's role as the agent said.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint.name
    }

    /// One call with a JSON reply.
    pub(crate) fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T> {
        let token = (!self.token.is_empty()).then_some(self.token.as_str());
        let resp = self.endpoint.exchange(method, path, token, body)?;
        let status = resp.status;
        let bytes = resp.bytes(MAX_JSON).map_err(|e| Error::Connect {
            endpoint: self.endpoint.name.clone(),
            text: format!("reading the reply: {e}"),
        })?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &bytes));
        }
        if bytes.is_empty() {
            return serde_json::from_slice(b"null").map_err(|e| self.bad_reply(&e));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.bad_reply(&e))
    }

    fn bad_reply(&self, e: &serde_json::Error) -> Error {
        Error::Connect {
            endpoint: self.endpoint.name.clone(),
            text: format!("malformed reply: {e}"),
        }
    }

    /// `GET /api/v1/ping`.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn ping(&self) -> Result<PingReply> {
        self.call("GET", "/api/v1/ping", None)
    }

    /// The VMs `spec` finds.
    ///
    /// # Errors
    /// Connection and API errors (a bad specifier among them).
    pub fn vms(&self, spec: &str) -> Result<VmList> {
        self.call(
            "GET",
            &format!("/api/v1/vms?spec={}", query_escape(spec)),
            None,
        )
    }

    /// Folders, pools and datastores.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn inventory(&self) -> Result<Inventory> {
        self.call("GET", "/api/v1/inventory", None)
    }

    /// A VM in detail: disks and snapshots too.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn vm_details(&self, moref: &str) -> Result<VmDetails> {
        self.call("GET", &format!("/api/v1/vms/{}", query_escape(moref)), None)
    }

    /// A power operation (on, off, reset, suspend, resume, shutdown; admin only).
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn power(&self, moref: &str, op: &str) -> Result<SnapshotTaken> {
        let body = serde_json::to_vec(&PowerRequest { op: op.to_owned() })
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.call(
            "POST",
            &format!("/api/v1/vms/{}/power", query_escape(moref)),
            Some(&body),
        )
    }

    /// Takes a snapshot of a VM.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn snapshot(&self, moref: &str, name: &str, description: &str) -> Result<SnapshotTaken> {
        let body = serde_json::to_vec(&SnapshotRequest {
            name: name.to_owned(),
            description: description.to_owned(),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let path = format!("/api/v1/vms/{}/snapshots", query_escape(moref));
        self.call("POST", &path, Some(&body))
    }

    /// Removes snapshot `uid` of a VM (its redo logs are committed).
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn remove_snapshot(&self, moref: &str, uid: u64) -> Result<SnapshotTaken> {
        let path = format!("/api/v1/vms/{}/snapshots/{uid}", query_escape(moref));
        self.call("DELETE", &path, None)
    }

    /// The host's configuration backup (admin only), as `vcb host config-backup` writes it.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn config_backup(&self) -> Result<Vec<u8>> {
        let resp =
            self.endpoint
                .exchange("GET", "/api/v1/host/config-backup", Some(&self.token), None)?;
        let status = resp.status;
        let bytes = resp.bytes(64 << 20).map_err(|e| Error::Connect {
            endpoint: self.endpoint.name.clone(),
            text: format!("reading the reply: {e}"),
        })?;
        if status != 200 {
            return Err(api_error(status, &bytes));
        }
        Ok(bytes)
    }

    /// Starts a backup session (the host quiesces and snapshots the VM).
    ///
    /// # Errors
    /// Connection and API errors (the host's backup errors among them).
    pub fn start_backup(&self, req: &BackupRequest) -> Result<BackupSession> {
        let body = serde_json::to_vec(req).map_err(|e| Error::Invalid(e.to_string()))?;
        self.call("POST", "/api/v1/backups", Some(&body))
    }

    /// The configuration file `name` of session `id`, as a reader of its bytes.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn backup_file(&self, id: &str, name: &str) -> Result<Box<dyn std::io::Read + Send>> {
        let path = format!("/api/v1/backups/{id}/files/{}", query_escape(name));
        let resp = self
            .endpoint
            .exchange("GET", &path, Some(&self.token), None)?;
        if resp.status != 200 {
            let status = resp.status;
            let bytes = resp.bytes(MAX_JSON).unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(resp.body)
    }

    /// Extends the lease of session `id`.
    ///
    /// # Errors
    /// Connection and API errors (a session that ended).
    pub fn keepalive(&self, id: &str) -> Result<()> {
        let _: Option<serde_json::Value> =
            self.call("POST", &format!("/api/v1/backups/{id}/keepalive"), None)?;
        Ok(())
    }

    /// Ends session `id`: the host removes the snapshot.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn finish_backup(&self, id: &str) -> Result<Finished> {
        self.call("DELETE", &format!("/api/v1/backups/{id}"), None)
    }

    /// TLS for the agent's NBD server (the same certificate check as the API's), or
    /// none for the plain `nbd` transport.
    pub(crate) fn nbd_tls(&self, transport: Transport) -> Result<Option<nbd::Tls>> {
        if transport == Transport::Nbd {
            return Ok(None);
        }
        // The API's configuration: the same certificate check (the HTTP client sets no ALPN).
        Ok(Some(nbd::Tls {
            config: Arc::clone(&self.endpoint.tls),
            server_name: self.endpoint.server_name.clone(),
        }))
    }

    /// The agent's address with another port (its NBD server).
    pub(crate) fn addr_with_port(&self, port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.endpoint.addr.ip(), port)
    }
}

fn api_error(status: u16, body: &[u8]) -> Error {
    let message = serde_json::from_slice::<ErrorReply>(body)
        .map(|r| r.error)
        .unwrap_or_else(|_| format!("HTTP {status}"));
    Error::Api { status, message }
}

/// Percent-encodes everything but unreserved characters.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_plain_http_is_refused() {
        assert_eq!(parse_url("https://h:9").unwrap(), ("h".into(), 9));
        assert_eq!(parse_url("h").unwrap(), ("h".into(), DEFAULT_PORT));
        assert_eq!(parse_url("https://[::1]:7/").unwrap(), ("[::1]".into(), 7));
        assert!(parse_url("http://h:9").is_err());
        assert!(parse_url("https://u@h").is_err());
        assert!(parse_url("https://h:x").is_err());
        assert_eq!(query_escape("name:a b/c"), "name%3Aa%20b%2Fc");
    }
}
