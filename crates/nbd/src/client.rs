//! A blocking NBD client over a Unix socket or TCP (with STARTTLS): handshake, meta
//! contexts, block status, reads and writes.

use crate::proto::*;
use crate::stream::Conn;
use crate::{Error, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A run of the export in one state of a meta context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// The context's flags for the run (for `qemu:dirty-bitmap:*`, bit 0 = dirty; for
    /// `base:allocation`, bit 0 = hole, bit 1 = zero).
    pub flags: u32,
}

/// A connection to one export, in transmission phase.
pub struct Client {
    sock: Conn,
    size: u64,
    /// The context id of the one meta context negotiated.
    context: u32,
    cookie: u64,
    read_only: bool,
}

/// TLS for a TCP connection: the client configuration (how the server's certificate is
/// checked) and the name the certificate must carry.
#[derive(Clone)]
pub struct Tls {
    /// rustls client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The server's name as the certificate check sees it.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Client {
    /// Connects to the server at `socket`, opens `export` and negotiates the meta
    /// context `context` (for example `qemu:dirty-bitmap:vcb-ctk-1`).
    ///
    /// # Errors
    /// Socket errors; [`Error::Refused`] when the server lacks the export or context;
    /// [`Error::Protocol`] for a server that breaks the protocol.
    pub fn connect(socket: &Path, export: &str, context: &str) -> Result<Client> {
        let sock = UnixStream::connect(socket).map_err(io("connect"))?;
        Client::over(sock, export, context)
    }

    /// [`connect`](Client::connect) over a connected stream.
    ///
    /// # Errors
    /// As for [`connect`](Client::connect).
    pub fn over(sock: UnixStream, export: &str, context: &str) -> Result<Client> {
        Client::negotiate(Conn::Unix(sock), None, export, context)
    }

    /// Connects over TCP to `addr`, switching to TLS first when `tls` is given (then the
    /// server must accept STARTTLS), opens `export` and negotiates `context`
    /// (`base:allocation` for the allocation of a disk).
    ///
    /// # Errors
    /// As for [`connect`](Client::connect), and TLS errors (a certificate that fails
    /// the check).
    pub fn connect_tcp(
        addr: std::net::SocketAddr,
        tls: Option<&Tls>,
        export: &str,
        context: &str,
    ) -> Result<Client> {
        let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
            .map_err(io("connect"))?;
        tcp.set_nodelay(true).map_err(io("connect"))?;
        Client::negotiate(Conn::Plain(tcp), tls, export, context)
    }

