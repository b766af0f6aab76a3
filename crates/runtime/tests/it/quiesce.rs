//! Quiesce through the guest agent, and suspend/resume.

use std::time::{Duration, Instant};

use runtime::{PowerOnOptions, Quiesce, RuntimeState};

use crate::util::{
    check_point_in_time, disk_blocks, guest, qemu_img_check, Layout, TestVm, BLOCKS,
};

#[test]
fn freeze_snapshot_thaw_then_suspend_and_resume() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "agent",
        Layout {
            controller: "virtio-blk",
            format: vmdk::DiskFormat::Thin,
            agent: true,
        },
    );
    let node = "scsi0:0".parse().unwrap();
    t.vm.power_on(&PowerOnOptions::default()).unwrap();
    let g = t.wait_guest("agent and a lap of writes", Duration::from_secs(120), |g| {
        g.agent && g.last_seq >= Some(BLOCKS + 16)
    });
    let run = g.run().to_owned();

    // The agent answers once qemu-ga has opened its port.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ips = loop {
        if let Some(ips) = t.vm.guest_ips().unwrap() {
            break ips;
        }
        assert!(Instant::now() < deadline, "guest agent never answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ips.is_empty(), "the guest has no network: {ips:?}");

    // Freeze, snapshot, thaw: the base holds exactly what the guest wrote before freezing.
    let started = Instant::now();
    let Quiesce::Frozen(guard) = t.vm.freeze(Duration::from_secs(30)).unwrap() else {
        panic!("no agent")
    };
    let froze = started.elapsed();
    let redo = t.dir.path().join("agent-000001.vmdk");
    // Hosted sparse redo log here (the live test covers ESX COWD).
    t.vm.live_snapshot_as(&[(node, redo.clone())], vmdk::ChildFormat::HostedSparse)
        .unwrap();
    let thawed = guard.thaw().unwrap();
    assert!(!thawed.by_watchdog);
    eprintln!(
        "figure: freeze {froze:.2?}, frozen for {:.2?} (snapshot inside)",
        thawed.frozen_for
    );
    let g = t.wait_guest("frozen and thawed lines", Duration::from_secs(10), |g| {
        g.frozen.len() == 1 && g.thawed == 1
    });
    let high = check_point_in_time(&disk_blocks(&t.disk), &run);
    assert_eq!(
        high, g.frozen[0],
        "quiesced image is not at the freeze point"
    );
    t.vm.live_commit(node, &mut ()).unwrap();

    // A caller that never thaws: the watchdog does.
    let Quiesce::Frozen(guard) = t.vm.freeze(Duration::from_secs(2)).unwrap() else {
        panic!("no agent")
    };
    t.wait_guest("watchdog thaw", Duration::from_secs(20), |g| g.thawed == 2);
    assert!(guard.thaw().unwrap().by_watchdog);
    t.wait_guest("writes after the thaw", Duration::from_secs(30), |g| {
        g.last_seq > g.frozen.last().map(|s| s + 16)
    });

    // Suspend to .vmss and resume: the same run continues from the same sequence number.
    let s = t.vm.suspend().unwrap();
    assert!(s.vmss.exists());
    assert_eq!(
        t.vm.status().unwrap(),
        RuntimeState::Suspended {
            vmss: s.vmss.clone()
        }
    );
    let at_suspend = t.guest().last_seq.unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.guest().last_seq,
        Some(at_suspend),
        "guest wrote while suspended"
    );
    let resumed = t.vm.resume(&PowerOnOptions::default()).unwrap();
    assert!(!s.vmss.exists(), "the .vmss outlived the resume");
    assert!(matches!(
        t.vm.status().unwrap(),
        RuntimeState::Running { .. }
    ));
    eprintln!(
        "figure: suspend {:.2?} ({} MiB .vmss), resume {:.2?}",
        s.elapsed,
        s.size_bytes >> 20,
        resumed.elapsed
    );
    let g = t.wait_guest("writes after resume", Duration::from_secs(30), |g| {
        g.last_seq >= Some(at_suspend + 48)
    });
    assert_eq!(g.runs.len(), 1, "the guest rebooted instead of resuming");
    for w in g.progress.windows(2) {
        assert_eq!(w[1], w[0] + 16, "sequence broken around {}", w[0]);
    }

    t.vm.shutdown(Duration::from_secs(60)).unwrap();
    let g = t.guest();
    let high = check_point_in_time(&disk_blocks(&t.disk), &run);
    assert_eq!(Some(high), g.stopped);
    qemu_img_check(&t.disk);
}
