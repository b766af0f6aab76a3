//! [`Session`]: a blocking SFTP client over one SSH connection, with its own small tokio
//! runtime so callers stay synchronous.

use crate::connect::{self, Client, Target};
use crate::error::{Error, RemoteErrorKind, Result};
use crate::options::ConnectOptions;
use crate::types::{DirEntry, Extensions, FileKind, FileStat, FsStat};
use crate::url::{parent_path, RemoteUrl};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, StatusCode};

/// Most entries one folder listing returns; a backup folder holds a few dozen files.
pub const MAX_DIR_ENTRIES: usize = 100_000;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Transfer tuning taken from [`ConnectOptions`] and the server's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub in_flight: usize,
    pub write_bytes: u32,
    pub read_bytes: u32,
    pub timeout: Duration,
    pub max_dir_entries: usize,
}

/// An open SFTP session. Every method blocks until the server answered; paths are
/// absolute remote paths (`/`-separated).
///
/// Must not be created or used from inside an async runtime (it runs its own).
pub struct Session {
    // Drop says goodbye on `runtime` and shuts it down; the connection objects left
    // afterwards need no runtime to be dropped.
    pub(crate) sftp: Arc<RawSftpSession>,
    ssh: russh::client::Handle<Client>,
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) target: Target,
    extensions: Extensions,
    pub(crate) tuning: Tuning,
}

/// Connect to `url`'s host and start SFTP. The URL's path is not used here (callers join
/// names onto it); see [`RemoteUrl::join`].
///
/// # Errors
/// [`Error::SshConfig`], [`Error::NoUser`], [`Error::Connect`], [`Error::Timeout`],
/// [`Error::UnknownHostKey`], [`Error::HostKeyChanged`], [`Error::BadKey`],
/// [`Error::AuthFailed`], [`Error::Ssh`], [`Error::LocalIo`] (known_hosts).
///
/// # Panics
/// When called from inside a tokio runtime.
pub fn connect(url: &RemoteUrl, opts: &ConnectOptions) -> Result<Session> {
    let resolved = connect::resolve(url, opts)?;
    let target = resolved.target.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vcb-sftp")
        .enable_all()
        .build()
        .map_err(|source| Error::LocalIo {
            path: "tokio runtime".into(),
            op: "start",
            source,
        })?;
    let secs = opts.timeout.as_secs().max(1);
    let timeout_err = || Error::Timeout {
        location: target.location(""),
        op: "connect",
        secs,
    };
    let established = runtime.block_on(async {
        tokio::time::timeout(opts.timeout, establish(&resolved, opts))
            .await
            .map_err(|_| timeout_err())?
    })?;
    let (sftp, ssh, extensions, limits) = established;
    let cap = |configured: u32, server: Option<u64>| {
        // Stay under the SFTP layer's own 256 KiB packet limit, whatever is configured.
        let max = u64::from(configured.clamp(1024, 255 * 1024));
        u32::try_from(server.map_or(max, |s| s.min(max))).unwrap_or(32 * 1024)
    };
    let tuning = Tuning {
        in_flight: opts.requests_in_flight.clamp(1, 1024),
        write_bytes: cap(opts.request_bytes, limits.write_len),
        read_bytes: cap(opts.request_bytes, limits.read_len),
        timeout: opts.timeout,
        max_dir_entries: opts.max_dir_entries,
    };
    tracing::debug!(location = %target.location(""), ?extensions, ?tuning, "sftp session ready");
    Ok(Session {
        sftp,
        ssh,
        runtime: Some(runtime),
        target,
        extensions,
        tuning,
    })
}

type Established = (
    Arc<RawSftpSession>,
    russh::client::Handle<Client>,
    Extensions,
    russh_sftp::client::rawsession::Limits,
);

