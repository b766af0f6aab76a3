//! The demo's proxy part: the host's agent (`vcb hostd`, here in a thread on 127.0.0.1)
//! with a certificate and a `backup` user, and a backup of the VM taken through it, as a
//! backup proxy does: API over HTTPS, the disk over NBD with TLS, the certificate pinned.

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Backs the VM up through an agent into `<backups>/<vm>-proxy`; returns that folder.
pub(super) fn run(
    root: &Path,
    backups: &Path,
    vm: &str,
    moref: host::VmRef,
    disk: &Path,
) -> Result<PathBuf> {
    let dir = agent::agent_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let thumb = agent::tls::init_cert(&dir, &names, true)?;
    let mut users = agent::users::Users::load(&dir)?;
    let mut secret = [0u8; 12];
    rand::fill(&mut secret);
    let password = hex::encode(secret);
    users.add("demo-backup", agent::users::Role::Backup, &password, true)?;
    let config = agent::server::Config::new(root.to_path_buf(), "127.0.0.1:0".parse()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        agent::server::run(
            &config,
            &mut |l, _| {
                let _ = ready_tx.send(l);
            },
            Some(stop_rx),
        )
    });
    let listening = match ready_rx.recv() {
        Ok(l) => l,
        Err(_) => {
            return match server.join() {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(anyhow::anyhow!("the demo's agent did not start")),
            }
        }
    };
    println!(
        "11. Started the host agent (vcb hostd) on https://{} (NBD on {}), certificate {thumb}",
        listening.api, listening.nbd
    );
    let result = backup_through(root, backups, (vm, moref), disk, &listening, &password);
    let _ = stop_tx.send(());
    let _ = server.join();
    result
}

fn backup_through(
    root: &Path,
    backups: &Path,
    (vm, moref): (&str, host::VmRef),
    disk: &Path,
    listening: &agent::server::Listening,
    password: &str,
) -> Result<PathBuf> {
    let url = format!("https://{}", listening.api);
    let policy = agent::tls::TrustPolicy::Pinned {
        file: root.join("proxy-host-certs"),
        accept_new: true,
    };
    let client = Arc::new(agent::client::Agent::login(
        &url,
        "demo-backup",
        password,
        policy,
    )?);
    let dest = backups.join(format!("{vm}-proxy"));
    println!(
        "12. Backing up {vm} from a backup proxy (vcbMounter -h {url} -u demo-backup -a moref:{moref} -r {}):",
        dest.display()
    );
    let mut render = super::render::Render::new(3);
    let conf = crate::tools::conf::ToolConf::default();
    let opts = super::backup_options(backup::ExportFormat::Split2Gb, false, &conf);
    let mut d = backup::LocalDir::new(&dest);
    let req = super::proxy_request(&format!("moref:{moref}"), &opts);
    let mut session = agent::client::RemoteBackup::start(
        client,
        &req,
        agent::client::Transport::NbdSsl,
        &mut render,
    )?;
    let report = backup::backup_from_proxy(&mut session, &mut d, &opts, &mut render)?;
    drop(session);
    let exported = dest.join(format!("scsi0-0-0-{vm}.vmdk"));
    ensure!(
        super::demo::compare(&exported, disk)?,
        "the proxy's backup differs from the VM's disk"
    );
    println!(
        "   Verified: the proxy's backup ({} files) equals the VM's disk byte for byte; the audit log is {}",
        report.catalog.files.len(),
        agent::agent_dir(root).join(agent::audit::AUDIT_FILE).display()
    );
    Ok(dest)
}
