//! VM details, power operations, snapshots and the host's configuration backup.

use super::routes::{blocking, parse, result_text, ApiError, Peer, Shared};
use crate::api::{PowerRequest, SnapshotRequest, SnapshotTaken, VmDetails};
use crate::users::Role;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use std::time::Duration;

type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn unprocessable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

fn vm_ref(moref: &str) -> Result<host::VmRef, ApiError> {
    moref
        .parse()
        .map(host::VmRef)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("bad moref {moref:?}")))
}

/// Runs `f` on VM `moref` locked (refused at once when another operation holds it).
fn with_locked<T>(
    root: &std::path::Path,
    moref: &str,
    f: impl FnOnce(&mut host::LockedVm<'_>) -> host::Result<T>,
) -> Result<T, ApiError> {
    let moref = vm_ref(moref)?;
    let h = host::Host::open(root).map_err(unprocessable)?;
    let mut locked = h
        .lock_vm(moref, host::LockMode::NoWait)
        .map_err(unprocessable)?;
    f(&mut locked).map_err(unprocessable)
}

pub(crate) async fn details(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(moref): Path<String>,
) -> Result<Json<VmDetails>, ApiError> {
    const ACTION: &str = "GET /api/v1/vms/{moref}";
    let c = s.caller(&headers, peer, ACTION, Role::Readonly)?;
    let (root, m) = (s.root.clone(), moref.clone());
    let reply = blocking(move || {
        let list = super::routes_host::lookup(&root, &format!("moref:{m}"))?;
        let info = list
            .vms
            .into_iter()
            .next()
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no VM with moref {m}")))?;
        let h = host::Host::open(&root).map_err(unprocessable)?;
        let vm = h.vm(vm_ref(&m)?).map_err(unprocessable)?;
        let disks = vm
            .disks(&h)
            .map_err(unprocessable)?
            .iter()
            .map(|d| {
                let shown = h
                    .datastore_path_of(&d.path)
                    .map_or_else(|| d.path.display().to_string(), |p| p.to_string());
                (d.node.to_string(), shown)
            })
            .collect();
        let vmsd = vm.vmsd_path();
        let snapshots = if vmsd.exists() {
            host::snapshot::read_vmsd(&vmsd)
                .map_err(unprocessable)?
                .snapshots()
                .iter()
                .map(|s| (s.uid, s.display_name.clone(), s.description.clone()))
                .collect()
        } else {
            Vec::new()
        };
        Ok(VmDetails {
            info,
            disks,
            snapshots,
        })
    })
    .await;
    s.audit(&c.user, peer, ACTION, &moref, result_text(&reply));
    reply.map(Json)
}

pub(crate) async fn power(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(moref): Path<String>,
    body: BodyResult,
) -> Result<Json<SnapshotTaken>, ApiError> {
    const ACTION: &str = "POST /api/v1/vms/{moref}/power";
    let c = s.caller(&headers, peer, ACTION, Role::Admin)?;
    let req: PowerRequest = parse(&s, peer, ACTION, body)?;
    const OPS: [&str; 6] = ["on", "off", "reset", "suspend", "resume", "shutdown"];
    if !OPS.contains(&req.op.as_str()) {
        let text = format!(
            "power operation {:?}: expected one of {}",
            req.op,
            OPS.join(", ")
        );
        s.audit(&c.user, peer, ACTION, &moref, &format!("refused: {text}"));
        return Err(ApiError(StatusCode::BAD_REQUEST, text));
    }
    let (root, m, op) = (s.root.clone(), moref.clone(), req.op.clone());
    let reply = blocking(move || {
        with_locked(&root, &m, |l| {
            let text = match op.as_str() {
                "on" => {
                    let r = l.power_on(&runtime::PowerOnOptions::default())?;
                    format!("powered on (QEMU pid {})", r.pid)
                }
                "resume" => {
                    let r = l.resume(&runtime::PowerOnOptions::default())?;
                    format!("resumed (QEMU pid {})", r.pid)
                }
                "off" => l.power_off().map(|()| "powered off".to_owned())?,
                "reset" => l.reset().map(|()| "reset".to_owned())?,
                "suspend" => l
                    .suspend()
                    .map(|r| format!("suspended to {}", r.vmss.display()))?,
                _ => l
                    .shutdown(Duration::from_secs(120))
                    .map(|t| format!("shut down in {:.1} s", t.as_secs_f64()))?,
            };
            Ok(SnapshotTaken { uid: None, text })
        })
    })
    .await;
    s.audit(
        &c.user,
        peer,
        ACTION,
        &format!("{moref} {}", req.op),
        result_text(&reply),
    );
    reply.map(Json)
}

pub(crate) async fn snapshot(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(moref): Path<String>,
    body: BodyResult,
) -> Result<Json<SnapshotTaken>, ApiError> {
    const ACTION: &str = "POST /api/v1/vms/{moref}/snapshots";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let req: SnapshotRequest = parse(&s, peer, ACTION, body)?;
    let (root, m) = (s.root.clone(), moref.clone());
    let reply = blocking(move || {
        with_locked(&root, &m, |l| {
            let made = l.create_snapshot(&req.name, &req.description)?;
            Ok(SnapshotTaken {
                uid: Some(made.uid),
                text: format!("snapshot {} taken", made.uid),
            })
        })
    })
    .await;
    s.audit(&c.user, peer, ACTION, &moref, result_text(&reply));
    reply.map(Json)
}

pub(crate) async fn remove_snapshot(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path((moref, uid)): Path<(String, u64)>,
) -> Result<Json<SnapshotTaken>, ApiError> {
    const ACTION: &str = "DELETE /api/v1/vms/{moref}/snapshots/{uid}";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let (root, m) = (s.root.clone(), moref.clone());
    let reply = blocking(move || {
        with_locked(&root, &m, |l| {
            l.remove_snapshot(uid, &mut ())?;
            Ok(SnapshotTaken {
                uid: Some(uid),
                text: format!("snapshot {uid} removed"),
            })
        })
    })
    .await;
    s.audit(
        &c.user,
        peer,
        ACTION,
        &format!("{moref}/{uid}"),
        result_text(&reply),
    );
    reply.map(Json)
}

/// The host's configuration (host.toml, inventory, backuptools.conf...) as one file.
pub(crate) async fn config_backup(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    const ACTION: &str = "GET /api/v1/host/config-backup";
    let c = s.caller(&headers, peer, ACTION, Role::Admin)?;
    let root = s.root.clone();
    let reply = blocking(move || {
        let dir = tempfile::tempdir().map_err(unprocessable)?;
        let file = dir.path().join("host-config");
        host::backup_config(&root, &file).map_err(unprocessable)?;
        std::fs::read(&file).map_err(unprocessable)
    })
    .await;
    s.audit(&c.user, peer, ACTION, "", result_text(&reply));
    let bytes = reply?;
    Ok(super::routes::octets(bytes.len() as u64, Body::from(bytes)))
}
