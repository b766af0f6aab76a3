//! A backup session seen from the proxy: the [`backup::ProxySource`] the export pipeline
//! reads, with a keepalive thread holding the lease while it runs.

use super::Agent;
use crate::api::{BackupRequest, BackupSession};
use std::io::Read;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A live backup session on the host, read from the proxy.
pub struct RemoteBackup {
    agent: Arc<Agent>,
    session: BackupSession,
    keepalive: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    finished: bool,
    transport: super::Transport,
    read_ahead: bool,
}

impl RemoteBackup {
    /// Asks the host to quiesce and snapshot the VM; what the host did is replayed into
    /// `obs`.
    ///
    /// # Errors
    /// Connection and API errors.
    pub fn start(
        agent: Arc<Agent>,
        req: &BackupRequest,
        transport: super::Transport,
        obs: &mut dyn backup::Observer,
    ) -> crate::Result<RemoteBackup> {
        let session = agent.start_backup(req)?;
        for e in &session.events {
            obs.event(&e.to_event());
        }
        Ok(RemoteBackup::attach(agent, session, transport))
    }

    /// Takes over a session another process started (a mount server of `-t file`):
    /// keeps its lease and ends it when dropped.
    pub fn attach(
        agent: Arc<Agent>,
        session: BackupSession,
        transport: super::Transport,
    ) -> RemoteBackup {
        let (stop, stopped) = mpsc::channel::<()>();
        let (a, id) = (Arc::clone(&agent), session.id.clone());
        let every = Duration::from_secs((session.lease_secs / 3).max(1));
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if let Err(e) = a.keepalive(&id) {
                    tracing::warn!("backup session {id}: keepalive: {e}");
                }
            }
        });
        RemoteBackup {
            agent,
            session,
            keepalive: Some((stop, thread)),
            finished: false,
            transport,
            read_ahead: true,
        }
    }

    /// Leaves the session running for another process ([`RemoteBackup::attach`]);
    /// returns what it needs.
    pub fn detach(mut self) -> BackupSession {
        self.stop_keepalive();
        self.finished = true;
        self.session.clone()
    }

    /// Disks opened from now on are read where asked only (random access: file-level
    /// reads), not ahead.
    pub fn without_read_ahead(mut self) -> Self {
        self.read_ahead = false;
        self
    }

    /// The session.
    pub fn session(&self) -> &BackupSession {
        &self.session
    }

    fn stop_keepalive(&mut self) {
        if let Some((stop, thread)) = self.keepalive.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

fn agent_error(e: crate::Error) -> backup::Error {
    backup::Error::Agent(e.to_string())
}

impl backup::ProxySource for RemoteBackup {
    fn manifest(&self) -> &backup::ProxyManifest {
        &self.session.manifest
    }

    fn open_file(&mut self, name: &str) -> backup::Result<Box<dyn Read + '_>> {
        let r = self
            .agent
            .backup_file(&self.session.id, name)
            .map_err(agent_error)?;
        Ok(r)
    }

    fn open_disk(&mut self, node: &str) -> backup::Result<Box<dyn vmdk::DiskSource>> {
        let export = self
            .session
            .exports
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, e)| e.clone())
            .ok_or_else(|| backup::Error::Agent(format!("the host exports no disk {node}")))?;
        let adapter = self
            .session
            .manifest
            .disks
            .iter()
            .find(|d| d.node == node)
            .and_then(|d| vmdk::AdapterType::parse(&d.adapter).ok())
            .unwrap_or_default();
        let tls = self.agent.nbd_tls(self.transport).map_err(agent_error)?;
        let addr = self.agent.addr_with_port(self.session.nbd_port);
        let nbd_error = |e: nbd::Error| backup::Error::Agent(format!("disk {node} over NBD: {e}"));
        let mut client =
            nbd::Client::connect_tcp(addr, tls.as_ref(), &export, nbd::BASE_ALLOCATION)
                .map_err(nbd_error)?;
        let extents = client.block_status(0, client.size()).map_err(nbd_error)?;
        let prefetch = self.read_ahead.then(|| {
            super::prefetch::Prefetch::start(
                super::prefetch::Connect { addr, tls, export },
                super::prefetch::pieces(&extents),
            )
        });
        Ok(Box::new(NbdDisk {
            client,
            adapter,
            extents,
            prefetch,
        }))
    }

    fn finish(&mut self, obs: &mut dyn backup::Observer) -> backup::Result<()> {
        self.stop_keepalive();
        self.finished = true;
        let done = self
            .agent
            .finish_backup(&self.session.id)
            .map_err(agent_error)?;
        for e in &done.events {
            obs.event(&e.to_event());
        }
        Ok(())
    }
}

impl Drop for RemoteBackup {
    fn drop(&mut self) {
        self.stop_keepalive();
        if !self.finished {
            if let Err(e) = self.agent.finish_backup(&self.session.id) {
                tracing::warn!("backup session {}: {e}", self.session.id);
            }
        }
    }
}

/// An NBD export as a disk source: reads (ahead, see [`super::prefetch`]), and the
/// allocation `base:allocation` reported when it was opened (the export is static).
struct NbdDisk {
    client: nbd::Client,
    adapter: vmdk::AdapterType,
    /// The whole export's allocation, in order.
    extents: Vec<nbd::Extent>,
    prefetch: Option<super::prefetch::Prefetch>,
}

fn nbd_error(e: nbd::Error) -> vmdk::Error {
    vmdk::Error::Source(format!("NBD: {e}"))
}

impl vmdk::DiskSource for NbdDisk {
    fn capacity(&self) -> u64 {
        self.client.size()
    }

    fn map(&mut self, offset: u64, max_len: u64) -> vmdk::Result<vmdk::Run> {
        let size = self.client.size();
        let max_len = max_len.min(size.saturating_sub(offset));
        if max_len == 0 {
            return Ok(vmdk::Run {
                offset,
                len: 0,
                state: vmdk::BlockState::Unallocated,
            });
        }
        let i = self.extents.partition_point(|e| e.offset + e.len <= offset);
        let extent = self
            .extents
            .get(i)
            .filter(|e| e.offset <= offset)
            .copied()
            .ok_or_else(|| nbd_error(nbd::Error::Protocol("block status left a gap".into())))?;
        let state = match extent.flags & (nbd::STATE_HOLE | nbd::STATE_ZERO) {
            0 => vmdk::BlockState::Data,
            f if f & nbd::STATE_HOLE != 0 => vmdk::BlockState::Unallocated,
            _ => vmdk::BlockState::Zero,
        };
        Ok(vmdk::Run {
            offset,
            len: (extent.offset + extent.len - offset).min(max_len),
            state,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> vmdk::Result<()> {
        match self.prefetch.as_ref().map(|p| p.read(offset, buf)) {
            Some(Ok(true)) => Ok(()),
            Some(Err(e)) => Err(vmdk::Error::Source(format!("NBD: {e}"))),
            Some(Ok(false)) | None => self.client.read_at(offset, buf).map_err(nbd_error),
        }
    }

    fn adapter(&self) -> vmdk::AdapterType {
        self.adapter
    }
}
