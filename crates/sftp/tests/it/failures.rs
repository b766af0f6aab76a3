//! What goes wrong on the remote side: missing parents, permissions, dropped
//! connections, cancellation. None may panic or hang.

use crate::server::SftpServer;
use crate::util::{random_bytes, within, Recorder};
use sftp::{Error, RemoteErrorKind};
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use testkit::sshd::Server;

#[test]
fn missing_remote_parent_is_a_clear_error() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    let path = server.path("no/such/parent/file");
    let err = session
        .upload(&b"x"[..], &path, &mut ())
        .expect_err("missing parent");
    eprintln!("error: {err}");
    assert!(
        matches!(&err, Error::ParentMissing { parent, .. } if *parent == server.path("no/such/parent")),
        "{err}"
    );
    let err = session
        .mkdir(&server.path("no/vm37"))
        .expect_err("mkdir below missing");
    assert!(
        matches!(&err, Error::ParentMissing { op: "mkdir", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn permission_denied_is_reported() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    // Root bypasses file modes; sysfs refuses new files even to root.
    let err = session
        .upload(&b"x"[..], "/sys/vcb-sftp-test", &mut ())
        .expect_err("sysfs");
    eprintln!("error: {err}");
    assert!(
        matches!(
            &err,
            Error::Remote {
                kind: RemoteErrorKind::PermissionDenied,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = session
        .download("/nonexistent-vcb/x", Vec::new(), &mut ())
        .expect_err("missing");
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn connection_refused() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut url = server.url();
    url.port = Some(1); // nothing listens on port 1
    let err = sftp::connect(&url, &server.options())
        .err()
        .expect("refused");
    assert!(matches!(&err, Error::Connect { port: 1, .. }), "{err}");
}

/// Signals the server's session processes once `after` bytes went through.
struct KillAfter {
    server: Arc<Server>,
    after: u64,
    seen: u64,
    signal: i32,
}

impl sftp::Progress for KillAfter {
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.seen += bytes;
        if self.seen >= self.after && self.seen - bytes < self.after {
            self.server.signal_sessions(self.signal);
        }
        ControlFlow::Continue(())
    }
}

/// An endless source, so the upload can only end by failing.
struct Endless;

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        buf.fill(0x5a);
        Ok(buf.len())
    }
}

fn assert_dropped(err: &Error) {
    eprintln!("error: {err}");
    assert!(
        matches!(err, Error::Disconnected { .. } | Error::Timeout { .. }),
        "expected a lost connection: {err}"
    );
}

#[test]
fn server_killed_mid_upload() {
    let Some(server) = Server::start() else {
        return;
    };
    let server = Arc::new(server);
    let session = server.connect();
    let target = server.path("killed-upload");
    let mut progress = KillAfter {
        server: server.clone(),
        after: 4 << 20,
        seen: 0,
        signal: libc::SIGKILL,
    };
    let err = within(30, "upload to a killed server", move || {
        session.upload(Endless, &target, &mut progress)
    })
    .expect_err("upload to a killed server");
    assert_dropped(&err);
}

#[test]
fn server_killed_mid_download() {
    let Some(server) = Server::start() else {
        return;
    };
    let server = Arc::new(server);
    let path = server.path("big");
    std::fs::write(&path, random_bytes(64 << 20)).expect("write source");
    let session = server.connect();
    let mut progress = KillAfter {
        server: server.clone(),
        after: 2 << 20,
        seen: 0,
        signal: libc::SIGKILL,
    };
    let err = within(30, "download from a killed server", move || {
        session.download(&path, std::io::sink(), &mut progress)
    })
    .expect_err("download from a killed server");
    assert_dropped(&err);
    // A new connection works again (the listener survived).
    drop(server.connect());
}

#[test]
fn operations_after_the_connection_dropped_fail_cleanly() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    server.kill_sessions();
    let root = server.root();
    let err = within(30, "stat on a dead session", move || session.stat(&root))
        .expect_err("dead session");
    assert_dropped(&err);
}

#[test]
fn cancel_through_progress() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    let mut progress = Recorder {
        cancel_after: Some(1 << 20),
        ..Recorder::default()
    };
    let err = session
        .upload(Endless, &server.path("cancelled"), &mut progress)
        .expect_err("cancelled");
    assert!(
        matches!(&err, Error::Cancelled { op: "upload", .. }),
        "{err}"
    );
    // The session stays usable.
    assert!(session.exists(&server.path("cancelled")).expect("exists"));
}

