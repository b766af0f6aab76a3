//! A blocking NBD server: fixed newstyle negotiation, STARTTLS (rustls), `OPT_INFO` /
//! `OPT_GO` with block sizes, structured replies, the `base:allocation` meta context, and
//! reads, writes and flushes. One thread per connection; every length a client sends is
//! checked before anything is allocated for it.
//!
//! Exports are found by name through [`Exports`]; the host agent names each export with
//! an unguessable ticket, so a name is both the disk and the right to read it, as with
//! VMware's NBD tickets. `OPT_LIST` is refused for that reason.

use crate::proto::*;
use crate::stream::Conn;
use crate::transmission::Transmission;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One disk a server can export.
pub trait Export: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether clients may write.
    fn writable(&self) -> bool {
        false
    }
    /// A handle for one connection (each connection reads through its own).
    ///
    /// # Errors
    /// The disk cannot be opened.
    fn open(&self) -> io::Result<Box<dyn Backend>>;
}

/// The data behind an export, for one connection.
pub trait Backend: Send {
    /// Fill `buf` with the bytes at `offset` (inside the export).
    ///
    /// # Errors
    /// Read errors of the disk.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Allocation of `[offset, offset + len)` as (length, `base:allocation` flags) runs,
    /// in order, covering at least one byte.
    ///
    /// # Errors
    /// Read errors of the disk's metadata.
    fn extents(&mut self, offset: u64, len: u64) -> io::Result<Vec<(u64, u32)>>;
    /// Write `data` at `offset` (writable exports only).
    ///
    /// # Errors
    /// The export is read-only, or the disk's write error.
    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    /// Make written data durable.
    ///
    /// # Errors
    /// The disk's flush error.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a server finds exports by name.
pub trait Exports: Send + Sync {
    /// The export called `name`, if it exists (and the name is still valid).
    fn find(&self, name: &str) -> Option<Arc<dyn Export>>;
}

/// How a server treats its clients.
#[derive(Clone)]
pub struct ServerConfig {
    /// TLS offered through `OPT_STARTTLS`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse every option but STARTTLS before TLS is up.
    pub require_tls: bool,
    /// How long negotiation may take, and how long a connection may stay idle.
    pub negotiation_timeout: Duration,
    /// How long a connection may sit between requests.
    pub idle_timeout: Duration,
    /// Most connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tls: None,
            require_tls: false,
            negotiation_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_connections: 64,
        }
    }
}

/// A listening server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listen on `addr` and serve `exports` on background threads.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(
        addr: SocketAddr,
        config: ServerConfig,
        exports: Arc<dyn Exports>,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(&listener, &config, &exports, &flag))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    config: &ServerConfig,
    exports: &Arc<dyn Exports>,
    stop: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= config.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("NBD: too many connections; closing a new one");
            continue;
        }
        let (config, exports, active) = (config.clone(), Arc::clone(exports), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                if let Err(e) = serve_connection(stream, &config, &*exports) {
                    tracing::info!("NBD client {peer:?}: {e}");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::warn!("NBD: cannot start a connection thread");
        }
    }
}

/// What negotiation settled.
pub(crate) struct Session {
    pub(crate) structured: bool,
    pub(crate) context: Option<u32>,
}

/// The context id of `base:allocation`.
const ALLOCATION_ID: u32 = 1;

/// Serve one client until it disconnects.
///
/// # Errors
/// Socket and TLS errors, and protocol violations that end the connection.
pub fn serve_connection(
    stream: TcpStream,
    config: &ServerConfig,
    exports: &dyn Exports,
) -> io::Result<()> {
    stream.set_write_timeout(Some(config.idle_timeout))?;
    stream.set_nodelay(true)?;
    serve_conn(Conn::Plain(stream), config, exports)
}

/// [`serve_connection`] over a Unix socket (as `qemu-nbd --socket` serves; STARTTLS is
/// refused there).
///
/// # Errors
/// As for [`serve_connection`].
pub fn serve_unix(
    stream: std::os::unix::net::UnixStream,
    config: &ServerConfig,
    exports: &dyn Exports,
) -> io::Result<()> {
    stream.set_write_timeout(Some(config.idle_timeout))?;
    serve_conn(Conn::Unix(stream), config, exports)
}

