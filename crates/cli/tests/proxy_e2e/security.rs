//! Hostile and broken clients of the agent: each is refused with a clear error and
//! audited, and the agent keeps serving others in bounded memory.

use super::agent::{add_user, audit, Agent, Proxy};
use super::util::Env;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn addr(agent: &Agent) -> String {
    agent.url.trim_start_matches("https://").to_owned()
}

/// A TLS connection trusting whatever certificate the agent has.
fn tls(agent: &Agent, trust: &std::path::Path) -> Tls {
    let policy = ::agent::tls::TrustPolicy::Pinned {
        file: trust.to_path_buf(),
        accept_new: true,
    };
    let (config, _) = ::agent::tls::client_config(&addr(agent), &policy).unwrap();
    let conn = rustls::ClientConnection::new(config, "127.0.0.1".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr(agent)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends `request` and returns the status and body of the reply.
fn exchange(agent: &Agent, trust: &std::path::Path, request: &[u8]) -> (u16, String) {
    let mut s = tls(agent, trust);
    // A server refusing early may close before it has read everything.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn rss_kib(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Whether the audit log gets a result containing `needle` within a few seconds (a
/// refusal is written after the connection closes).
fn audited(env: &Env, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = audit(env)
            .iter()
            .any(|e| e["result"].as_str().unwrap_or_default().contains(needle));
        if found || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_requests_are_refused_audited_and_the_agent_keeps_serving() {
    let env = Env::new();
    env.ok("vcb", &["host", "cert"]);
    let proxy = Proxy::new();
    let pw = add_user(&env, &proxy, "backup1", "backup");
    let agent = Agent::start(&env, &["--token-ttl", "2", "--handshake-timeout", "2"]);
    let trust = proxy.path("trust");
    let password = std::fs::read_to_string(&pw).unwrap().trim().to_owned();
    let login = || {
        let policy = ::agent::tls::TrustPolicy::Pinned {
            file: trust.clone(),
            accept_new: true,
        };
        ::agent::client::Agent::login(&agent.url, "backup1", &password, policy)
    };
    let client = login().unwrap();
    client.ping().unwrap();

    // Malformed and oversized JSON.
    let (status, body) = exchange(&agent, &trust, &post("/api/v1/login", b"{\"user\": "));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed JSON request"), "{body}");
    let (status, body) = exchange(
        &agent,
        &trust,
        &post("/api/v1/login", b"{\"user\": 1, \"password\": []}"),
    );
    assert_eq!(status, 400, "{body}");
    // A body declared larger than any request may be: refused before it is read.
    let big = b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{";
    let (status, _) = exchange(&agent, &trust, big);
    assert_eq!(status, 413);
    assert!(audited(&env, "malformed JSON request"));
    // A body declared and never sent: refused once the deadline passes.
    let started = Instant::now();
    let (status, _) = exchange(
        &agent,
        &trust,
        b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user\"",
    );
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(audited(&env, "request body too slow"));
    // Unknown calls and no token.
    let (status, body) = exchange(
        &agent,
        &trust,
        b"GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = exchange(
        &agent,
        &trust,
        b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not logged in"), "{body}");
    let (status, _) = exchange(&agent, &trust, b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 00\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401);

    // Plain HTTP on the TLS port: no answer but a closed connection, and an audit line.
    let mut plain = TcpStream::connect(addr(&agent)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
        "plain HTTP answered"
    );
    assert!(audited(&env, "TLS handshake failed"));

    // Slow clients: 40 connections that never finish a handshake, and one that never
    // finishes its headers, while others are served; all are dropped after the deadline.
    let before = rss_kib(&agent);
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let s = TcpStream::connect(addr(&agent)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s
        })
        .collect();
    let mut half = tls(&agent, &trust);
    half.write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let served = Instant::now();
    login().unwrap().ping().unwrap();
    assert!(
        served.elapsed() < Duration::from_secs(5),
        "others waited for the slow ones"
    );
    for s in &mut slow {
        let mut b = [0u8; 16];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "a slow client was kept"
        );
    }
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert!(audited(&env, "TLS handshake too slow"));
    for _ in 0..20 {
        let (status, _) = exchange(&agent, &trust, big);
        assert_eq!(status, 413);
    }
    let after = rss_kib(&agent);
    assert!(
        after < before + 64 * 1024,
        "memory grew from {before} to {after} KiB"
    );

    // An expired token: one clear line, audited; logging in again works.
    std::thread::sleep(Duration::from_millis(2500));
    let err = client.ping().unwrap_err().to_string();
    assert!(err.contains("session token expired: log in again"), "{err}");
    assert!(audited(&env, "session token expired"));
    login().unwrap().ping().unwrap();
}
