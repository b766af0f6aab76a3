//! Streaming uploads and downloads with many SFTP requests in flight.
//!
//! SFTP answers each read or write request separately, so waiting for one answer before
//! sending the next request caps throughput at one request per round trip. Like
//! OpenSSH's `sftp` (64 requests of 32 KiB), both directions keep up to
//! [`ConnectOptions::requests_in_flight`](crate::ConnectOptions) requests outstanding
//! and consume the answers in order, so data reaches the local writer in order and
//! progress counts only what the server confirmed.

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::session::Session;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::ops::ControlFlow;

type ReadReply = std::result::Result<Vec<u8>, SftpError>;

impl Session {
    /// Stream `reader` into the remote file `remote_path` (created or truncated), then
    /// fsync it (when the server offers `fsync@openssh.com`) and close it. Returns the
    /// bytes written. The file is written in place: callers wanting atomicity upload to a
    /// temporary name and [`rename`](Self::rename).
    ///
    /// # Errors
    /// [`Error::ParentMissing`], [`Error::Remote`] (permission denied, disk full...),
    /// [`Error::LocalStream`] when `reader` fails, [`Error::Cancelled`],
    /// [`Error::Disconnected`], [`Error::Timeout`]. The remote file is then incomplete.
    pub fn upload(
        &self,
        mut reader: impl Read,
        remote_path: &str,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let op = "upload";
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let handle = self
            .block_on(
                self.sftp
                    .open(remote_path, flags, crate::types::private_file()),
            )
            .map_err(|e| {
                self.creation_err(op, remote_path, self.remote_err(op, remote_path, e), false)
            })?
            .handle;
        progress.start(None);
        let written =
            self.block_on(self.write_pipelined(&mut reader, &handle, remote_path, progress));
        let synced = written.and_then(|n| {
            if self.extensions().fsync {
                self.block_on(self.sftp.fsync(handle.as_str()))
                    .map_err(|e| self.remote_err("fsync", remote_path, e))?;
            }
            Ok(n)
        });
        let closed = self.close_handle(handle, remote_path, synced.as_ref().err());
        let total = synced?;
        closed?;
        progress.finish();
        Ok(total)
    }

    /// Stream the remote file `remote_path` into `writer` (flushed at the end). Returns the
    /// bytes written.
    ///
    /// # Errors
    /// [`Error::Remote`] (`NotFound`, permission denied), [`Error::LocalStream`] when
    /// `writer` fails, [`Error::Cancelled`], [`Error::Disconnected`], [`Error::Timeout`],
    /// [`Error::Protocol`] for a server sending more than asked.
    pub fn download(
        &self,
        remote_path: &str,
        writer: impl Write,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        self.download_at_most(remote_path, writer, None, progress)
    }

    /// [`download`](Session::download) of at most `max_bytes` (the size a listing
    /// stated): a server that offers more is refused instead of read on.
    ///
    /// # Errors
    /// As for [`download`](Session::download); [`Error::Protocol`] when the file holds
    /// more than `max_bytes`.
    pub fn download_at_most(
        &self,
        remote_path: &str,
        mut writer: impl Write,
        max_bytes: Option<u64>,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let op = "download";
        let handle = self
            .block_on(
                self.sftp
                    .open(remote_path, OpenFlags::READ, FileAttributes::empty()),
            )
            .map_err(|e| self.remote_err(op, remote_path, e))?
            .handle;
        let size = self
            .block_on(self.sftp.fstat(handle.as_str()))
            .ok()
            .and_then(|a| a.attrs.size);
        progress.start(size);
        let read = self.block_on(self.read_pipelined(
            &handle,
            size,
            max_bytes,
            &mut writer,
            remote_path,
            progress,
        ));
        let closed = self.close_handle(handle, remote_path, read.as_ref().err());
        let total = read?;
        writer.flush().map_err(|source| Error::LocalStream {
            location: self.target.location(remote_path),
            op,
            source,
        })?;
        closed?;
        progress.finish();
        Ok(total)
    }

    async fn write_pipelined(
        &self,
        reader: &mut dyn Read,
        handle: &str,
        path: &str,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let chunk_bytes = self.tuning.write_bytes as usize;
        let mut in_flight = InFlight::default();
        let (mut offset, mut acked, mut eof) = (0u64, 0u64, false);
        loop {
            while !eof && in_flight.len() < self.tuning.in_flight {
                let data =
                    read_chunk(reader, chunk_bytes).map_err(|source| Error::LocalStream {
                        location: self.target.location(path),
                        op: "upload",
                        source,
                    })?;
                if data.is_empty() {
                    eof = true;
                    break;
                }
                let len = data.len() as u64;
                let (sftp, handle, at) = (self.sftp.clone(), handle.to_owned(), offset);
                in_flight.push(async move { sftp.write(handle, at, data).await.map(|_| len) });
                offset += len;
            }
            let Some(reply) = in_flight.next().await else {
                break;
            };
            let n = self
                .joined(reply, "write", path)?
                .map_err(|e| self.write_err(path, e))?;
            acked += n;
            self.advance(progress, n, "upload", path)?;
        }
        Ok(acked)
    }