fn serve_conn(mut conn: Conn, config: &ServerConfig, exports: &dyn Exports) -> io::Result<()> {
    conn.set_read_timeout(Some(config.negotiation_timeout))?;
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.write_all(&hello)?;
    let mut flags = [0u8; 4];
    conn.read_exact(&mut flags)?;
    let no_zeroes = u32::from_be_bytes(flags) & u32::from(FLAG_NO_ZEROES) != 0;
    let mut s = Session {
        structured: false,
        context: None,
    };
    let Some((export, conn)) = negotiate(conn, config, exports, &mut s, no_zeroes)? else {
        return Ok(());
    };
    let mut conn = conn;
    conn.set_read_timeout(Some(config.idle_timeout))?;
    let backend = export.open()?;
    Transmission {
        conn: &mut conn,
        backend,
        size: export.size(),
        writable: export.writable(),
        session: &s,
        buf: Vec::new(),
    }
    .run()
}

/// Option haggling; `Some` when the client entered transmission on an export.
fn negotiate(
    mut conn: Conn,
    config: &ServerConfig,
    exports: &dyn Exports,
    s: &mut Session,
    no_zeroes: bool,
) -> io::Result<Option<(Arc<dyn Export>, Conn)>> {
    loop {
        let mut h = [0u8; 16];
        conn.read_exact(&mut h)?;
        let magic = u64::from_be_bytes(be8(&h[0..8]));
        let opt = u32::from_be_bytes(be4(&h[8..12]));
        let len = u32::from_be_bytes(be4(&h[12..16]));
        if magic != IHAVEOPT || len > MAX_OPTION {
            return Err(io::Error::other("bad option header"));
        }
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data)?;
        let tls_missing = config.require_tls && !conn.is_tls();
        match opt {
            OPT_ABORT => {
                let _ = reply(&mut conn, opt, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_STARTTLS => match (&config.tls, conn.is_tls(), data.is_empty()) {
                (Some(tls), false, true) if matches!(conn, Conn::Plain(_)) => {
                    reply(&mut conn, opt, REP_ACK, &[])?;
                    conn = conn.start_tls(tls)?;
                    // A new session: what was negotiated in clear text is forgotten.
                    *s = Session {
                        structured: false,
                        context: None,
                    };
                }
                (_, true, _) => error(&mut conn, opt, REP_ERR_INVALID, "TLS is already on")?,
                (_, _, false) => error(&mut conn, opt, REP_ERR_INVALID, "malformed request")?,
                _ => error(&mut conn, opt, REP_ERR_POLICY, "TLS is not offered here")?,
            },
            OPT_EXPORT_NAME if tls_missing => return Ok(None),
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                let Some(export) = exports.find(&name) else {
                    return Ok(None);
                };
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&export.size().to_be_bytes());
                r.extend_from_slice(&transmission_flags(&*export).to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                conn.write_all(&r)?;
                return Ok(Some((export, conn)));
            }
            _ if tls_missing => error(&mut conn, opt, REP_ERR_TLS_REQD, "TLS is required")?,
            OPT_STRUCTURED_REPLY if data.is_empty() => {
                s.structured = true;
                reply(&mut conn, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                if let Some(export) = info(&mut conn, opt, &data, exports)? {
                    if opt == OPT_GO {
                        return Ok(Some((export, conn)));
                    }
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => meta_context(&mut conn, opt, &data, s)?,
            OPT_LIST => error(&mut conn, opt, REP_ERR_POLICY, "exports are not listed")?,
            _ => error(&mut conn, opt, REP_ERR_UNSUP, "option not supported")?,
        }
    }
}

fn transmission_flags(export: &dyn Export) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH;
    if export.writable() {
        return f;
    }
    // Read-only: every connection sees the same bytes.
    f |= TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN;
    f
}

/// `OPT_INFO` / `OPT_GO`: the export's size, flags and block sizes.
fn info(
    conn: &mut Conn,
    opt: u32,
    data: &[u8],
    exports: &dyn Exports,
) -> io::Result<Option<Arc<dyn Export>>> {
    let Some((name, rest)) = take_str32(data) else {
        error(conn, opt, REP_ERR_INVALID, "malformed request")?;
        return Ok(None);
    };
    let asked = rest
        .get(..2)
        .map(|n| u16::from_be_bytes([n[0], n[1]]) as usize);
    if asked.is_none_or(|n| rest.len() != 2 + 2 * n) {
        error(conn, opt, REP_ERR_INVALID, "malformed request")?;
        return Ok(None);
    }
    let Some(export) = exports.find(&name) else {
        error(conn, opt, REP_ERR_UNKNOWN, "no such export")?;
        return Ok(None);
    };
    let mut e = Vec::with_capacity(12);
    e.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    e.extend_from_slice(&export.size().to_be_bytes());
    e.extend_from_slice(&transmission_flags(&*export).to_be_bytes());
    reply(conn, opt, REP_INFO, &e)?;
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&4096u32.to_be_bytes());
    b.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    reply(conn, opt, REP_INFO, &b)?;
    reply(conn, opt, REP_ACK, &[])?;
    Ok(Some(export))
}

/// `OPT_LIST_META_CONTEXT` / `OPT_SET_META_CONTEXT`: only `base:allocation` exists.
fn meta_context(conn: &mut Conn, opt: u32, data: &[u8], s: &mut Session) -> io::Result<()> {
    if opt == OPT_SET_META_CONTEXT && !s.structured {
        return error(conn, opt, REP_ERR_INVALID, "structured replies first");
    }
    let Some(queries) = parse_queries(data) else {
        return error(conn, opt, REP_ERR_INVALID, "malformed request");
    };
    let wanted = (opt == OPT_LIST_META_CONTEXT && queries.is_empty())
        || queries
            .iter()
            .any(|q| q == BASE_ALLOCATION || (opt == OPT_LIST_META_CONTEXT && q == "base:"));
    if opt == OPT_SET_META_CONTEXT {
        s.context = wanted.then_some(ALLOCATION_ID);
    }
    if wanted {
        let mut r = ALLOCATION_ID.to_be_bytes().to_vec();
        r.extend_from_slice(BASE_ALLOCATION.as_bytes());
        reply(conn, opt, REP_META_CONTEXT, &r)?;
    }
    reply(conn, opt, REP_ACK, &[])
}

/// The export name (ignored: one set of contexts for all) and the queries.
fn parse_queries(data: &[u8]) -> Option<Vec<String>> {
    let (_, rest) = take_str32(data)?;
    let n = u32::from_be_bytes(be4(rest.get(..4)?));
    let mut rest = &rest[4..];
    let mut out = Vec::new();
    for _ in 0..n {
        let (q, r) = take_str32(rest)?;
        out.push(q);
        rest = r;
    }
    rest.is_empty().then_some(out)
}

fn take_str32(data: &[u8]) -> Option<(String, &[u8])> {
    let n = u32::from_be_bytes(be4(data.get(..4)?)) as usize;
    let s = data.get(4..4usize.checked_add(n)?)?;
    Some((String::from_utf8(s.to_vec()).ok()?, &data[4 + n..]))
}

fn reply(conn: &mut Conn, opt: u32, rtype: u32, data: &[u8]) -> io::Result<()> {
    let mut r = Vec::with_capacity(20 + data.len());
    r.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&opt.to_be_bytes());
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    conn.write_all(&r)
}

fn error(conn: &mut Conn, opt: u32, rtype: u32, message: &str) -> io::Result<()> {
    reply(conn, opt, rtype, message.as_bytes())
}

pub(crate) fn be8(b: &[u8]) -> [u8; 8] {
    b.try_into().unwrap_or_default()
}

pub(crate) fn be4(b: &[u8]) -> [u8; 4] {
    b.try_into().unwrap_or_default()
}
