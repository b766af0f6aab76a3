//! `vcb hostd`: the HTTPS API (axum over tokio-rustls) and the NBD server.
//!
//! Every connection gets a TLS handshake deadline and a header deadline (a slow client
//! holds one task, never a thread, and is dropped); request bodies are capped; the
//! number of connections is bounded. Blocking host work (snapshots, lookups) runs on
//! tokio's blocking pool.

mod exports;
mod restores;
mod routes;
mod routes_host;
mod routes_restore;
mod routes_vm;
mod sessions;

use crate::audit::AuditLog;
use crate::users::{Role, Users};
use crate::{tls, Error, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The host's root folder.
    pub root: PathBuf,
    /// The HTTPS API's address.
    pub listen: SocketAddr,
    /// The NBD server's address (port 0: any free port, told to clients per session).
    pub nbd_listen: SocketAddr,
    /// How long a session token lives.
    pub token_ttl: Duration,
    /// How long a backup session lives without a keepalive.
    pub lease: Duration,
    /// How long a client may take for its TLS handshake and request headers.
    pub handshake_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Serve NBD without TLS too (the `nbd` transport, for a trusted backup network).
    pub allow_plain_nbd: bool,
}

impl Config {
    /// Defaults for the host in `root` listening on `listen`.
    pub fn new(root: PathBuf, listen: SocketAddr) -> Config {
        let nbd_listen = SocketAddr::new(listen.ip(), 0);
        Config {
            root,
            listen,
            nbd_listen,
            token_ttl: Duration::from_secs(30 * 60),
            lease: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 256,
            allow_plain_nbd: false,
        }
    }
}

/// A logged-in user's token.
struct Token {
    user: String,
    role: Role,
    expires: Instant,
}

/// What every request handler shares.
pub(crate) struct State {
    root: PathBuf,
    dir: PathBuf,
    /// The users, and when `users.json` was changed when they were read (`vcb host
    /// user add` while the agent runs takes effect at the next login).
    users: RwLock<(Users, Option<std::time::SystemTime>)>,
    audit: AuditLog,
    tokens: Mutex<HashMap<String, Token>>,
    failures: Mutex<HashMap<String, u32>>,
    sessions: Arc<sessions::Sessions>,
    restores: restores::Restores,
    exports: Arc<exports::ExportTable>,
    token_ttl: Duration,
    lease: Duration,
    nbd_port: u16,
    /// How long a request body (or a piece of an upload) may take.
    body_timeout: Duration,
}

fn users_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(dir.join(crate::users::USERS_FILE))
        .and_then(|m| m.modified())
        .ok()
}

impl State {
    /// The role of `name` with `password`, reading `users.json` again when it changed.
    pub(crate) fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let now = users_mtime(&self.dir);
        let stale = self.users.read().ok().is_some_and(|u| u.1 != now);
        if stale {
            match Users::load(&self.dir) {
                Ok(fresh) => {
                    if let Ok(mut u) = self.users.write() {
                        *u = (fresh, now);
                    }
                }
                Err(e) => tracing::error!("users: {e}; keeping the users read before"),
            }
        }
        self.users.read().ok()?.0.verify(name, password)
    }
}

/// A random 256-bit token in hex.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}

/// What `run` reports once it listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// The HTTPS address.
    pub api: SocketAddr,
    /// The NBD address.
    pub nbd: SocketAddr,
}

/// Serve until `stop` resolves (or SIGINT/SIGTERM when `stop` is `None`). `ready` hears
/// the addresses once both servers listen. Sessions a killed agent left are finished
/// first.
///
/// # Errors
/// Missing certificate or users file, addresses that cannot be bound.
pub fn run(
    config: &Config,
    ready: &mut dyn FnMut(Listening, &[String]),
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<()> {
    let dir = crate::agent_dir(&config.root);
    let nbd_tls = tls::server_config(&dir)?;
    // One certificate for both: the API's configuration differs only by its ALPN.
    let mut api_tls = (*nbd_tls).clone();
    api_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls_config = Arc::new(api_tls);
    let users = Users::load(&dir)?;
    let audit = AuditLog::open(&dir).map_err(|e| Error::io(&dir, "open audit log", e))?;
    let cleaned = sessions::recover(&config.root, &dir);
    restores::recover(&dir);
    let exports = Arc::new(exports::ExportTable::default());
    let nbd = nbd::Server::start(
        config.nbd_listen,
        nbd::ServerConfig {
            tls: Some(nbd_tls),
            require_tls: !config.allow_plain_nbd,
            ..Default::default()
        },
        Arc::clone(&exports) as Arc<dyn nbd::Exports>,
    )
    .map_err(|e| Error::io(config.nbd_listen.to_string(), "listen (NBD)", e))?;
    let state = Arc::new(State {
        root: config.root.clone(),
        dir,
        users: RwLock::new((users, users_mtime(&crate::agent_dir(&config.root)))),
        audit,
        tokens: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        sessions: Arc::new(sessions::Sessions::default()),
        restores: restores::Restores::default(),
        exports,
        token_ttl: config.token_ttl,
        lease: config.lease,
        nbd_port: nbd.local_addr().port(),
        body_timeout: config.handshake_timeout,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio", "start", e))?;
    let result = runtime.block_on(serve(
        config,
        state,
        tls_config,
        nbd.local_addr(),
        ready,
        &cleaned,
        stop,
    ));
    drop(nbd);
    result
}

async fn serve(
    config: &Config,
    state: Arc<State>,
    tls_config: Arc<rustls::ServerConfig>,
    nbd_addr: SocketAddr,
    ready: &mut dyn FnMut(Listening, &[String]),
    cleaned: &[String],
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(config.listen.to_string(), "listen", e))?;
    let api = listener
        .local_addr()
        .map_err(|e| Error::io(config.listen.to_string(), "listen", e))?;
    ready(Listening { api, nbd: nbd_addr }, cleaned);
    let app = routes::router(Arc::clone(&state));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let stopped = async move {
        match stop {
            Some(rx) => {
                let _ = rx.await;
            }
            None => wait_for_signal().await,
        }
    };
    tokio::pin!(stopped);
    let reaper = Arc::clone(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let r = Arc::clone(&reaper);
            let _ = tokio::task::spawn_blocking(move || r.restores.reap(&r.exports)).await;
        }
    });
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!("{peer}: too many connections; closed");
            continue;
        };
        let (acceptor, app, timeout) = (acceptor.clone(), app.clone(), config.handshake_timeout);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            routes::connection(tcp, peer, acceptor, app, state, timeout).await;
            drop(permit);
        });
    }
    tracing::info!("stopping: {} sessions end", state.sessions.count());
    let sessions = Arc::clone(&state.sessions);
    let _ = tokio::task::spawn_blocking(move || sessions.finish_all()).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
