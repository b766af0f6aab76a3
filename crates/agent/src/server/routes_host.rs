//! The host work behind the read-only calls, and file bodies.

use super::routes::{octets, ApiError};
use crate::api::{Inventory, VmInfo, VmList};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use backup::FileSource;
use host::ContainerKind;
use std::io::Read;
use std::path::Path;

fn unprocessable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

/// The VMs `spec` finds, as vcbVmName reports them.
pub(crate) fn lookup(root: &Path, spec: &str) -> Result<VmList, ApiError> {
    let spec_parsed = host::Specifier::parse(spec)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let host = host::Host::open(root).map_err(unprocessable)?;
    let found = spec_parsed.find(&host).map_err(unprocessable)?;
    let cache = host::namecache::load(host.name_cache_path()).map_err(unprocessable)?;
    let mut vms = Vec::new();
    for moref in found {
        let vm = host.vm(moref).map_err(unprocessable)?;
        let uuid = vm.uuid();
        let ipaddr = vm
            .guest_ips(&host)
            .into_iter()
            .next()
            .or_else(|| uuid.and_then(|u| cache.by_uuid(&u)).map(|e| e.ip.clone()))
            .unwrap_or_default();
        let power_state = match vm.power_state(&host) {
            host::PowerState::PoweredOn => "poweredOn",
            host::PowerState::PoweredOff => "poweredOff",
            host::PowerState::Suspended => "suspended",
        };
        vms.push(VmInfo {
            moref: vm.moref.to_string(),
            name: vm.name(),
            uuid: uuid.map(|u| u.to_string()).unwrap_or_default(),
            ipaddr,
            power_state: power_state.to_owned(),
            vmx: vm.vmx.to_string(),
        });
    }
    Ok(VmList {
        vms,
        group: spec_parsed.is_group(),
    })
}

/// Folders, pools and datastores, as vcbUtil lists them.
pub(crate) fn inventory(root: &Path) -> Result<Inventory, ApiError> {
    let host = host::Host::open(root).map_err(unprocessable)?;
    let containers = |kind| -> Vec<String> {
        host.containers(kind)
            .iter()
            .map(|p| host.config().display_container(kind, p))
            .collect()
    };
    Ok(Inventory {
        folders: containers(ContainerKind::Folder),
        pools: containers(ContainerKind::Pool),
        datastores: host
            .datastores()
            .into_iter()
            .map(|ds| (ds.name.clone(), ds.path.display().to_string()))
            .collect(),
    })
}

/// A configuration file of a session as a response body, streamed in 1 MiB pieces
/// (a suspended VM's state file is as large as its memory).
pub(crate) async fn file_body(file: FileSource) -> Result<Response, ApiError> {
    let path = match file {
        FileSource::Bytes(b) => return Ok(octets(b.len() as u64, Body::from(b))),
        FileSource::Path(p) => p,
    };
    let opened = tokio::task::spawn_blocking(move || {
        let f = fsio::open_regular(&path, fsio::OpenKind::Read)?;
        let len = f
            .metadata()
            .map_err(|e| fsio::Error::io(&path, "stat", e))?
            .len();
        Ok::<_, fsio::Error>((f, len))
    })
    .await
    .map_err(unprocessable)?
    .map_err(unprocessable)?;
    let (file, len) = opened;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file.take(len);
        loop {
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(octets(len, Body::from_stream(stream)))
}
