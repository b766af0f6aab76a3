//! [`RemoteFile`]: a remote file written by position, with many write requests in flight.
//!
//! SFTP writes carry their own offset, so a writer need not wait for one answer before
//! sending the next request. [`RemoteFile`] sends each piece at once (split into requests
//! of the session's request size) and only waits when
//! [`ConnectOptions::requests_in_flight`](crate::ConnectOptions) requests are
//! outstanding, as [`Session::upload`] does. A failed request is reported by the next
//! call (or by [`RemoteFile::finish`]); the file is unusable after that.

use crate::error::{Error, Result};
use crate::session::Session;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::OpenFlags;
use std::collections::VecDeque;

type WriteTask = tokio::task::JoinHandle<std::result::Result<(), SftpError>>;

/// A remote file open for writing (created or truncated by [`Session::create_file`]).
///
/// Dropping it without [`finish`](Self::finish) abandons the outstanding requests and
/// closes the handle in the background: the remote file is then incomplete.
pub struct RemoteFile<'s> {
    session: &'s Session,
    path: String,
    handle: Option<String>,
    in_flight: VecDeque<WriteTask>,
    /// Where [`std::io::Write`] appends next.
    pos: u64,
    /// One past the highest byte written.
    end: u64,
    /// Set after the first failure: later calls fail without sending anything.
    poisoned: bool,
}

impl std::fmt::Debug for RemoteFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("path", &self.path)
            .field("end", &self.end)
            .finish()
    }
}

impl Session {
    /// Create (or truncate) the remote file `path` for writing with
    /// [`RemoteFile::write_at`] or [`std::io::Write`].
    ///
    /// # Errors
    /// [`Error::ParentMissing`], [`Error::Remote`] (permission denied...), transport errors.
    pub fn create_file(&self, path: &str) -> Result<RemoteFile<'_>> {
        let op = "create";
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let handle = self
            .block_on(self.sftp.open(path, flags, crate::types::private_file()))
            .map_err(|e| self.creation_err(op, path, self.remote_err(op, path, e), false))?
            .handle;
        Ok(RemoteFile {
            session: self,
            path: path.to_owned(),
            handle: Some(handle),
            in_flight: VecDeque::new(),
            pos: 0,
            end: 0,
            poisoned: false,
        })
    }
}

impl RemoteFile<'_> {
    /// The remote path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Write `data` at `offset`. Returns once the requests are sent (waiting only while
    /// the window of requests in flight is full); a failure of this or an earlier request
    /// may be reported by a later call.
    ///
    /// # Errors
    /// [`Error::Remote`] (disk full, quota, file too large...), [`Error::Disconnected`],
    /// [`Error::Timeout`], or [`Error::Protocol`] after an earlier failure.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_usable()?;
        let chunk = self.session.tuning.write_bytes.max(1) as usize;
        let mut at = offset;
        for piece in data.chunks(chunk) {
            self.reap(false)?;
            while self.in_flight.len() >= self.session.tuning.in_flight {
                self.wait_oldest()?;
            }
            let (sftp, handle) = (self.session.sftp.clone(), self.handle_str()?.to_owned());
            let bytes = piece.to_vec();
            self.in_flight.push_back(
                self.session
                    .spawn(async move { sftp.write(handle, at, bytes).await.map(drop) }),
            );
            at += piece.len() as u64;
        }
        if !data.is_empty() {
            self.end = self.end.max(at);
        }
        Ok(())
    }

    /// Wait for every request, make the data durable (`fsync@openssh.com` when offered)
    /// and close the file. Returns its length as written (one past the highest byte).
    ///
    /// # Errors
    /// The first failed write, fsync or close.
    pub fn finish(mut self) -> Result<u64> {
        self.check_usable()?;
        self.reap(true)?;
        let handle = self.handle.take().unwrap_or_default();
        let path = self.path.clone();
        let session = self.session;
        let synced = if session.extensions().fsync {
            session
                .block_on(session.sftp.fsync(handle.as_str()))
                .map(drop)
                .map_err(|e| session.remote_err("fsync", &path, e))
        } else {
            Ok(())
        };
        let closed = session
            .block_on(session.sftp.close(handle))
            .map(drop)
            .map_err(|e| session.remote_err("close", &path, e));
        synced?;
        closed?;
        Ok(self.end)
    }

    fn handle_str(&self) -> Result<&str> {
        self.handle.as_deref().ok_or_else(|| self.unusable())
    }

    fn unusable(&self) -> Error {
        Error::Protocol {
            location: self.session.target.location(&self.path),
            op: "write",
            detail: "an earlier write to this file failed".to_owned(),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned || self.handle.is_none() {
            return Err(self.unusable());
        }
        Ok(())
    }

    /// Collect answered requests from the front; with `all`, wait for every one.
    fn reap(&mut self, all: bool) -> Result<()> {
        while let Some(front) = self.in_flight.front() {
            if !all && !front.is_finished() {
                break;
            }
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let path = &self.path;
        let outcome = match self.session.block_on(task) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.session.write_err(path, e)),
            Err(e) => Err(Error::Protocol {
                location: self.session.target.location(path),
                op: "write",
                detail: format!("request task: {e}"),
            }),
        };
        if outcome.is_err() {
            self.poisoned = true;
            for t in self.in_flight.drain(..) {
                t.abort();
            }
        }
        outcome
    }
}

impl std::io::Write for RemoteFile<'_> {
    /// Append at the current position (the end of what this writer wrote in order).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_at(self.pos, buf)
            .map_err(std::io::Error::other)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    /// Waits for the requests in flight (it does not fsync: see [`RemoteFile::finish`]).
    fn flush(&mut self) -> std::io::Result<()> {
        self.check_usable().map_err(std::io::Error::other)?;
        self.reap(true).map_err(std::io::Error::other)
    }
}

impl Drop for RemoteFile<'_> {
    fn drop(&mut self) {
        for t in self.in_flight.drain(..) {
            t.abort();
        }
        if let Some(handle) = self.handle.take() {
            // In the background: a dead or frozen server must not hold the caller up.
            let sftp = self.session.sftp.clone();
            drop(self.session.spawn(async move {
                let _ = sftp.close(handle).await;
            }));
        }
    }
}
