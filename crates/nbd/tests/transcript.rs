//! The client against recorded server transcripts: the replies QEMU's NBD server gives
//! (built by hand from the protocol), then the same with hostile changes, each of which
//! must fail with an error (never a panic, never an unbounded allocation).

use std::io::Write;
use std::os::unix::net::UnixStream;

const CTX: &[u8] = b"qemu:dirty-bitmap:vcb-ctk-1";

fn rep(opt: u32, typ: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&typ.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn handshake(size: u64) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&0x4e42_444d_4147_4943u64.to_be_bytes());
    s.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    s.extend_from_slice(&3u16.to_be_bytes());
    s.extend(rep(8, 1, &[]));
    let mut meta = 1u32.to_be_bytes().to_vec();
    meta.extend_from_slice(CTX);
    s.extend(rep(10, 4, &meta));
    s.extend(rep(10, 1, &[]));
    let mut info = 0u16.to_be_bytes().to_vec();
    info.extend_from_slice(&size.to_be_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    s.extend(rep(7, 3, &info));
    s.extend(rep(7, 1, &[]));
    s
}

fn status(cookie: u64, descriptors: &[(u32, u32)], len_override: Option<u32>) -> Vec<u8> {
    let mut p = 1u32.to_be_bytes().to_vec();
    for (l, f) in descriptors {
        p.extend_from_slice(&l.to_be_bytes());
        p.extend_from_slice(&f.to_be_bytes());
    }
    let mut s = Vec::new();
    s.extend_from_slice(&0x668e_33efu32.to_be_bytes());
    s.extend_from_slice(&1u16.to_be_bytes());
    s.extend_from_slice(&5u16.to_be_bytes());
    s.extend_from_slice(&cookie.to_be_bytes());
    s.extend_from_slice(&len_override.unwrap_or(p.len() as u32).to_be_bytes());
    s.extend(p);
    s
}

fn session(server: Vec<u8>, size: u64) -> nbd::Result<Vec<nbd::Extent>> {
    let (client, mut peer) = UnixStream::pair().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = peer.write_all(&server);
        // Keep the peer open a moment so the client reads everything before EOF.
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
    let out = nbd::Client::over(client, "vcb-ctk", std::str::from_utf8(CTX).unwrap())
        .and_then(|mut c| c.block_status(0, size));
    feeder.join().unwrap();
    out
}

#[test]
fn a_qemu_like_transcript_reads_back_its_dirty_areas() {
    let mut s = handshake(1 << 20);
    s.extend(status(
        1,
        &[(65536, 0), (65536, 1), ((1 << 20) - 131072, 0)],
        None,
    ));
    let dirty: Vec<_> = session(s, 1 << 20)
        .unwrap()
        .into_iter()
        .filter(|e| e.flags & 1 == 1)
        .map(|e| (e.offset, e.len))
        .collect();
    assert_eq!(dirty, vec![(65536, 65536)]);
}

#[test]
fn descriptors_past_the_request_are_clipped() {
    let mut s = handshake(1 << 20);
    s.extend(status(1, &[(u32::MAX, 1)], None));
    let got = session(s, 1 << 20).unwrap();
    assert_eq!(
        got,
        vec![nbd::Extent {
            offset: 0,
            len: 1 << 20,
            flags: 1
        }]
    );
}

#[test]
fn hostile_servers_fail_cleanly() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not nbd", b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
        ("truncated greeting", handshake(1 << 20)[..10].to_vec()),
        ("huge option reply", {
            let mut s = handshake(1 << 20)[..18].to_vec();
            let mut r = rep(8, 1, &[]);
            r[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
            s.extend(r);
            s
        }),
        ("error reply", {
            let mut s = handshake(1 << 20)[..18].to_vec();
            s.extend(rep(8, 1 << 31 | 1, b"unsupported"));
            s
        }),
        ("no progress", {
            let mut s = handshake(1 << 20);
            s.extend(status(1, &[(0, 1)], None));
            s
        }),
        ("huge chunk", {
            let mut s = handshake(1 << 20);
            s.extend(status(1, &[], Some(u32::MAX)));
            s
        }),
        ("wrong cookie", {
            let mut s = handshake(1 << 20);
            s.extend(status(9, &[(1 << 20, 1)], None));
            s
        }),
        ("cut short", {
            let mut s = handshake(1 << 20);
            s.extend(&status(1, &[(1 << 20, 1)], None)[..22]);
            s
        }),
    ];
    for (what, bytes) in cases {
        assert!(session(bytes, 1 << 20).is_err(), "{what} was accepted");
    }
}
