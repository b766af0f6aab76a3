//! The API's routes, its authentication and its audit.

use super::{State, Token};
use crate::api::*;
use crate::audit::{now, Entry};
use crate::users::Role;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted (every request is a short JSON document).
const MAX_BODY: usize = 64 * 1024;

pub(crate) type Shared = Arc<State>;

/// The peer of a connection, for the audit log.
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/ping", get(ping))
        .route("/api/v1/vms", get(vms))
        .route("/api/v1/inventory", get(inventory))
        .route("/api/v1/vms/{moref}", get(super::routes_vm::details))
        .route("/api/v1/vms/{moref}/power", post(super::routes_vm::power))
        .route(
            "/api/v1/vms/{moref}/snapshots",
            post(super::routes_vm::snapshot),
        )
        .route(
            "/api/v1/vms/{moref}/snapshots/{uid}",
            delete(super::routes_vm::remove_snapshot),
        )
        .route(
            "/api/v1/host/config-backup",
            get(super::routes_vm::config_backup),
        )
        .route("/api/v1/backups", post(start_backup))
        .route("/api/v1/backups/{id}", delete(finish_backup))
        .route("/api/v1/backups/{id}/keepalive", post(keepalive))
        .route("/api/v1/backups/{id}/files/{name}", get(backup_file))
        .route("/api/v1/restores", post(super::routes_restore::start))
        .route(
            "/api/v1/restores/{id}",
            delete(super::routes_restore::cancel),
        )
        .route(
            "/api/v1/restores/{id}/keepalive",
            post(super::routes_restore::keepalive),
        )
        .route(
            "/api/v1/restores/{id}/commit",
            post(super::routes_restore::commit),
        )
        .route(
            "/api/v1/restores/{id}/files/{name}",
            axum::routing::put(super::routes_restore::put_file),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            limit_body,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Every request body but a file upload is read here, whole, within the request
/// deadline and the size limit: a client that declares a body and sends it slowly, or
/// not at all, holds nothing for long. (Uploads have a deadline per piece instead.)
async fn limit_body(
    AxState(s): AxState<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() == axum::http::Method::PUT {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<Peer>().copied();
    let action = format!("{} {}", req.method(), req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let refuse = |status: StatusCode, text: &str| {
        if let Some(peer) = peer {
            s.audit("-", peer, &action, "", &format!("refused: {text}"));
        }
        ApiError(status, text.to_owned()).into_response()
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 64 KiB",
        );
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(s.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 64 KiB",
        ),
        Err(_) => refuse(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
    }
}

/// Serves one TCP connection: TLS within `timeout`, then HTTP/1.1 with a header deadline.
pub(crate) async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    state: Shared,
    timeout: Duration,
) {
    let refused = |text: String| {
        tracing::info!("{peer}: {text}");
        state.audit("-", Peer(peer), "connect", "", &format!("refused: {text}"));
    };
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refused(format!("TLS handshake failed (plain HTTP?): {e}")),
        Err(_) => return refused("TLS handshake too slow; closed".into()),
    };
    let service = hyper_util::service::TowerToHyperService::new(app.layer(Extension(Peer(peer))));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    if let Err(e) = conn.await {
        tracing::info!("{peer}: {e}");
    }
}

/// An API error: a status and one line, sent as `{"error": ...}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorReply { error: self.1 })).into_response()
    }
}

pub(crate) fn bad(text: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, text.into())
}

/// Who is calling.
pub(crate) struct Caller {
    pub(crate) user: String,
    pub(crate) role: Role,
}

/// Admins act on every session, others on their own.
pub(crate) fn caller_admin(c: &Caller) -> bool {
    c.role == Role::Admin
}

impl State {
    pub(crate) fn audit(&self, user: &str, peer: Peer, action: &str, target: &str, result: &str) {
        self.audit.write(&Entry {
            time: now(),
            user,
            peer: &peer.0.to_string(),
            action,
            target,
            result,
        });
    }