#[test]
fn frozen_server_times_out() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut opts = server.options();
    opts.timeout = std::time::Duration::from_secs(2);
    let session = sftp::connect(&server.url(), &opts).expect("connect");
    server.signal_sessions(libc::SIGSTOP);
    let root = server.root();
    let err =
        within(20, "stat on a frozen server", move || session.stat(&root)).expect_err("frozen");
    eprintln!("error: {err}");
    assert!(
        matches!(
            &err,
            Error::Timeout {
                op: "stat",
                secs: 2,
                ..
            }
        ),
        "{err}"
    );
    server.signal_sessions(libc::SIGCONT);
}

#[test]
fn silent_port_times_out_on_connect() {
    let Some(server) = Server::start() else {
        return;
    };
    // Accepts TCP (kernel backlog) but never speaks SSH.
    let silent = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let mut url = server.url();
    url.port = Some(silent.local_addr().expect("addr").port());
    let mut opts = server.options();
    opts.timeout = std::time::Duration::from_secs(1);
    let err = within(20, "connect to a silent port", move || {
        sftp::connect(&url, &opts).err()
    })
    .expect("silent port must fail");
    eprintln!("error: {err}");
    assert!(
        matches!(
            &err,
            Error::Timeout {
                op: "connect",
                secs: 1,
                ..
            }
        ),
        "{err}"
    );
    drop(silent);
}

/// Fails after handing out `ok` bytes.
struct FailingReader {
    ok: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("disk image read error"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(1);
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn local_stream_errors_name_the_remote_file() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    let path = server.path("half");
    let err = session
        .upload(FailingReader { ok: 3 << 20 }, &path, &mut ())
        .expect_err("reader fails");
    assert!(
        matches!(&err, Error::LocalStream { op: "upload", location, .. } if location.ends_with("/half")),
        "{err}"
    );
    session
        .upload(&b"data"[..], &path, &mut ())
        .expect("session still usable");
    let err = session
        .download(&path, FailingWriter, &mut ())
        .expect_err("writer fails");
    assert!(
        matches!(&err, Error::LocalStream { op: "download", .. }),
        "{err}"
    );
}

struct FailingWriter;

impl std::io::Write for FailingWriter {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("local disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn server_frozen_mid_upload_times_out_promptly() {
    let Some(server) = Server::start() else {
        return;
    };
    let server = Arc::new(server);
    let mut opts = server.options();
    opts.timeout = std::time::Duration::from_secs(2);
    let session = sftp::connect(&server.url(), &opts).expect("connect");
    let target = server.path("frozen-upload");
    let mut progress = KillAfter {
        server: server.clone(),
        after: 2 << 20,
        seen: 0,
        signal: libc::SIGSTOP,
    };
    let started = std::time::Instant::now();
    let err = within(20, "upload to a frozen server", move || {
        session.upload(Endless, &target, &mut progress)
    })
    .expect_err("frozen server");
    eprintln!("error after {:?}: {err}", started.elapsed());
    assert!(matches!(&err, Error::Timeout { op: "write", .. }), "{err}");
    server.signal_sessions(libc::SIGCONT);
}

#[test]
fn remote_file_reports_a_killed_server() {
    let Some(server) = Server::start() else {
        return;
    };
    let server = Arc::new(server);
    let session = server.connect();
    let target = server.path("killed-remote-file");
    let killer = server.clone();
    let err = within(30, "remote file on a killed server", move || {
        let mut f = session.create_file(&target)?;
        let chunk = vec![7u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            if offset == 4 << 20 {
                killer.kill_sessions();
            }
            f.write_at(offset, &chunk)?;
            offset += chunk.len() as u64;
            if offset > 1 << 30 {
                return f.finish();
            }
        }
    })
    .expect_err("writes to a killed server");
    assert_dropped(&err);
}

#[test]
fn issue_10_a_server_sending_more_than_it_stated_or_listing_too_much_is_refused() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    let file = server.remote("grown.bin");
    std::fs::write(&file, vec![7u8; 1 << 20]).expect("write");
    let path = file.to_str().expect("utf-8");
    // The listing said 10 bytes; the file holds a MiB.
    let mut got = Vec::new();
    let err = session
        .download_at_most(path, &mut got, Some(10), &mut ())
        .expect_err("more than stated");
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
    assert!(
        got.len() <= 64 << 10,
        "stopped near the stated size: {}",
        got.len()
    );
    let mut exact = Vec::new();
    session
        .download_at_most(path, &mut exact, Some(1 << 20), &mut ())
        .expect("exact size");
    assert_eq!(exact.len(), 1 << 20);
    // A folder with more entries than allowed.
    let dir = server.remote("many");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..20 {
        std::fs::write(dir.join(format!("f{i}")), "").expect("file");
    }
    let mut opts = server.options();
    opts.max_dir_entries = 10;
    let small = sftp::connect(&server.url(), &opts).expect("connect");
    let err = small
        .list_dir(dir.to_str().expect("utf-8"))
        .expect_err("too many entries");
    assert!(err.to_string().contains("more than 10 entries"), "{err}");
}