    fn negotiate(sock: Conn, tls: Option<&Tls>, export: &str, context: &str) -> Result<Client> {
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io("set timeout"))?;
        let mut c = Client {
            sock,
            size: 0,
            context: 0,
            cookie: 1,
            read_only: false,
        };
        c.handshake()?;
        if let Some(tls) = tls {
            c.option(OPT_STARTTLS, &[], "STARTTLS")?;
            c.sock
                .upgrade_client(&tls.config, tls.server_name.clone())
                .map_err(io("TLS handshake"))?;
        }
        c.option(OPT_STRUCTURED_REPLY, &[], "structured replies")?;
        let mut data = Vec::new();
        put_str32(&mut data, export);
        data.extend_from_slice(&1u32.to_be_bytes());
        put_str32(&mut data, context);
        let replies = c.option(OPT_SET_META_CONTEXT, &data, "meta context")?;
        c.context = replies
            .iter()
            .find(|(t, d)| *t == REP_META_CONTEXT && d.get(4..) == Some(context.as_bytes()))
            .and_then(|(_, d)| Some(u32::from_be_bytes(d.get(..4)?.try_into().ok()?)))
            .ok_or_else(|| Error::Refused {
                what: format!("meta context {context}"),
                message: "not offered for this export".into(),
            })?;
        let mut go = Vec::new();
        put_str32(&mut go, export);
        go.extend_from_slice(&0u16.to_be_bytes());
        for (t, d) in c.option(OPT_GO, &go, "export")? {
            if t == REP_INFO && d.len() >= 12 && u16::from_be_bytes([d[0], d[1]]) == INFO_EXPORT {
                c.size = u64::from_be_bytes(d[2..10].try_into().unwrap_or_default());
                c.read_only = u16::from_be_bytes([d[10], d[11]]) & TFLAG_READ_ONLY != 0;
            }
        }
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the server refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn handshake(&mut self) -> Result<()> {
        let mut b = [0u8; 18];
        self.sock.read_exact(&mut b).map_err(io("read greeting"))?;
        let magic = u64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
        let opt = u64::from_be_bytes(b[8..16].try_into().unwrap_or_default());
        let flags = u16::from_be_bytes([b[16], b[17]]);
        if magic != NBDMAGIC || opt != IHAVEOPT {
            return Err(Error::Protocol("not a newstyle NBD server".into()));
        }
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::Protocol(
                "server lacks fixed newstyle negotiation".into(),
            ));
        }
        let mine = u32::from(flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        self.sock
            .write_all(&mine.to_be_bytes())
            .map_err(io("send client flags"))
    }

    /// Sends option `opt` and collects its replies up to the final ACK.
    fn option(&mut self, opt: u32, data: &[u8], what: &str) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut req = Vec::with_capacity(16 + data.len());
        req.extend_from_slice(&IHAVEOPT.to_be_bytes());
        req.extend_from_slice(&opt.to_be_bytes());
        req.extend_from_slice(&(data.len() as u32).to_be_bytes());
        req.extend_from_slice(data);
        self.sock.write_all(&req).map_err(io("send option"))?;
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.sock
                .read_exact(&mut h)
                .map_err(io("read option reply"))?;
            let magic = u64::from_be_bytes(h[0..8].try_into().unwrap_or_default());
            let ropt = u32::from_be_bytes(h[8..12].try_into().unwrap_or_default());
            let rtype = u32::from_be_bytes(h[12..16].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap_or_default());
            if magic != REPLY_MAGIC || ropt != opt || len > MAX_OPTION_REPLY {
                return Err(Error::Protocol(format!("bad reply to the {what} option")));
            }
            let mut d = vec![0u8; len as usize];
            self.sock
                .read_exact(&mut d)
                .map_err(io("read option reply"))?;
            if rtype & REP_ERR_BIT != 0 {
                return Err(Error::Refused {
                    what: what.to_owned(),
                    message: String::from_utf8_lossy(&d).into_owned(),
                });
            }
            if rtype == REP_ACK {
                return Ok(out);
            }
            if out.len() > 1024 {
                return Err(Error::Protocol(format!(
                    "endless replies to the {what} option"
                )));
            }
            out.push((rtype, d));
        }
    }

    /// The runs of the negotiated context over `[offset, offset + len)`, merged, in order.
    ///
    /// # Errors
    /// Socket errors; [`Error::Refused`] for an error reply; [`Error::Protocol`].
    pub fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                Error::Protocol(format!("range past the export's {} bytes", self.size))
            })?;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let want = (end - pos).min(STATUS_PIECE);
            let got = self.status_piece(pos, want)?;
            let mut advanced = 0u64;
            for (l, flags) in got {
                let l = u64::from(l).min(want - advanced);
                if l == 0 {
                    break;
                }
                push(
                    &mut out,
                    Extent {
                        offset: pos + advanced,
                        len: l,
                        flags,
                    },
                );
                advanced += l;
            }
            if advanced == 0 {
                return Err(Error::Protocol("block status made no progress".into()));
            }
            pos += advanced;
        }
        Ok(out)
    }

    /// One NBD_CMD_BLOCK_STATUS: the (length, flags) descriptors of our context.
    fn status_piece(&mut self, offset: u64, len: u64) -> Result<Vec<(u32, u32)>> {
        let cookie = self.cookie;
        self.cookie += 1;
        self.request(CMD_BLOCK_STATUS, cookie, offset, len)?;
        let mut descriptors = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.sock.read_exact(&mut h).map_err(io("read reply"))?;
            let magic = u32::from_be_bytes(h[0..4].try_into().unwrap_or_default());
            if magic == SIMPLE_REPLY_MAGIC {
                let err = u32::from_be_bytes(h[4..8].try_into().unwrap_or_default());
                return Err(Error::Refused {
                    what: "block status".into(),
                    message: format!("error {err}"),
                });
            }
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let rtype = u16::from_be_bytes([h[6], h[7]]);
            let rcookie = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
            let plen = u32::from_be_bytes(h[16..20].try_into().unwrap_or_default());
            if magic != STRUCTURED_REPLY_MAGIC || rcookie != cookie || plen > MAX_CHUNK {
                return Err(Error::Protocol("bad structured reply".into()));
            }
            let mut p = vec![0u8; plen as usize];
            self.sock.read_exact(&mut p).map_err(io("read reply"))?;
            if rtype & REPLY_TYPE_ERROR_BIT != 0 {
                let msg = p.get(6..).map(String::from_utf8_lossy).unwrap_or_default();
                return Err(Error::Refused {
                    what: "block status".into(),
                    message: msg.into_owned(),
                });
            }
            if rtype == REPLY_TYPE_BLOCK_STATUS && p.len() >= 4 {
                let id = u32::from_be_bytes(p[0..4].try_into().unwrap_or_default());
                if id == self.context {
                    for d in p[4..].chunks_exact(8) {
                        let l = u32::from_be_bytes(d[0..4].try_into().unwrap_or_default());
                        let f = u32::from_be_bytes(d[4..8].try_into().unwrap_or_default());
                        descriptors.push((l, f));
                    }
                }
            } else if rtype != REPLY_TYPE_NONE && rtype != REPLY_TYPE_BLOCK_STATUS {
                return Err(Error::Protocol(format!("unexpected reply type {rtype}")));
            }
            if flags & REPLY_FLAG_DONE != 0 {
                return Ok(descriptors);
            }
        }
    }

    fn request(&mut self, cmd: u16, cookie: u64, offset: u64, len: u64) -> Result<()> {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&cmd.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        self.sock.write_all(&r).map_err(io("send request"))
    }

    /// Fill `buf` with the export's bytes at `offset`.
    ///
    /// # Errors
    /// A range past the export; socket errors; the server's error reply.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_PAYLOAD as usize);
            let at = offset + done as u64;
            self.read_piece(at, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Write `data` at `offset`.
    ///
    /// # Errors
    /// A range past the export; socket errors; the server's error reply.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        for (i, piece) in data.chunks(MAX_PAYLOAD as usize).enumerate() {
            let cookie = self.next_cookie();
            let at = offset + (i as u64) * u64::from(MAX_PAYLOAD);
            self.request(CMD_WRITE, cookie, at, piece.len() as u64)?;
            self.sock.write_all(piece).map_err(io("send data"))?;
            self.reply(cookie, "write", None)?;
        }
        Ok(())
    }

    /// Ask the server to make written data durable.
    ///
    /// # Errors
    /// Socket errors; the server's error reply.
    pub fn flush(&mut self) -> Result<()> {
        let cookie = self.next_cookie();
        self.request(CMD_FLUSH, cookie, 0, 0)?;
        self.reply(cookie, "flush", None)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::Protocol(format!(
                "range past the export's {} bytes",
                self.size
            ))),
        }
    }

    fn next_cookie(&mut self) -> u64 {
        self.cookie += 1;
        self.cookie
    }

    fn read_piece(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cookie = self.next_cookie();
        self.request(CMD_READ, cookie, offset, buf.len() as u64)?;
        self.reply(cookie, "read", Some((offset, buf)))
    }

    /// Reads the reply to `cookie`: a simple reply (followed by the data of a read) or
    /// structured chunks up to the last one. A read's data (`target`: the request's
    /// offset and buffer) is read straight into the buffer.
    fn reply(
        &mut self,
        cookie: u64,
        what: &str,
        mut target: Option<(u64, &mut [u8])>,
    ) -> Result<()> {
        loop {
            let mut h = [0u8; 16];
            self.sock.read_exact(&mut h).map_err(io("read reply"))?;
            let magic = u32::from_be_bytes(h[0..4].try_into().unwrap_or_default());
            let rcookie = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
            if magic == SIMPLE_REPLY_MAGIC {
                let err = u32::from_be_bytes(h[4..8].try_into().unwrap_or_default());
                if rcookie != cookie {
                    return Err(Error::Protocol("reply to another request".into()));
                }
                if err != 0 {
                    return Err(refused(what, err));
                }
                if let Some((_, buf)) = target {
                    self.sock.read_exact(buf).map_err(io("read data"))?;
                }
                return Ok(());
            }
            let mut rest = [0u8; 4];
            self.sock.read_exact(&mut rest).map_err(io("read reply"))?;
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let rtype = u16::from_be_bytes([h[6], h[7]]);
            let plen = u32::from_be_bytes(rest) as usize;
            if magic != STRUCTURED_REPLY_MAGIC || rcookie != cookie {
                return Err(Error::Protocol("bad structured reply".into()));
            }
            match rtype {
                REPLY_TYPE_NONE if plen == 0 => {}
                REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                    let Some((base, buf)) = target.as_mut() else {
                        return Err(Error::Protocol(format!("data in the reply to {what}")));
                    };
                    self.read_chunk(rtype, plen, *base, buf)?;
                }
                t if t & REPLY_TYPE_ERROR_BIT != 0 && plen <= MAX_OPTION_REPLY as usize => {
                    let mut p = vec![0u8; plen];
                    self.sock.read_exact(&mut p).map_err(io("read reply"))?;
                    let code = p
                        .get(..4)
                        .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
                    let msg = p.get(6..).map(String::from_utf8_lossy).unwrap_or_default();
                    return Err(Error::Refused {
                        what: what.to_owned(),
                        message: format!("error {code}: {msg}"),
                    });
                }
                _ => return Err(Error::Protocol(format!("unexpected reply type {rtype}"))),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                return Ok(());
            }
        }
    }

    /// One OFFSET_DATA or OFFSET_HOLE chunk of `plen` bytes into `buf` (which holds the
    /// request starting at `base`).
    fn read_chunk(&mut self, rtype: u16, plen: usize, base: u64, buf: &mut [u8]) -> Result<()> {
        let outside = || Error::Protocol("read reply outside the request".into());
        let mut at = [0u8; 8];
        if plen < 8 {
            return Err(outside());
        }
        self.sock.read_exact(&mut at).map_err(io("read reply"))?;
        let rel = u64::from_be_bytes(at)
            .checked_sub(base)
            .ok_or_else(outside)? as usize;
        let n = if rtype == REPLY_TYPE_OFFSET_DATA {
            plen - 8
        } else {
            let mut len = [0u8; 4];
            if plen != 12 {
                return Err(Error::Protocol("malformed hole chunk".into()));
            }
            self.sock.read_exact(&mut len).map_err(io("read reply"))?;
            u32::from_be_bytes(len) as usize
        };
        let dst = buf
            .get_mut(rel..rel.checked_add(n).ok_or_else(outside)?)
            .ok_or_else(outside)?;
        if rtype == REPLY_TYPE_OFFSET_DATA {
            self.sock.read_exact(dst).map_err(io("read data"))
        } else {
            dst.fill(0);
            Ok(())
        }
    }

    /// Ends the session politely.
    pub fn close(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, 0);
    }
}

fn put_str32(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

fn push(out: &mut Vec<Extent>, e: Extent) {
    match out.last_mut() {
        Some(last) if last.flags == e.flags && last.offset + last.len == e.offset => {
            last.len += e.len
        }
        _ => out.push(e),
    }
}

fn refused(what: &str, errno: u32) -> Error {
    let text = match errno {
        EPERM => "operation not permitted".to_owned(),
        EIO => "I/O error".to_owned(),
        EINVAL => "invalid request".to_owned(),
        ENOSPC => "no space left".to_owned(),
        n => format!("error {n}"),
    };
    Error::Refused {
        what: what.to_owned(),
        message: text,
    }
}