    /// The caller behind the bearer token, if it may act as `need`; refusals audited.
    pub(crate) fn caller(
        &self,
        headers: &HeaderMap,
        peer: Peer,
        action: &str,
        need: Role,
    ) -> Result<Caller, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let found = token.and_then(|t| {
            let tokens = self.tokens.lock().ok()?;
            tokens.get(t).map(|k| (k.user.clone(), k.role, k.expires))
        });
        let refuse = |user: &str, status, text: &str| {
            self.audit(user, peer, action, "", &format!("refused: {text}"));
            Err(ApiError(status, text.to_owned()))
        };
        match found {
            None => refuse(
                "-",
                StatusCode::UNAUTHORIZED,
                "not logged in (no or unknown session token)",
            ),
            Some((user, _, expires)) if Instant::now() >= expires => {
                if let (Some(t), Ok(mut tokens)) = (token, self.tokens.lock()) {
                    tokens.remove(t);
                }
                refuse(
                    &user,
                    StatusCode::UNAUTHORIZED,
                    "session token expired: log in again",
                )
            }
            Some((user, role, _)) if role < need => refuse(
                &user,
                StatusCode::FORBIDDEN,
                &format!("user {user} has role {role}; this needs {need}"),
            ),
            Some((user, role, _)) => {
                // A token in use stays valid: expiry counts from the last call.
                if let (Some(t), Ok(mut tokens)) = (token, self.tokens.lock()) {
                    if let Some(k) = tokens.get_mut(t) {
                        k.expires = Instant::now() + self.token_ttl;
                    }
                }
                Ok(Caller { user, role })
            }
        }
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    state: &State,
    peer: Peer,
    action: &str,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let result = body
        .map_err(|e| ApiError(e.status(), format!("request body: {}", e.body_text())))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| bad(format!("malformed JSON request: {e}")))
        });
    if let Err(e) = &result {
        state.audit("-", peer, action, "", &format!("refused: {}", e.1));
    }
    result
}

/// Runs blocking host work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        ))
    })
}

async fn not_found(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    uri: axum::http::Uri,
) -> ApiError {
    s.audit("-", peer, &format!("? {uri}"), "", "refused: no such call");
    ApiError(StatusCode::NOT_FOUND, format!("no such call: {uri}"))
}

async fn login(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<LoginReply>, ApiError> {
    const ACTION: &str = "POST /api/v1/login";
    let req: LoginRequest = parse(&s, peer, ACTION, body)?;
    let state = Arc::clone(&s);
    let (user, password) = (req.user.clone(), req.password);
    let role = blocking(move || Ok(state.verify(&user, &password))).await?;
    let Some(role) = role else {
        // Each failure for a name (or from an address) slows the next answer, up to 8 s.
        let key = format!("{}|{}", req.user, peer.0.ip());
        let n = s.failures.lock().map_or(1, |mut f| {
            let n = f.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        });
        s.audit(
            &req.user,
            peer,
            ACTION,
            &req.user,
            "refused: wrong user name or password",
        );
        let delay =
            Duration::from_millis(500u64 << n.min(4).saturating_sub(1)).min(Duration::from_secs(8));
        tokio::time::sleep(delay).await;
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong user name or password".into(),
        ));
    };
    if let Ok(mut f) = s.failures.lock() {
        f.remove(&format!("{}|{}", req.user, peer.0.ip()));
    }
    let token = super::random_token();
    if let Ok(mut tokens) = s.tokens.lock() {
        let now = Instant::now();
        // Expired tokens stay known for an hour, so their holders hear "expired".
        tokens.retain(|_, t| t.expires + Duration::from_secs(3600) > now);
        tokens.insert(
            token.clone(),
            Token {
                user: req.user.clone(),
                role,
                expires: now + s.token_ttl,
            },
        );
    }
    s.audit(&req.user, peer, ACTION, &req.user, "ok");
    Ok(Json(LoginReply {
        token,
        expires_in_secs: s.token_ttl.as_secs(),
        role: role.to_string(),
    }))
}

async fn logout(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let c = s.caller(&headers, peer, "POST /api/v1/logout", Role::Readonly)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(t), Ok(mut tokens)) = (token, s.tokens.lock()) {
        tokens.remove(t);
    }
    s.audit(&c.user, peer, "POST /api/v1/logout", "", "ok");
    Ok(StatusCode::NO_CONTENT)
}