async fn establish(resolved: &connect::Resolved, opts: &ConnectOptions) -> Result<Established> {
    let Target { host, port, .. } = &resolved.target;
    let ssh_err = |detail: String| Error::Ssh {
        host: host.clone(),
        port: *port,
        detail,
    };
    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(|source| Error::Connect {
            host: host.clone(),
            port: *port,
            source,
        })?;
    let client = Client::new(&resolved.target, opts);
    let refusal = client.refusal.clone();
    let known = crate::known_hosts::known_algorithms(&opts.known_hosts_files(), host, *port);
    let mut handle =
        match russh::client::connect_stream(Arc::new(connect::ssh_config(&known)), tcp, client)
            .await
        {
            Ok(handle) => handle,
            Err(e) => {
                let refused = refusal.lock().ok().and_then(|mut slot| slot.take());
                return Err(refused.unwrap_or_else(|| ssh_err(e.to_string())));
            }
        };
    connect::authenticate(&mut handle, resolved, opts).await?;
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| ssh_err(e.to_string()))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| ssh_err(format!("sftp subsystem: {e}")))?;
    let config = russh_sftp::client::Config {
        request_timeout_secs: opts.timeout.as_secs().max(1),
        ..Default::default()
    };
    let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), config);
    let version = sftp
        .init()
        .await
        .map_err(|e| ssh_err(format!("sftp init: {e}")))?;
    let has = |name: &str, ver: &str| version.extensions.get(name).is_some_and(|v| v == ver);
    let extensions = Extensions {
        posix_rename: has("posix-rename@openssh.com", "1"),
        fsync: has("fsync@openssh.com", "1"),
        statvfs: has("statvfs@openssh.com", "2"),
    };
    let mut limits = russh_sftp::client::rawsession::Limits::default();
    if has("limits@openssh.com", "1") {
        limits = sftp
            .limits()
            .await
            .map_err(|e| ssh_err(format!("sftp limits: {e}")))?
            .into();
        sftp.set_limits(limits);
    }
    Ok((Arc::new(sftp), handle, extensions, limits))
}

impl Session {
    /// Where this session is connected.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The protocol extensions the server offers.
    pub fn extensions(&self) -> Extensions {
        self.extensions
    }

