//! `vcbMounter -t file` and `-U` from a backup proxy: the host agent holds a backup
//! session (the quiesced snapshot, its disks exported over NBD); a detached mount server
//! on the proxy takes the session over, keeps its lease and serves the guest's file
//! systems read-only from the exports. Unmounting ends the server, which ends the session
//! (the agent removes the snapshot); a server that dies leaves the lease to run out.
//!
//! The record (`$XDG_STATE_HOME/vcb/file-mounts/`, else `~/.local/state/...`, mode 0600)
//! holds the session's token: whoever reads it acts as the user until the session ends.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the mount server and `-U` need.
#[derive(Serialize, Deserialize)]
struct ProxyMount {
    mountdir: PathBuf,
    created_dir: bool,
    url: String,
    token: String,
    host_ca: Option<PathBuf>,
    transport: String,
    session: agent::api::BackupSession,
    server_pid: Option<u32>,
}

fn records_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            Path::new(&home).join(".local/state")
        });
    state.join("vcb/file-mounts")
}

fn record_path(mountdir: &Path) -> PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(mountdir.as_os_str().as_encoded_bytes());
    records_dir().join(format!("{}.json", &hex::encode(h)[..16]))
}

fn write_record(path: &Path, r: &ProxyMount) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    fsio::write_private(path, &serde_json::to_vec_pretty(r)?)
        .with_context(|| path.display().to_string())
}

fn policy(host_ca: &Option<PathBuf>) -> agent::tls::TrustPolicy {
    match host_ca {
        Some(ca) => agent::tls::TrustPolicy::Ca(ca.clone()),
        None => agent::tls::TrustPolicy::Pinned {
            file: agent::trust::default_file(),
            accept_new: false,
        },
    }
}

/// `vcbMounter -a VM -r DIR -t file` against a host agent.
pub fn mount_vm(
    agent: Arc<agent::client::Agent>,
    certs: &crate::cmd::agent::CertArgs,
    url: &str,
    vm: &str,
    dest: &str,
    opts: &backup::BackupOptions,
    render: &mut crate::cmd::backup::render::Render,
) -> Result<()> {
    let dir = super::filemount::mount_dir(dest)?;
    let created_dir = super::filemount::prepare_dir(&dir)?;
    // A physical RDM cannot be snapshotted: its file systems are left out, as on the host.
    let req = agent::api::BackupRequest {
        skip_physical_rdm: true,
        ..crate::cmd::backup::proxy_request(vm, opts)
    };
    let started =
        agent::client::RemoteBackup::start(Arc::clone(&agent), &req, certs.transport, render);
    let session = match started {
        Ok(s) => s,
        Err(e) => {
            if created_dir {
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(e.into());
        }
    };
    let mut record = ProxyMount {
        mountdir: dir.clone(),
        created_dir,
        url: url.to_owned(),
        token: agent.token().to_owned(),
        host_ca: certs.host_ca.clone(),
        transport: match certs.transport {
            agent::client::Transport::Nbd => "nbd".into(),
            agent::client::Transport::NbdSsl => "nbdssl".into(),
        },
        session: session.session().clone(),
        server_pid: None,
    };
    let path = record_path(&dir);
    let vm_name = record.session.manifest.vm.clone();
    // From here the server owns the session (until it is running, this process keeps it).
    let served = write_record(&path, &record).and_then(|()| start_server(&path, &mut record));
    if let Err(e) = served {
        drop(session);
        let _ = std::fs::remove_file(&path);
        if created_dir {
            let _ = std::fs::remove_dir(&dir);
        }
        return Err(e);
    }
    session.detach();
    println!(
        "Mounted the file systems of {vm_name} (host agent session {}) read-only on {}; `vcbMounter -U {}` ends it",
        record.session.id,
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn start_server(record_path: &Path, record: &mut ProxyMount) -> Result<()> {
    let args = ["--serve-proxy-mount".as_ref(), record_path.as_os_str()];
    let mountdir = record.mountdir.clone();
    let log = record_path.with_extension("log");
    super::filemount::spawn_mount_server(&args, &log, &mountdir, |pid| {
        record.server_pid = Some(pid);
        write_record(record_path, record)
    })
}

/// The hidden `--serve-proxy-mount RECORD`: take the session over and serve the mount
/// until it is unmounted; the session ends when this returns.
pub fn serve(record_path: &Path) -> Result<()> {
    let record: ProxyMount = serde_json::from_slice(&std::fs::read(record_path)?)
        .with_context(|| record_path.display().to_string())?;
    let agent = Arc::new(agent::client::Agent::resume(
        &record.url,
        &record.token,
        policy(&record.host_ca),
    )?);
    let transport: agent::client::Transport = record.transport.parse()?;
    let mut session = agent::client::RemoteBackup::attach(agent, record.session.clone(), transport)
        .without_read_ahead();
    let mut disks = Vec::new();
    for (node, _) in &record.session.exports {
        let disk = backup::ProxySource::open_disk(&mut session, node)?;
        disks.push((node.clone(), disk));
    }
    let opened = crate::cmd::files::open_sources(&record.session.manifest.vm, disks)?;
    let served = crate::cmd::files::serve_mount(
        opened,
        &record.mountdir,
        crate::cmd::files::DEFAULT_THREADS,
    );
    drop(session);
    served
}

/// `vcbMounter -U DIR` for a mount made from this proxy; `Ok(false)` when none is
/// recorded for `dir` (it may be the host's own).
pub fn unmount_vm(dir: &Path) -> Result<bool> {
    let dir = std::path::absolute(dir).with_context(|| dir.display().to_string())?;
    let path = record_path(&dir);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(false);
    };
    let record: ProxyMount =
        serde_json::from_slice(&bytes).with_context(|| path.display().to_string())?;
    crate::cmd::files::unmount(&record.mountdir).with_context(|| {
        format!(
            "{}: unmount (is a program still using it?)",
            record.mountdir.display()
        )
    })?;
    if let Some(pid) = record.server_pid {
        super::filemount::stop_server(pid, "--serve-proxy-mount");
    }
    // The server ends the session as it exits; a server that died left it to the lease,
    // or to this call.
    if let Ok(a) = agent::client::Agent::resume(&record.url, &record.token, policy(&record.host_ca))
    {
        let _ = a.finish_backup(&record.session.id);
    }
    if record.created_dir {
        let _ = std::fs::remove_dir(&record.mountdir);
    }
    std::fs::remove_file(&path).with_context(|| path.display().to_string())?;
    let _ = std::fs::remove_file(path.with_extension("log"));
    println!(
        "Unmounted {} and ended the host agent session of {}",
        dir.display(),
        record.session.manifest.vm
    );
    Ok(true)
}
