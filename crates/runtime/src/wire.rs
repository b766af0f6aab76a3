//! JSON messages over a unix socket, one per line, with deadlines: the transport under
//! both QMP and the guest agent protocol.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};

/// Longest socket path `connect` takes directly (`sun_path` holds 108 bytes).
const MAX_DIRECT_SOCKET_PATH: usize = 100;

/// Longest message accepted from a peer; QMP answers (`query-named-block-nodes` on a long
/// chain) stay far below it.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Connects to a unix socket. A path too long for `sun_path` (deep VM folders) is reached
/// through `/proc/self/fd/<dir fd>/<name>`, which the kernel resolves without the limit.
pub(crate) fn connect(path: &Path) -> Result<UnixStream> {
    if path.as_os_str().len() <= MAX_DIRECT_SOCKET_PATH {
        return UnixStream::connect(path).map_err(|e| Error::io(path, "connect", e));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).map_err(|e| Error::io(path, "connect", e));
    };
    let dir_file = File::open(dir).map_err(|e| Error::io(dir, "open", e))?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir_file.as_raw_fd())).join(name);
    let stream = UnixStream::connect(&short).map_err(|e| Error::io(path, "connect", e));
    drop(dir_file);
    stream
}

/// One connection carrying JSON messages separated by newlines.
pub(crate) struct JsonLines {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: PathBuf,
    /// Bytes of a message not yet complete when a read timed out.
    pending: Vec<u8>,
}

impl JsonLines {
    pub(crate) fn new(stream: UnixStream, socket: &Path) -> Result<JsonLines> {
        let writer = stream
            .try_clone()
            .map_err(|e| Error::io(socket, "dup", e))?;
        Ok(JsonLines {
            reader: BufReader::new(stream),
            writer,
            socket: socket.to_path_buf(),
            pending: Vec::new(),
        })
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends raw bytes (the guest agent's 0xFF resynchronisation byte).
    pub(crate) fn send_raw(&mut self, bytes: &[u8], deadline: Instant) -> Result<()> {
        let left = remaining(deadline, &self.socket, "send")?;
        self.writer
            .set_write_timeout(Some(left))
            .and_then(|()| self.writer.write_all(bytes))
            .and_then(|()| self.writer.flush())
            .map_err(|e| Error::io(&self.socket, "write", e))
    }

    /// Sends one message.
    pub(crate) fn send(&mut self, msg: &Value, deadline: Instant) -> Result<()> {
        let mut bytes = serde_json::to_vec(msg).map_err(|e| Error::Protocol {
            socket: self.socket.clone(),
            reason: format!("cannot encode {msg}: {e}"),
        })?;
        bytes.push(b'\n');
        self.send_raw(&bytes, deadline)
    }

    /// Reads bytes up to and including `delim`, keeping a partial read for the next call
    /// when the deadline passes. Reads at most one buffer at a time, so the deadline and
    /// the size cap hold within a message: an endless line from a hostile peer neither
    /// exhausts memory nor outlives the deadline.
    fn read_until(&mut self, delim: u8, deadline: Instant, what: &str) -> Result<Vec<u8>> {
        loop {
            let left = remaining(deadline, &self.socket, what)?;
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io(&self.socket, "set timeout", e))?;
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(Error::io(&self.socket, "read", e)),
            };
            if buf.is_empty() {
                return Err(Error::Protocol {
                    socket: self.socket.clone(),
                    reason: format!("connection closed while waiting for {what}"),
                });
            }
            let (take, done) = match buf.iter().position(|&b| b == delim) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            self.pending.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if done {
                return Ok(std::mem::take(&mut self.pending));
            }
            if self.pending.len() > MAX_MESSAGE_BYTES {
                self.pending.clear();
                return Err(Error::Protocol {
                    socket: self.socket.clone(),
                    reason: format!("message longer than {MAX_MESSAGE_BYTES} bytes"),
                });
            }
        }
    }

    /// Discards input up to and including the byte `marker` (guest agent resync).
    pub(crate) fn skip_past(&mut self, marker: u8, deadline: Instant, what: &str) -> Result<()> {
        self.pending.clear();
        self.read_until(marker, deadline, what)?;
        Ok(())
    }

    /// Reads one message (a JSON object on one line; blank lines are skipped).
    pub(crate) fn recv(&mut self, deadline: Instant, what: &str) -> Result<Value> {
        loop {
            let line = self.read_until(b'\n', deadline, what)?;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
            if text.is_empty() {
                continue;
            }
            return serde_json::from_str(text).map_err(|e| Error::Protocol {
                socket: self.socket.clone(),
                reason: format!("invalid JSON while waiting for {what}: {e}: {text:.200}"),
            });
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Time left before `deadline`, or a timeout error naming `what`.
fn remaining(deadline: Instant, socket: &Path, what: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout {
            what: format!("{}: {what}", socket.display()),
            after: Duration::ZERO,
        });
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn partial_lines_survive_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = JsonLines::new(connect(&path).unwrap(), &path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"{\"a\":").unwrap();
        let short = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            client.recv(short, "x"),
            Err(Error::Timeout { .. })
        ));
        server.write_all(b" 1}\n\n{\"b\": 2}\n").unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(client.recv(later, "x").unwrap()["a"], 1);
        assert_eq!(client.recv(later, "x").unwrap()["b"], 2);
        drop(server);
        assert!(matches!(
            client.recv(later, "x"),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn long_socket_paths_connect_through_proc() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("sock");
        assert!(path.as_os_str().len() > 108);
        let dir_file = File::open(&deep).unwrap();
        let short = PathBuf::from(format!("/proc/self/fd/{}", dir_file.as_raw_fd())).join("sock");
        let _listener = UnixListener::bind(&short).unwrap();
        drop(dir_file);
        assert!(path.exists());
        connect(&path).unwrap();
    }

    #[test]
    fn issue_10_an_endless_line_is_bounded_in_memory_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        // A flood without a newline: refused at the size cap, not read on forever.
        let mut client = JsonLines::new(connect(&path).unwrap(), &path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let flood = std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            while server.write_all(&chunk).is_ok() {}
        });
        let err = client
            .recv(Instant::now() + Duration::from_secs(600), "reply")
            .unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        assert!(client.pending.capacity() <= 2 * MAX_MESSAGE_BYTES);
        drop(client);
        flood.join().unwrap();
        // An endless slow drip: the deadline holds although bytes keep coming (a read
        // that waited for the line to end would never return).
        let mut client = JsonLines::new(connect(&path).unwrap(), &path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let drip = std::thread::spawn(move || {
            while server.write_all(b"y").is_ok() {
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let err = client
            .recv(Instant::now() + Duration::from_millis(300), "reply")
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        drop(client);
        drip.join().unwrap();
    }

    #[test]
    fn error_invalid_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = JsonLines::new(connect(&path).unwrap(), &path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"not json\n").unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        let err = client.recv(later, "greeting").unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }
}