    /// Run a future on the session's runtime.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            // The runtime is only taken in Drop.
            None => unreachable!("session used after drop"),
        }
    }

    /// Start a task on the session's runtime (it runs while the caller does other work).
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => runtime.spawn(future),
            // The runtime is only taken in Drop.
            None => unreachable!("session used after drop"),
        }
    }

    /// Map an SFTP error for `op` on `path` to the crate's error.
    pub(crate) fn remote_err(&self, op: &'static str, path: &str, e: SftpError) -> Error {
        let location = self.target.location(path);
        match e {
            SftpError::Status(status) => {
                let code = status.status_code as u32;
                if matches!(
                    status.status_code,
                    StatusCode::NoConnection | StatusCode::ConnectionLost
                ) {
                    return Error::Disconnected {
                        location,
                        op,
                        detail: status.error_message,
                    };
                }
                Error::Remote {
                    location,
                    op,
                    kind: RemoteErrorKind::from_code(code),
                    message: status.error_message,
                }
            }
            SftpError::Timeout => Error::Timeout {
                location,
                op,
                secs: self.tuning.timeout.as_secs().max(1),
            },
            SftpError::IO(detail) | SftpError::UnexpectedBehavior(detail) => Error::Disconnected {
                location,
                op,
                detail: if self.ssh.is_closed() {
                    format!("the server or network closed the SSH connection ({detail})")
                } else {
                    detail
                },
            },
            SftpError::Limited(detail) => Error::Protocol {
                location,
                op,
                detail,
            },
            SftpError::UnexpectedPacket => Error::Protocol {
                location,
                op,
                detail: "unexpected packet".to_owned(),
            },
        }
    }

    /// Map a failed write request: OpenSSH answers a full disk, an exceeded quota or file
    /// size limit all with a bare `SSH_FX_FAILURE`, so the message says what it may mean.
    pub(crate) fn write_err(&self, path: &str, e: SftpError) -> Error {
        match self.remote_err("write", path, e) {
            Error::Remote {
                location,
                op,
                kind: RemoteErrorKind::Failure,
                message,
            } => Error::Remote {
                location,
                op,
                kind: RemoteErrorKind::Failure,
                message: format!(
                    "{message}: the server's disk may be full, or a quota or file size limit reached"
                ),
            },
            other => other,
        }
    }

    /// Attributes of `path`, following symbolic links.
    ///
    /// # Errors
    /// [`Error::Remote`] (`NotFound` when it does not exist), [`Error::Disconnected`],
    /// [`Error::Timeout`].
    pub fn stat(&self, path: &str) -> Result<FileStat> {
        let attrs = self
            .block_on(self.sftp.stat(path))
            .map_err(|e| self.remote_err("stat", path, e))?;
        Ok(FileStat::from_attrs(&attrs.attrs))
    }

    /// Whether `path` exists (following symbolic links).
    ///
    /// # Errors
    /// As [`stat`](Self::stat), except that "not found" is `Ok(false)`.
    pub fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Create the folder `path`, mode 0700: what vcb stores remotely are whole VMs,
    /// for the user's eyes only. Its parent must exist.
    ///
    /// # Errors
    /// [`Error::ParentMissing`], [`Error::Remote`] with [`RemoteErrorKind::AlreadyExists`]
    /// or `PermissionDenied`, transport errors.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        let attrs = FileAttributes {
            permissions: Some(0o700),
            ..FileAttributes::empty()
        };
        match self.block_on(self.sftp.mkdir(path, attrs)) {
            Ok(_) => Ok(()),
            Err(e) => {
                Err(self.creation_err("mkdir", path, self.remote_err("mkdir", path, e), true))
            }
        }
    }

    /// Refine a failed creation of `path`: OpenSSH reports a missing parent folder as "no
    /// such file", and (when `check_exists`) an existing target as a generic failure.
    pub(crate) fn creation_err(
        &self,
        op: &'static str,
        path: &str,
        err: Error,
        check_exists: bool,
    ) -> Error {
        let Error::Remote {
            location,
            op: _,
            kind,
            message,
        } = err
        else {
            return err;
        };
        if kind == RemoteErrorKind::NotFound {
            return Error::ParentMissing {
                location,
                op,
                parent: parent_path(path).to_owned(),
            };
        }
        if check_exists && kind == RemoteErrorKind::Failure && self.exists(path).unwrap_or(false) {
            return Error::Remote {
                location,
                op,
                kind: RemoteErrorKind::AlreadyExists,
                message,
            };
        }
        Error::Remote {
            location,
            op,
            kind,
            message,
        }
    }

    /// The entries of the folder `path`, without `.` and `..`, in server order (at most
    /// [`ConnectOptions::max_dir_entries`](crate::ConnectOptions): a hostile server
    /// cannot make a listing exhaust memory).
    ///
    /// # Errors
    /// [`Error::Remote`] (`NotFound`, `PermissionDenied`), transport errors.
    pub fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let err = |e| self.remote_err("list folder", path, e);
        let handle = self.block_on(self.sftp.opendir(path)).map_err(err)?.handle;
        let mut entries = Vec::new();
        let outcome = loop {
            if entries.len() > self.tuning.max_dir_entries {
                break Err(Error::Protocol {
                    location: self.target.location(path),
                    op: "list folder",
                    detail: format!(
                        "more than {} entries (refused)",
                        self.tuning.max_dir_entries
                    ),
                });
            }
            match self.block_on(self.sftp.readdir(handle.as_str())) {
                Ok(name) => entries.extend(
                    name.files
                        .into_iter()
                        .filter(|f| f.filename != "." && f.filename != "..")
                        .map(|f| DirEntry {
                            stat: FileStat::from_attrs(&f.attrs),
                            name: f.filename,
                        }),
                ),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(()),
                Err(e) => break Err(err(e)),
            }
        };
        let closed = self
            .block_on(self.sftp.close(handle))
            .map(drop)
            .map_err(err);
        outcome.and(closed).map(|()| entries)
    }

    /// Remove the file (or symbolic link) `path`.
    ///
    /// # Errors
    /// [`Error::Remote`], transport errors.
    pub fn remove_file(&self, path: &str) -> Result<()> {
        self.block_on(self.sftp.remove(path))
            .map(drop)
            .map_err(|e| self.remote_err("remove file", path, e))
    }

    /// Remove the empty folder `path`.
    ///
    /// # Errors
    /// [`Error::Remote`] (`Failure` when not empty), transport errors.
    pub fn remove_dir(&self, path: &str) -> Result<()> {
        self.block_on(self.sftp.rmdir(path))
            .map(drop)
            .map_err(|e| self.remote_err("remove folder", path, e))
    }

    /// Remove the folder `path` and everything below it, not following symbolic links
    /// (a link is removed, never what it points to). For cleaning up a partial backup.
    ///
    /// # Errors
    /// The first failure; what was removed before it stays removed.
    pub fn remove_dir_all(&self, path: &str) -> Result<()> {
        // Depth-first without recursion: (folder, listed yet).
        let mut stack = vec![(path.to_owned(), false)];
        while let Some((dir, listed)) = stack.pop() {
            if listed {
                self.remove_dir(&dir)?;
                continue;
            }
            stack.push((dir.clone(), true));
            for entry in self.list_dir(&dir)? {
                let child = crate::url::join_path(&dir, &entry.name);
                if entry.stat.kind == FileKind::Dir {
                    stack.push((child, false));
                } else {
                    self.remove_file(&child)?;
                }
            }
        }
        Ok(())
    }

    /// Rename `from` to `to`, replacing `to` atomically when the server offers
    /// `posix-rename@openssh.com` (OpenSSH does); otherwise a plain SFTP rename, which
    /// fails when `to` exists.
    ///
    /// # Errors
    /// [`Error::Remote`], transport errors.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let err = |e| self.remote_err("rename", from, e);
        if !self.extensions.posix_rename {
            return self
                .block_on(self.sftp.rename(from, to))
                .map(drop)
                .map_err(err);
        }
        let mut data = Vec::with_capacity(8 + from.len() + to.len());
        for s in [from, to] {
            let len = u32::try_from(s.len()).map_err(|_| Error::Protocol {
                location: self.target.location(s),
                op: "rename",
                detail: "path too long".to_owned(),
            })?;
            data.extend_from_slice(&len.to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        match self
            .block_on(self.sftp.extended("posix-rename@openssh.com", data))
            .map_err(err)?
        {
            russh_sftp::protocol::Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
            russh_sftp::protocol::Packet::Status(s) => Err(err(SftpError::Status(s))),
            _ => Err(err(SftpError::UnexpectedPacket)),
        }
    }

    /// Rename `from` to `to` only if `to` does not exist: the protocol's plain rename,
    /// which OpenSSH carries out with link(2) + unlink(2) and so never replaces a file.
    ///
    /// # Errors
    /// [`Error::Remote`] with [`RemoteErrorKind::AlreadyExists`] when `to` exists
    /// (OpenSSH reports it as a bare failure; the target is checked to tell);
    /// other remote and transport errors.
    pub fn rename_noreplace(&self, from: &str, to: &str) -> Result<()> {
        match self.block_on(self.sftp.rename(from, to)) {
            Ok(_) => Ok(()),
            Err(e) => {
                Err(self.creation_err("rename", to, self.remote_err("rename", from, e), true))
            }
        }
    }

    /// Space on the file system holding `path`; `None` when the server lacks
    /// `statvfs@openssh.com`.
    ///
    /// # Errors
    /// [`Error::Remote`], transport errors.
    pub fn statvfs(&self, path: &str) -> Result<Option<FsStat>> {
        if !self.extensions.statvfs {
            return Ok(None);
        }
        let st = self
            .block_on(self.sftp.statvfs(path))
            .map_err(|e| self.remote_err("statvfs", path, e))?;
        let bytes = |blocks: u64| blocks.saturating_mul(st.fragment_size.max(1));
        Ok(Some(FsStat {
            total_bytes: bytes(st.blocks),
            free_bytes: bytes(st.blocks_free),
            available_bytes: bytes(st.blocks_avail),
        }))
    }

    /// Close the session politely. Dropping a session also closes it.
    ///
    /// # Errors
    /// None in practice: a connection that is already gone is not an error.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let _ = self.sftp.close_session();
        let ssh = &self.ssh;
        runtime.block_on(async {
            let bye = ssh.disconnect(russh::Disconnect::ByApplication, "", "en");
            let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}
