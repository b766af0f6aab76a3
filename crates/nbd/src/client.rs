//! A blocking NBD client over a Unix socket: handshake, meta contexts, block status.

use crate::proto::*;
use crate::{Error, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
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
    sock: UnixStream,
    size: u64,
    /// The context id of the one meta context negotiated.
    context: u32,
    cookie: u64,
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
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io("set timeout"))?;
        let mut c = Client {
            sock,
            size: 0,
            context: 0,
            cookie: 1,
        };
        c.handshake()?;
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
            }
        }
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
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