    async fn read_pipelined(
        &self,
        handle: &str,
        size: Option<u64>,
        max_bytes: Option<u64>,
        writer: &mut dyn Write,
        path: &str,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let chunk = self.tuning.read_bytes;
        // Read up to the size fstat reported, then probe once more for growth or EOF.
        let cap = max_bytes.unwrap_or(u64::MAX);
        let mut limit = size.unwrap_or(u64::MAX).min(cap);
        let mut in_flight = InFlight::default();
        let (mut next, mut written) = (0u64, 0u64);
        loop {
            while in_flight.len() < self.tuning.in_flight && next < limit {
                in_flight.push(self.read_request(handle, next, chunk));
                next += u64::from(chunk);
            }
            let (at, len, reply) = match in_flight.next().await {
                Some(done) => self.joined(done, "read", path)?,
                None => self.read_request(handle, next, chunk).await,
            };
            let data = match reply {
                Ok(data) => data,
                Err(e) if is_eof(&e) => return Ok(written),
                Err(e) => return Err(self.remote_err("read", path, e)),
            };
            if at >= limit {
                if at >= cap {
                    return Err(Error::Protocol {
                        location: self.target.location(path),
                        op: "download",
                        detail: format!("the server sends more than the {cap} bytes it stated"),
                    });
                }
                // The probe found data: the file grew since fstat; read on until EOF.
                limit = cap;
                next = at + u64::from(len);
            }
            let got = self.deliver(handle, at, len, data, writer, path).await?;
            written += got;
            self.advance(progress, got, "download", path)?;
            if got < u64::from(len) {
                return Ok(written);
            }
        }
    }

    /// The value of a finished request task; a task that panicked or was aborted is a
    /// protocol-level failure.
    fn joined<T>(
        &self,
        joined: std::result::Result<T, tokio::task::JoinError>,
        op: &'static str,
        path: &str,
    ) -> Result<T> {
        joined.map_err(|e| Error::Protocol {
            location: self.target.location(path),
            op,
            detail: format!("request task: {e}"),
        })
    }

    fn read_request(
        &self,
        handle: &str,
        at: u64,
        len: u32,
    ) -> impl Future<Output = (u64, u32, ReadReply)> + 'static {
        let (sftp, handle) = (self.sftp.clone(), handle.to_owned());
        async move { (at, len, sftp.read(handle, at, len).await.map(|d| d.data)) }
    }

    /// Write one chunk's `data` and fetch the rest of the chunk if the server sent it
    /// short. Returns the bytes written; fewer than `len` means the file ended.
    async fn deliver(
        &self,
        handle: &str,
        at: u64,
        len: u32,
        mut data: Vec<u8>,
        writer: &mut dyn Write,
        path: &str,
    ) -> Result<u64> {
        let location = || self.target.location(path);
        let mut done = 0u64;
        loop {
            let got = data.len() as u64;
            if got == 0 {
                return Ok(done);
            }
            if done + got > u64::from(len) {
                let detail = format!("asked for {len} bytes at {at:#x}, got {}", done + got);
                return Err(Error::Protocol {
                    location: location(),
                    op: "read",
                    detail,
                });
            }
            writer
                .write_all(&data)
                .map_err(|source| Error::LocalStream {
                    location: location(),
                    op: "download",
                    source,
                })?;
            done += got;
            if done == u64::from(len) {
                return Ok(done);
            }
            // A short read (not EOF): ask for the remainder of this chunk before going on.
            let rest = u32::try_from(u64::from(len) - done).unwrap_or(len);
            data = match self.sftp.read(handle, at + done, rest).await {
                Ok(d) => d.data,
                Err(e) if is_eof(&e) => return Ok(done),
                Err(e) => return Err(self.remote_err("read", path, e)),
            };
        }
    }

    /// Close a file handle, unless the connection is already known to be gone (a dead or
    /// frozen server would only make the close fail or wait for another timeout).
    fn close_handle(&self, handle: String, path: &str, failure: Option<&Error>) -> Result<()> {
        if matches!(
            failure,
            Some(Error::Disconnected { .. } | Error::Timeout { .. })
        ) {
            return Ok(());
        }
        self.block_on(self.sftp.close(handle))
            .map(drop)
            .map_err(|e| self.remote_err("close", path, e))
    }

    fn advance(
        &self,
        progress: &mut dyn Progress,
        bytes: u64,
        op: &'static str,
        path: &str,
    ) -> Result<()> {
        match progress.advance(bytes) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Error::Cancelled {
                location: self.target.location(path),
                op,
            }),
        }
    }
}

/// Requests sent and not yet answered, oldest first. Each runs as its own task so it is
/// sent at once; dropping the queue (on error or cancel) aborts what is left.
struct InFlight<T>(VecDeque<tokio::task::JoinHandle<T>>);

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight(VecDeque::new())
    }
}

impl<T: Send + 'static> InFlight<T> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn push(&mut self, request: impl Future<Output = T> + Send + 'static) {
        self.0.push_back(tokio::spawn(request));
    }

    async fn next(&mut self) -> Option<std::result::Result<T, tokio::task::JoinError>> {
        let oldest = self.0.pop_front()?;
        Some(oldest.await)
    }
}

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn is_eof(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::Eof)
}

/// Read from `reader` until `len` bytes or end of stream.
fn read_chunk(reader: &mut dyn Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}
