//! The restore calls: start, send a file, keep alive, commit, cancel.

use super::routes::{bad, blocking, caller_admin, parse, result_text, ApiError, Peer, Shared};
use crate::api::{RestoreDone, RestoreRequest, RestoreSession};
use crate::users::Role;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use futures_util::StreamExt;
use std::io::Write;
use std::sync::Arc;

type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn unprocessable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

pub(crate) async fn start(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    body: BodyResult,
) -> Result<Json<RestoreSession>, ApiError> {
    const ACTION: &str = "POST /api/v1/restores";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let req: RestoreRequest = parse(&s, peer, ACTION, body)?;
    let state = Arc::clone(&s);
    let user = c.user.clone();
    let reply = blocking(move || {
        state
            .restores
            .start(
                &state.dir,
                &state.exports,
                &user,
                state.lease,
                state.nbd_port,
                req,
            )
            .map_err(unprocessable)
    })
    .await;
    let result = match &reply {
        Ok(r) => format!("ok: session {}", r.id),
        Err(e) => e.1.clone(),
    };
    s.audit(&c.user, peer, ACTION, "", &result);
    reply.map(Json)
}

fn no_session(id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no restore session {id} of yours (it ended, or its lease ran out)"),
    )
}

pub(crate) async fn put_file(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    const ACTION: &str = "PUT /api/v1/restores/{id}/files/{name}";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let target = format!("{id}/{name}");
    let reply = receive(&s, &c.user, caller_admin(&c), &id, &name, body).await;
    s.audit(&c.user, peer, ACTION, &target, result_text(&reply));
    reply.map(|()| StatusCode::NO_CONTENT)
}

/// Streams the body into the staged file, never past its declared size.
async fn receive(
    s: &Shared,
    user: &str,
    admin: bool,
    id: &str,
    name: &str,
    body: Body,
) -> Result<(), ApiError> {
    let path = match s.restores.file_path(id, user, admin, name, s.lease) {
        None => return Err(no_session(id)),
        Some(Err(e)) => return Err(bad(e)),
        Some(Ok(p)) => p,
    };
    let limit = s.restores.file_size(id, name).unwrap_or(0);
    let mut file =
        tokio::task::block_in_place(|| fsio::open_regular(&path, fsio::OpenKind::ReadWrite))
            .or_else(|_| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
            })
            .map_err(unprocessable)?;
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    loop {
        let chunk = match tokio::time::timeout(s.body_timeout, stream.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload too slow".into(),
                ))
            }
        };
        let chunk = chunk.map_err(|e| bad(format!("request body: {e}")))?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(bad(format!("{name}: more than the {limit} bytes declared")));
        }
        tokio::task::block_in_place(|| file.write_all(&chunk)).map_err(unprocessable)?;
    }
    tokio::task::block_in_place(|| file.sync_all()).map_err(unprocessable)?;
    Ok(())
}

pub(crate) async fn keepalive(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    const ACTION: &str = "POST /api/v1/restores/{id}/keepalive";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    if s.restores
        .keepalive(&id, &c.user, caller_admin(&c), s.lease)
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        s.audit(&c.user, peer, ACTION, &id, "refused: no such session");
        Err(no_session(&id))
    }
}

pub(crate) async fn commit(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RestoreDone>, ApiError> {
    const ACTION: &str = "POST /api/v1/restores/{id}/commit";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let state = Arc::clone(&s);
    let (sid, user, admin) = (id.clone(), c.user.clone(), caller_admin(&c));
    let reply = blocking(move || {
        match state
            .restores
            .commit(&sid, &user, admin, &state.root, &state.exports)
        {
            None => Err(no_session(&sid)),
            Some(r) => r.map_err(unprocessable),
        }
    })
    .await;
    let result = match &reply {
        Ok(r) => format!("ok: {} restored as {}", r.vm, r.vmx),
        Err(e) => e.1.clone(),
    };
    s.audit(&c.user, peer, ACTION, &id, &result);
    reply.map(Json)
}

pub(crate) async fn cancel(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    const ACTION: &str = "DELETE /api/v1/restores/{id}";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let done = s
        .restores
        .cancel(&id, &c.user, caller_admin(&c), &s.exports);
    s.audit(
        &c.user,
        peer,
        ACTION,
        &id,
        if done {
            "ok"
        } else {
            "refused: no such session"
        },
    );
    if done {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_session(&id))
    }
}
