//! Power operations: on, status, reset, hard off, and a crashed QEMU.

use std::process::Command;
use std::time::{Duration, Instant};

use runtime::{Error, PowerOnOptions, Quiesce, RuntimeState};

use crate::util::{guest, qemu_img_check, Layout, TestVm};

#[test]
fn power_on_reset_off_and_crash() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "power",
        Layout {
            controller: "pvscsi",
            format: vmdk::DiskFormat::Thin,
            agent: false,
        },
    );
    let node = "scsi0:0".parse().unwrap();
    assert_eq!(t.vm.status().unwrap(), RuntimeState::Off);

    let started = Instant::now();
    let on = t.vm.power_on(&PowerOnOptions::default()).unwrap();
    eprintln!(
        "figure: power_on returned after {:.2?} ({})",
        on.elapsed,
        on.command.accel.as_str()
    );
    assert_eq!(
        t.vm.status().unwrap(),
        RuntimeState::Running { pid: on.pid }
    );
    t.wait_guest("first write", Duration::from_secs(90), |g| {
        g.last_seq.is_some()
    });
    eprintln!(
        "figure: boot to first guest write {:.2?}",
        started.elapsed()
    );
    let g = t.wait_guest("writes", Duration::from_secs(60), |g| {
        g.last_seq >= Some(32)
    });
    assert_eq!(g.runs.len(), 1);

    assert_eq!(
        t.vm.node_chain(node).unwrap(),
        std::slice::from_ref(&t.disk)
    );
    assert_eq!(t.vm.guest_ips().unwrap(), None, "no agent channel");
    assert!(matches!(
        t.vm.freeze(Duration::from_secs(5)).unwrap(),
        Quiesce::NoAgent
    ));
    let again = t.vm.power_on(&PowerOnOptions::default()).unwrap_err();
    assert!(
        matches!(again, Error::AlreadyRunning { pid, .. } if pid == on.pid),
        "{again}"
    );

    t.vm.reset().unwrap();
    let g = t.wait_guest("reboot after reset", Duration::from_secs(90), |g| {
        g.runs.len() == 2
    });
    assert_ne!(g.runs[0], g.runs[1]);

    t.vm.power_off().unwrap();
    assert_eq!(t.vm.status().unwrap(), RuntimeState::Off);
    let files = t.vm.files().unwrap();
    assert!(!files.pid.exists() && !files.qmp.exists());
    assert!(matches!(t.vm.power_off(), Err(Error::NotRunning { .. })));

    // A QEMU that dies under us is reported off, and its leftovers are removed.
    let on = t.vm.power_on(&PowerOnOptions::default()).unwrap();
    assert!(files.pid.exists() && files.qmp.exists());
    let kill = Command::new("kill")
        .args(["-9", &on.pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.vm.status().unwrap() != RuntimeState::Off {
        assert!(
            Instant::now() < deadline,
            "killed QEMU still reported running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !files.pid.exists() && !files.qmp.exists(),
        "stale files left"
    );

    let log = std::fs::read_to_string(&files.log).unwrap();
    for needle in [
        "| vcb| power on",
        "| vcb| starting qemu-system-x86_64",
        "| vcb| reset",
        "| vcb| power off",
    ] {
        assert!(log.contains(needle), "vmware.log lacks {needle:?}");
    }
    qemu_img_check(&t.disk);
}