fn host_error(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

async fn ping(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
) -> Result<Json<PingReply>, ApiError> {
    let c = s.caller(&headers, peer, "GET /api/v1/ping", Role::Readonly)?;
    let root = s.root.clone();
    let reply = blocking(move || {
        let host = host::Host::open(&root).map_err(host_error)?;
        Ok(PingReply {
            host: host.name().to_owned(),
            root: host.root().display().to_string(),
            vms: host.entries().len(),
            user: c.user.clone(),
            role: c.role.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    })
    .await;
    let user = reply.as_ref().map(|r| r.user.clone()).unwrap_or_default();
    s.audit(&user, peer, "GET /api/v1/ping", "", result_text(&reply));
    reply.map(Json)
}

pub(crate) fn result_text<T>(r: &Result<T, ApiError>) -> &str {
    match r {
        Ok(_) => "ok",
        Err(e) => &e.1,
    }
}

#[derive(serde::Deserialize)]
struct SpecQuery {
    spec: Option<String>,
}

async fn vms(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<SpecQuery>,
) -> Result<Json<VmList>, ApiError> {
    const ACTION: &str = "GET /api/v1/vms";
    let c = s.caller(&headers, peer, ACTION, Role::Readonly)?;
    let root = s.root.clone();
    let spec = q.spec.clone().unwrap_or_else(|| "any:".to_owned());
    let target = spec.clone();
    let reply = blocking(move || super::routes_host::lookup(&root, &spec)).await;
    s.audit(&c.user, peer, ACTION, &target, result_text(&reply));
    reply.map(Json)
}

async fn inventory(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
) -> Result<Json<Inventory>, ApiError> {
    const ACTION: &str = "GET /api/v1/inventory";
    let c = s.caller(&headers, peer, ACTION, Role::Readonly)?;
    let root = s.root.clone();
    let reply = blocking(move || super::routes_host::inventory(&root)).await;
    s.audit(&c.user, peer, ACTION, "", result_text(&reply));
    reply.map(Json)
}

async fn start_backup(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<BackupSession>, ApiError> {
    const ACTION: &str = "POST /api/v1/backups";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let req: BackupRequest = parse(&s, peer, ACTION, body)?;
    let target = req.vm.clone();
    let state = Arc::clone(&s);
    let user = c.user.clone();
    let reply = blocking(move || {
        let ctx = super::sessions::Context {
            root: state.root.clone(),
            dir: state.dir.clone(),
            exports: Arc::clone(&state.exports),
            lease: state.lease,
            nbd_port: state.nbd_port,
        };
        state.sessions.start(ctx, &user, req).map_err(host_error)
    })
    .await;
    let result = match &reply {
        Ok(r) => format!("ok: session {}", r.id),
        Err(e) => e.1.clone(),
    };
    s.audit(&c.user, peer, ACTION, &target, &result);
    reply.map(Json)
}

fn no_session(id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no backup session {id} of yours (it ended, or its lease ran out)"),
    )
}

async fn keepalive(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    const ACTION: &str = "POST /api/v1/backups/{id}/keepalive";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    if s.sessions
        .keepalive(&id, &c.user, c.role == Role::Admin, s.lease)
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        s.audit(&c.user, peer, ACTION, &id, "refused: no such session");
        Err(no_session(&id))
    }
}

async fn finish_backup(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Finished>, ApiError> {
    const ACTION: &str = "DELETE /api/v1/backups/{id}";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let state = Arc::clone(&s);
    let (sid, user, admin) = (id.clone(), c.user.clone(), c.role == Role::Admin);
    let reply = blocking(move || match state.sessions.finish(&sid, &user, admin) {
        None => Err(no_session(&sid)),
        Some(Ok(events)) => Ok(Finished { events }),
        Some(Err(e)) => Err(host_error(e)),
    })
    .await;
    s.audit(&c.user, peer, ACTION, &id, result_text(&reply));
    reply.map(Json)
}

async fn backup_file(
    Extension(peer): Extension<Peer>,
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "GET /api/v1/backups/{id}/files/{name}";
    let c = s.caller(&headers, peer, ACTION, Role::Backup)?;
    let Some(file) = s.sessions.file(&id, &c.user, c.role == Role::Admin, &name) else {
        s.audit(
            &c.user,
            peer,
            ACTION,
            &format!("{id}/{name}"),
            "refused: no such file",
        );
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no file {name} in backup session {id}"),
        ));
    };
    let reply = super::routes_host::file_body(file).await;
    s.audit(
        &c.user,
        peer,
        ACTION,
        &format!("{id}/{name}"),
        result_text(&reply),
    );
    reply
}

pub(crate) fn octets(len: u64, body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    r
}
