//! The client against QEMU's own NBD server: a qcow2 image's persistent dirty bitmap,
//! exported by qemu-nbd, reads back as exactly the areas qemu-io wrote.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dirty_bitmap_of_a_qemu_nbd_export_reads_back() {
    if !testkit::tools::require_tools(&["qemu-img", "qemu-io", "qemu-nbd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    let sock = dir.path().join("nbd.sock");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("64M"));
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("bm"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write 1M 64k",
            "-c",
            "write 10M 4k",
            "-c",
            "write 63M 1M",
        ])
        .arg(&img));
    run(Command::new("qemu-img")
        .args(["bitmap", "--disable"])
        .arg(&img)
        .arg("bm"));
    let mut server = Command::new("qemu-nbd")
        .args([
            "-r", "-t", "-f", "qcow2", "-B", "bm", "-x", "disk", "--socket",
        ])
        .arg(&sock)
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| {
        let mut c = nbd::Client::connect(&sock, "disk", "qemu:dirty-bitmap:bm").unwrap();
        assert_eq!(c.size(), 64 << 20);
        let dirty: Vec<(u64, u64)> = c
            .block_status(0, 64 << 20)
            .unwrap()
            .into_iter()
            .filter(|e| e.flags & 1 == 1)
            .map(|e| (e.offset, e.len))
            .collect();
        assert_eq!(
            dirty,
            vec![(1 << 20, 65536), (10 << 20, 65536), (63 << 20, 1 << 20)]
        );
        // Ranges past the end and unknown contexts are errors, not panics.
        assert!(c.block_status(60 << 20, 8 << 20).is_err());
        c.close();
        // vcb's client reads what qemu-io wrote (its default pattern is 0xcd) and holes
        // as zeros.
        let mut r = nbd::Client::connect(&sock, "disk", nbd::BASE_ALLOCATION).unwrap();
        let mut buf = vec![0u8; 3 << 20];
        r.read_at(0, &mut buf).unwrap();
        assert!(buf[1 << 20..(1 << 20) + 65536].iter().all(|b| *b == 0xcd));
        assert!(buf[..1 << 20].iter().all(|b| *b == 0));
        assert!(buf[(1 << 20) + 65536..].iter().all(|b| *b == 0));
        r.close();
        let err = nbd::Client::connect(&sock, "disk", "qemu:dirty-bitmap:nope")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("nope") || err.to_string().contains("refused"),
            "{err}"
        );
    });
    let _ = server.kill();
    let _ = server.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
