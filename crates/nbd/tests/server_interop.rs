//! vcb's NBD server read by peers nobody here wrote: libnbd's `nbdinfo` and `nbdcopy`,
//! and `qemu-img convert`, all over TLS (STARTTLS), and by vcb's own client.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const SIZE: u64 = 8 << 20;

/// The first 3 MiB hold a pattern, the rest is a hole.
struct Mem(Arc<Vec<u8>>);

impl nbd::Export for Mem {
    fn size(&self) -> u64 {
        SIZE
    }
    fn open(&self) -> io::Result<Box<dyn nbd::Backend>> {
        Ok(Box::new(Mem(Arc::clone(&self.0))))
    }
}

impl nbd::Backend for Mem {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn extents(&mut self, offset: u64, len: u64) -> io::Result<Vec<(u64, u32)>> {
        let data_end = 3u64 << 20;
        let end = offset + len;
        let mut out = Vec::new();
        if offset < data_end {
            out.push((data_end.min(end) - offset, 0));
        }
        if end > data_end {
            out.push((
                end - offset.max(data_end),
                nbd::STATE_HOLE | nbd::STATE_ZERO,
            ));
        }
        Ok(out)
    }
}

struct Table(Arc<Vec<u8>>);

impl nbd::Exports for Table {
    fn find(&self, name: &str) -> Option<Arc<dyn nbd::Export>> {
        (name == "ticket-1").then(|| Arc::new(Mem(Arc::clone(&self.0))) as Arc<dyn nbd::Export>)
    }
}

fn content() -> Vec<u8> {
    let mut v = vec![0u8; SIZE as usize];
    for (i, b) in v[..3 << 20].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    v
}

/// A server with a self-signed certificate for 127.0.0.1, written as `ca-cert.pem` in
/// `dir` (the file name libnbd and QEMU look for).
fn server(dir: &Path, data: Arc<Vec<u8>>) -> (nbd::Server, Arc<rustls::ClientConfig>) {
    // A CA signing the server's certificate (QEMU insists on a CA in ca-cert.pem).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vcb test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca.pem()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = nbd::ServerConfig {
        tls: Some(Arc::new(tls)),
        require_tls: true,
        ..Default::default()
    };
    let s = nbd::Server::start(
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        config,
        Arc::new(Table(data)),
    )
    .unwrap();
    (s, Arc::new(client))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn vcb_client_reads_its_server_over_tls_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = Arc::new(content());
    let (s, client) = server(dir.path(), Arc::clone(&data));
    let tls = nbd::Tls {
        config: client,
        server_name: "127.0.0.1".try_into().unwrap(),
    };
    let mut c =
        nbd::Client::connect_tcp(s.local_addr(), Some(&tls), "ticket-1", nbd::BASE_ALLOCATION)
            .unwrap();
    assert_eq!(c.size(), SIZE);
    assert!(c.read_only());
    let mut buf = vec![0u8; SIZE as usize];
    c.read_at(0, &mut buf).unwrap();
    assert!(buf == *data);
    let map = c.block_status(0, SIZE).unwrap();
    assert_eq!(map.len(), 2);
    assert_eq!((map[0].len, map[0].flags), (3 << 20, 0));
    assert_eq!(map[1].flags & nbd::STATE_HOLE, nbd::STATE_HOLE);
    let err = c.write_at(0, b"x").unwrap_err().to_string();
    assert!(err.contains("not permitted"), "{err}");
    assert!(c.read_at(SIZE - 1, &mut [0u8; 2]).is_err());
    c.close();
    let err = nbd::Client::connect_tcp(s.local_addr(), None, "ticket-1", nbd::BASE_ALLOCATION)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("TLS is required"), "{err}");
    let err = nbd::Client::connect_tcp(s.local_addr(), Some(&tls), "guess", nbd::BASE_ALLOCATION)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no such export"), "{err}");
}

#[test]
fn nbdinfo_nbdcopy_and_qemu_img_read_the_server_over_tls() {
    if !testkit::tools::require_tools(&["nbdinfo", "nbdcopy", "qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = Arc::new(content());
    let (s, _) = server(dir.path(), Arc::clone(&data));
    let port = s.local_addr().port();
    let uri = format!(
        "nbds://127.0.0.1:{port}/ticket-1?tls-certificates={}",
        dir.path().display()
    );
    let info = run(Command::new("nbdinfo").arg("--json").arg(&uri));
    assert!(info.contains(&format!("\"export-size\": {SIZE}")), "{info}");
    assert!(info.contains("\"is_read_only\": true"), "{info}");
    let map = run(Command::new("nbdinfo").arg("--map").arg(&uri));
    assert!(map.contains("data") && map.contains("hole"), "{map}");
    let copied = dir.path().join("copied.raw");
    run(Command::new("nbdcopy").arg(&uri).arg(&copied));
    assert!(std::fs::read(&copied).unwrap() == *data);
    let converted = dir.path().join("converted.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw", "--object"])
        .arg(format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.path().display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host=127.0.0.1,port={port},export=ticket-1,tls-creds=tls0"
        ))
        .arg(&converted));
    assert!(std::fs::read(&converted).unwrap() == *data);
}
