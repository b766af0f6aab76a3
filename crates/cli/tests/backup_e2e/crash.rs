//! A backup killed with SIGKILL mid-export: the VM keeps every byte, the destination is
//! never taken for a backup, and the next run commits the leftover snapshot.

use crate::util::*;
use std::time::{Duration, Instant};
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

#[test]
fn killed_backup_then_clean_rerun() {
    let env = Env::new();
    env.vm(
        "vm1",
        &[
            (4 * MB, DiskFormat::Thin),
            (2 * MB, DiskFormat::ZeroedThick),
        ],
        9,
    );
    let before: Vec<Vec<u8>> = disk_paths(&env, "vm1").iter().map(|p| content(p)).collect();
    let dest = env.path("b1");
    let mut child = env
        .command(
            "vcbMounter",
            &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
        )
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the .vmx file has been exported (the snapshot exists by then).
    let start = Instant::now();
    while !dest.join("vm1.vmx").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the backup did not reach the export"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The VM writes into the leftover redo logs and reads everything it had.
    let tops = disk_paths(&env, "vm1");
    assert!(
        tops[0].to_str().unwrap().ends_with("-000001.vmdk"),
        "{tops:?}"
    );
    for (top, want) in tops.iter().zip(&before) {
        assert_eq!(&content(top), want);
    }
    write(&tops[0], MB, b"written while the snapshot was left over");
    let expected: Vec<Vec<u8>> = tops.iter().map(|p| content(p)).collect();

    // The half-written destination is refused by restore and by a rerun into it.
    assert!(dest.join(backup::INCOMPLETE_MARKER).exists());
    let err = env.fails(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(err.contains("incomplete"), "{err}");
    let err = env.fails(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
    );
    assert!(err.contains("interrupted"), "{err}");

    // A clean rerun commits the leftover snapshot first, then backs up.
    let dest2 = env.path("b2");
    let out = env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest2.to_str().unwrap()],
    );
    assert!(out.contains("interrupted backup"), "{out}");
    let tops = disk_paths(&env, "vm1");
    assert!(
        tops[0].ends_with("vm1.vmdk"),
        "redo logs committed: {tops:?}"
    );
    let h = env.host();
    let vm = h.find_vm("vm1").unwrap();
    assert!(host::read_vmsd(&vm.vmsd_path())
        .unwrap()
        .snapshots()
        .is_empty());
    for (top, want) in tops.iter().zip(&expected) {
        assert_eq!(&content(top), want, "no byte lost");
    }
    assert_eq!(content(&dest2.join("scsi0-0-0-vm1.vmdk")), expected[0]);
    assert!(
        !walk(&vm.dir)
            .iter()
            .any(|p| p.to_string_lossy().contains("-00000")),
        "no redo log left"
    );
}
