//! A restore from the proxy: the backup is verified where it lies (on the proxy or its
//! `scp://` server), its configuration files go to the host over HTTPS and its disks
//! over NBD writes (only the data the backup holds), and the host's own restore
//! pipeline places and registers the VM.

use super::Agent;
use crate::api::{RestoreDisk, RestoreDone, RestoreRequest, RestoreSession};
use crate::{Error, Result};
use backup::restore::RestoreSource;
use std::ops::ControlFlow;
use std::path::Path;

/// How to restore (the host applies it).
#[derive(Debug, Clone, Default)]
pub struct RestoreSettings {
    /// An alternate catalog (`-a`).
    pub alternate_catalog: Option<vmx::Catalog>,
    /// prompt, overwrite, keep or abort.
    pub policy: String,
    /// Provisioning of every restored disk.
    pub disk_format: Option<String>,
    /// Recreate RDMs.
    pub allow_rdm: bool,
    /// Power off a VM being replaced.
    pub power_off: bool,
    /// Wait for locks.
    pub wait: bool,
    /// How the disks travel.
    pub transport: super::Transport,
}

/// Bytes sent per NBD write.
const PIECE: usize = 4 << 20;

fn catalog_text(c: &vmx::Catalog) -> Result<String> {
    Ok(c.to_dict()
        .map_err(|e| Error::Invalid(format!("catalog: {e}")))?
        .to_string())
}

impl Agent {
    /// Restores the backup in `src` onto the agent's host.
    ///
    /// # Errors
    /// The backup's own errors (incomplete, tampered), connection errors and the
    /// host's restore errors; on error the host's staging is removed.
    pub fn restore(
        &self,
        src: &dyn backup::Destination,
        settings: &RestoreSettings,
        obs: &mut dyn backup::Observer,
    ) -> Result<RestoreDone> {
        let catalog = backup::restore::read_catalog(src)?;
        let files = backup::restore::verify_open_chain(src, &catalog)?;
        obs.event(&backup::Event::Verified {
            files: files.count(),
        });
        let mut disks = Vec::new();
        for d in catalog.disks.iter().filter(|d| d.backed_up) {
            let Some(name) = &d.filename else { continue };
            let disk = files.open_disk(name)?;
            disks.push(RestoreDisk {
                name: name.clone(),
                capacity: disk.capacity(),
                adapter: disk.adapter().as_str().to_owned(),
            });
        }
        let sent: Vec<(String, u64)> = catalog
            .files
            .iter()
            .filter(|f| !f.name.ends_with(".vmdk"))
            .map(|f| (f.name.clone(), f.size_bytes))
            .collect();
        let req = RestoreRequest {
            catalog: catalog_text(&catalog)?,
            alternate_catalog: settings
                .alternate_catalog
                .as_ref()
                .map(catalog_text)
                .transpose()?,
            policy: settings.policy.clone(),
            disk_format: settings.disk_format.clone(),
            allow_rdm: settings.allow_rdm,
            power_off: settings.power_off,
            wait: settings.wait,
            files: sent.clone(),
            disks,
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::Invalid(e.to_string()))?;
        let session: RestoreSession = self.call("POST", "/api/v1/restores", Some(&body))?;
        let result = self
            .send_all(&session, &files, &sent, settings.transport, obs)
            .and_then(|()| {
                self.call::<RestoreDone>(
                    "POST",
                    &format!("/api/v1/restores/{}/commit", session.id),
                    None,
                )
            });
        match result {
            Ok(done) => {
                // The proxy verified the backup itself (and said so).
                for e in done
                    .events
                    .iter()
                    .filter(|e| !matches!(e, crate::api::RemoteEvent::Verified { .. }))
                {
                    obs.event(&e.to_event());
                }
                Ok(done)
            }
            Err(e) => {
                let _: Result<Option<serde_json::Value>> =
                    self.call("DELETE", &format!("/api/v1/restores/{}", session.id), None);
                Err(e)
            }
        }
    }

    fn send_all(
        &self,
        session: &RestoreSession,
        files: &backup::restore::VerifiedFiles,
        sent: &[(String, u64)],
        transport: super::Transport,
        obs: &mut dyn backup::Observer,
    ) -> Result<()> {
        for (name, size) in sent {
            let mut reader = files.reader(name)?;
            let path = format!(
                "/api/v1/restores/{}/files/{}",
                session.id,
                super::query_escape(name)
            );
            let resp = self.endpoint.exchange_stream(
                "PUT",
                &path,
                Some(&self.token),
                false,
                *size,
                &mut reader,
            )?;
            let status = resp.status;
            if status != 204 {
                let bytes = resp.bytes(1 << 20).unwrap_or_default();
                return Err(super::api_error(status, &bytes));
            }
        }
        for (name, export) in &session.exports {
            let mut disk = files.open_disk(name)?;
            let tls = self.nbd_tls(transport)?;
            let addr = self.addr_with_port(session.nbd_port);
            let mut client =
                nbd::Client::connect_tcp(addr, tls.as_ref(), export, nbd::BASE_ALLOCATION)?;
            let mut progress = obs.converting(Path::new(name), "to the host over NBD");
            copy_disk(&mut *disk, &mut client, &mut *progress, || {
                // Each disk renews the lease as it goes.
                let _: Result<Option<serde_json::Value>> = self.call(
                    "POST",
                    &format!("/api/v1/restores/{}/keepalive", session.id),
                    None,
                );
            })?;
            client.flush()?;
            client.close();
        }
        Ok(())
    }
}

/// Writes the data `src` holds into the export (all-zero pieces are left as holes).
fn copy_disk(
    src: &mut dyn vmdk::DiskSource,
    dst: &mut nbd::Client,
    progress: &mut dyn vmdk::Progress,
    mut keepalive: impl FnMut(),
) -> Result<()> {
    let capacity = src.capacity();
    progress.start(capacity);
    let mut buf = vec![0u8; PIECE];
    let (mut pos, mut since_keepalive) = (0u64, 0u64);
    while pos < capacity {
        let run = src.map(pos, capacity - pos)?;
        if run.len == 0 {
            break;
        }
        let mut at = run.offset;
        let end = run.offset + run.len;
        while at < end {
            let n = ((end - at) as usize).min(PIECE);
            if run.state == vmdk::BlockState::Data {
                src.read_at(at, &mut buf[..n])?;
                if buf[..n].iter().any(|b| *b != 0) {
                    dst.write_at(at, &buf[..n])?;
                }
            }
            at += n as u64;
            since_keepalive += n as u64;
            if progress.advance(n as u64) == ControlFlow::Break(()) {
                return Err(Error::Invalid("cancelled".into()));
            }
            if since_keepalive > (1 << 30) {
                keepalive();
                since_keepalive = 0;
            }
        }
        pos = end;
    }
    progress.finish();
    Ok(())
}
