//! One HTTP/1.1 exchange per connection over rustls: the request written whole, the
//! response's headers read up to 16 KiB, its body by `Content-Length` only (the agent
//! always sends one).

use crate::{Error, Result};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most bytes of response headers read.
const MAX_HEADERS: usize = 16 * 1024;

/// Where the agent is and how its certificate is checked.
pub(crate) struct Endpoint {
    /// `host:port` as the user wrote it (the trust file's key).
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    /// Why the certificate check refused the server, when it did.
    pub(crate) refused: Arc<Mutex<Option<String>>>,
}

/// A response: status and a reader of exactly its body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) len: u64,
    pub(crate) body: Box<dyn Read + Send>,
}

impl Endpoint {
    /// Resolves `host:port` (`[v6]:port` too).
    pub(crate) fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
        (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Error::Connect {
                endpoint: format!("{host}:{port}"),
                text: "cannot resolve the host name".into(),
            })
    }

    fn connect_error(&self, e: &std::io::Error) -> Error {
        let refused = self.refused.lock().ok().and_then(|r| r.clone());
        let text = match (refused, e.kind()) {
            (Some(why), _) => why,
            (None, std::io::ErrorKind::ConnectionRefused) => {
                "connection refused (is `vcb hostd` running there?)".to_owned()
            }
            (None, std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                "no answer (timed out)".to_owned()
            }
            (None, std::io::ErrorKind::UnexpectedEof) => {
                "the connection closed (the agent stopped or restarted)".to_owned()
            }
            (None, _) => e.to_string(),
        };
        Error::Connect {
            endpoint: self.name.clone(),
            text,
        }
    }

    /// Sends one request and reads the response's headers.
    pub(crate) fn exchange(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let body = body.unwrap_or_default();
        let json = !body.is_empty() || method == "POST";
        self.exchange_stream(method, path, token, json, body.len() as u64, &mut &body[..])
    }

    /// [`exchange`](Self::exchange) with a body of `len` bytes read from `body`.
    pub(crate) fn exchange_stream(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: bool,
        len: u64,
        body: &mut dyn Read,
    ) -> Result<Response> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(30))
            .map_err(|e| self.connect_error(&e))?;
        // Session setup quiesces a guest: allow the agent its time.
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(600)));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(60)));
        let conn = rustls::ClientConnection::new(Arc::clone(&self.tls), self.server_name.clone())
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.host
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let kind = if json {
            "application/json"
        } else {
            "application/octet-stream"
        };
        if json || len > 0 || method == "PUT" {
            req.push_str(&format!(
                "Content-Type: {kind}\r\nContent-Length: {len}\r\n"
            ));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .map_err(|e| self.connect_error(&e))?;
        let copied =
            std::io::copy(&mut body.take(len), &mut stream).map_err(|e| self.connect_error(&e))?;
        if copied != len {
            return Err(self.protocol("the request body ended early"));
        }
        stream.flush().map_err(|e| self.connect_error(&e))?;
        self.read_head(stream)
    }

    fn read_head(
        &self,
        mut stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    ) -> Result<Response> {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEADERS {
                return Err(self.protocol("response headers too long"));
            }
            let n = stream
                .read(&mut chunk)
                .map_err(|e| self.connect_error(&e))?;
            if n == 0 {
                let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return Err(self.connect_error(&e));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(self.protocol("malformed response")),
        }
        let status = parsed.code.unwrap_or(0);
        let len = if status == 204 {
            Some(0)
        } else {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        }
        .ok_or_else(|| self.protocol("response without Content-Length"))?;
        let rest = buf[end..].to_vec();
        let body = std::io::Cursor::new(rest).chain(stream).take(len);
        Ok(Response {
            status,
            len,
            body: Box::new(body),
        })
    }

    fn protocol(&self, text: &str) -> Error {
        Error::Connect {
            endpoint: self.name.clone(),
            text: text.to_owned(),
        }
    }
}

impl Response {
    /// The body, at most `limit` bytes.
    pub(crate) fn bytes(mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        if self.len > limit {
            return Err(std::io::Error::other(format!(
                "response of {} bytes is larger than {limit}",
                self.len
            )));
        }
        let mut out = Vec::with_capacity(self.len as usize);
        self.body.read_to_end(&mut out)?;
        if (out.len() as u64) < self.len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        Ok(out)
    }
}
