//! A TCP connection that may switch to TLS in the middle (NBD's STARTTLS).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

type ServerTls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;
type ClientTls = rustls::StreamOwned<rustls::ClientConnection, BufSock>;

/// A socket read through a buffer: rustls reads at most 4 KiB of records per call, and a
/// read of disk data would otherwise cost several system calls per 16 KiB record.
pub(crate) struct BufSock {
    reader: std::io::BufReader<TcpStream>,
}

impl Read for BufSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for BufSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reader.get_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.reader.get_mut().flush()
    }
}

/// Plain TCP, or TLS over it (either side).
pub(crate) enum Conn {
    Unix(std::os::unix::net::UnixStream),
    Plain(TcpStream),
    Server(Box<ServerTls>),
    Client(Box<ClientTls>),
    /// Between a plain stream and its TLS successor.
    Closed,
}

impl Conn {
    pub(crate) fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_) | Conn::Unix(_))
    }

    pub(crate) fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(u) => u.set_read_timeout(d),
            Conn::Plain(t) => t.set_read_timeout(d),
            Conn::Server(s) => s.sock.set_read_timeout(d),
            Conn::Client(c) => c.sock.reader.get_ref().set_read_timeout(d),
            Conn::Closed => Err(closed()),
        }
    }

    /// The server side of STARTTLS: the handshake completes before this returns.
    pub(crate) fn start_tls(self, config: &Arc<rustls::ServerConfig>) -> io::Result<Conn> {
        let Conn::Plain(mut tcp) = self else {
            return Err(io::Error::other("TLS is already on"));
        };
        let mut tls =
            rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        Ok(Conn::Server(Box::new(rustls::StreamOwned::new(tls, tcp))))
    }

    /// The client side of STARTTLS, in place.
    pub(crate) fn upgrade_client(
        &mut self,
        config: &Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let plain = std::mem::replace(self, Conn::Closed);
        *self = plain.connect_tls(config, name)?;
        Ok(())
    }

    fn connect_tls(
        self,
        config: &Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Conn> {
        let Conn::Plain(mut tcp) = self else {
            return Err(io::Error::other("TLS is already on"));
        };
        let mut tls =
            rustls::ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        let sock = BufSock {
            reader: std::io::BufReader::with_capacity(256 << 10, tcp),
        };
        Ok(Conn::Client(Box::new(rustls::StreamOwned::new(tls, sock))))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(u) => u.read(buf),
            Conn::Plain(t) => t.read(buf),
            Conn::Server(s) => s.read(buf),
            Conn::Client(c) => c.read(buf),
            Conn::Closed => Err(closed()),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(u) => u.write(buf),
            Conn::Plain(t) => t.write(buf),
            Conn::Server(s) => s.write(buf),
            Conn::Client(c) => c.write(buf),
            Conn::Closed => Err(closed()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(u) => u.flush(),
            Conn::Plain(t) => t.flush(),
            Conn::Server(s) => s.flush(),
            Conn::Client(c) => c.flush(),
            Conn::Closed => Err(closed()),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}
