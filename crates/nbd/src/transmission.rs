//! The server's transmission phase: requests in, replies out, one at a time.

use crate::proto::*;
use crate::server::{be4, be8, Backend, Session};
use crate::stream::Conn;
use std::io::{self, Read, Write};

/// Most `base:allocation` descriptors sent for one request.
const MAX_DESCRIPTORS: usize = 8192;

pub(crate) struct Transmission<'a> {
    pub(crate) conn: &'a mut Conn,
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) size: u64,
    pub(crate) writable: bool,
    pub(crate) session: &'a Session,
    /// Reply buffer, reused between requests.
    pub(crate) buf: Vec<u8>,
}

struct Request {
    flags: u16,
    cmd: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

impl Transmission<'_> {
    pub(crate) fn run(mut self) -> io::Result<()> {
        loop {
            let mut h = [0u8; 28];
            match self.conn.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            if u32::from_be_bytes(be4(&h[0..4])) != REQUEST_MAGIC {
                return Err(io::Error::other("bad request magic"));
            }
            let r = Request {
                flags: u16::from_be_bytes([h[4], h[5]]),
                cmd: u16::from_be_bytes([h[6], h[7]]),
                cookie: u64::from_be_bytes(be8(&h[8..16])),
                offset: u64::from_be_bytes(be8(&h[16..24])),
                len: u32::from_be_bytes(be4(&h[24..28])),
            };
            match r.cmd {
                CMD_DISC => return Ok(()),
                CMD_READ => self.read(&r)?,
                CMD_WRITE => self.write(&r)?,
                CMD_FLUSH => {
                    let result = self.backend.flush().map_err(|e| errno(&e));
                    self.done(&r, result)?;
                }
                CMD_BLOCK_STATUS => self.block_status(&r)?,
                _ => self.done(&r, Err(EINVAL))?,
            }
        }
    }

    fn in_range(&self, r: &Request) -> bool {
        r.offset
            .checked_add(u64::from(r.len))
            .is_some_and(|end| end <= self.size)
    }

    fn read(&mut self, r: &Request) -> io::Result<()> {
        if r.len > MAX_PAYLOAD || !self.in_range(r) {
            return self.done(r, Err(EINVAL));
        }
        let head = if self.session.structured { 28 } else { 16 };
        let len = r.len as usize;
        self.buf.resize(head + len, 0);
        if let Err(e) = self.backend.read_at(r.offset, &mut self.buf[head..]) {
            tracing::warn!("NBD read at {}: {e}", r.offset);
            return self.done(r, Err(errno(&e)));
        }
        if self.session.structured {
            let mut h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + r.len);
            h.extend_from_slice(&r.offset.to_be_bytes());
            self.buf[..28].copy_from_slice(&h);
        } else {
            let h = simple_header(0, r.cookie);
            self.buf[..16].copy_from_slice(&h);
        }
        self.conn.write_all(&self.buf)?;
        self.shrink();
        Ok(())
    }

    fn write(&mut self, r: &Request) -> io::Result<()> {
        if r.len > MAX_PAYLOAD {
            // The payload cannot be skipped safely: end the connection.
            return Err(io::Error::other("write larger than the advertised maximum"));
        }
        self.buf.resize(r.len as usize, 0);
        self.conn.read_exact(&mut self.buf)?;
        let result = if !self.writable {
            Err(EPERM)
        } else if !self.in_range(r) {
            Err(ENOSPC)
        } else {
            self.backend
                .write_at(r.offset, &self.buf)
                .map_err(|e| errno(&e))
        };
        self.shrink();
        self.done(r, result)
    }

    fn block_status(&mut self, r: &Request) -> io::Result<()> {
        let Some(id) = self.session.context.filter(|_| self.session.structured) else {
            return self.done(r, Err(EINVAL));
        };
        if r.len == 0 || r.offset >= self.size {
            return self.done(r, Err(EINVAL));
        }
        let len = u64::from(r.len).min(self.size - r.offset);
        let runs = match self.backend.extents(r.offset, len) {
            Ok(runs) if !runs.is_empty() => runs,
            Ok(_) => return self.done(r, Err(EIO)),
            Err(e) => return self.done(r, Err(errno(&e))),
        };
        let max = if r.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_DESCRIPTORS
        };
        let mut body = id.to_be_bytes().to_vec();
        for (l, flags) in runs.into_iter().take(max) {
            // A run longer than a descriptor can say ends the reply (the client asks again
            // from where it stops).
            let (l, last) = match u32::try_from(l) {
                Ok(l) => (l, false),
                Err(_) => (!4095u32, true),
            };
            if l == 0 {
                break;
            }
            body.extend_from_slice(&l.to_be_bytes());
            body.extend_from_slice(&flags.to_be_bytes());
            if last {
                break;
            }
        }
        let mut out = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            r.cookie,
            body.len() as u32,
        );
        out.extend_from_slice(&body);
        self.conn.write_all(&out)
    }

    /// A reply without data: success, or the error `Err(errno)`.
    fn done(&mut self, r: &Request, result: Result<(), u32>) -> io::Result<()> {
        let code = result.err().unwrap_or(0);
        if !self.session.structured || code == 0 {
            if self.session.structured {
                let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, 0);
                return self.conn.write_all(&h);
            }
            return self.conn.write_all(&simple_header(code, r.cookie));
        }
        let msg: &[u8] = match code {
            EPERM => b"operation not permitted (read-only export)",
            EINVAL => b"invalid request",
            ENOSPC => b"no space left (past the end of the export)",
            _ => b"I/O error",
        };
        let mut h = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            r.cookie,
            6 + msg.len() as u32,
        );
        h.extend_from_slice(&code.to_be_bytes());
        h.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        h.extend_from_slice(msg);
        self.conn.write_all(&h)
    }

    /// Keep the buffer for the next request unless a large one grew it.
    fn shrink(&mut self) {
        if self.buf.capacity() > (8 << 20) {
            self.buf = Vec::new();
        }
    }
}

fn chunk_header(flags: u16, rtype: u16, cookie: u64, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(28);
    h.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&rtype.to_be_bytes());
    h.extend_from_slice(&cookie.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn simple_header(error: u32, cookie: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h
}

fn errno(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::PermissionDenied => EPERM,
        io::ErrorKind::InvalidInput => EINVAL,
        io::ErrorKind::StorageFull => ENOSPC,
        _ => EIO,
    }
}
