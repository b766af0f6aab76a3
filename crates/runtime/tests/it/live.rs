//! Live snapshot, copy of the static base, live commit, while the guest keeps writing.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use runtime::PowerOnOptions;

use crate::util::{
    check_point_in_time, disk_blocks, guest, qemu_img_check, write_rate, Layout, TestVm, BLOCK,
    BLOCKS,
};

/// Records the progress calls of a commit.
#[derive(Default)]
struct Recorder {
    total: Option<u64>,
    advanced: u64,
    finished: bool,
}

impl vmdk::Progress for Recorder {
    fn start(&mut self, total_bytes: u64) {
        self.total = Some(total_bytes);
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.advanced += bytes;
        ControlFlow::Continue(())
    }
    fn finish(&mut self) {
        self.finished = true;
    }
}

/// Copies a whole disk (read through vmdk, as a backup does) to a raw file; returns the
/// guest's blocks from the copy.
fn copy_disk(disk: &Path, to: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only()).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut offset = 0;
    while offset < d.capacity() {
        d.read_at(offset, &mut buf).unwrap();
        out.write_all(&buf).unwrap();
        if head.len() < BLOCK * BLOCKS as usize {
            head.extend_from_slice(&buf[..BLOCK * BLOCKS as usize]);
        }
        offset += buf.len() as u64;
    }
    head
}

/// Reads a whole disk through vmdk (a copy to nowhere); returns the guest's blocks.
fn read_disk(disk: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut offset = 0;
    while offset < d.capacity() {
        d.read_at(offset, &mut buf).unwrap();
        if head.is_empty() {
            head.extend_from_slice(&buf[..BLOCK * BLOCKS as usize]);
        }
        offset += buf.len() as u64;
    }
    head
}

#[test]
fn snapshot_copy_commit_three_times_while_the_guest_writes() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "live",
        Layout {
            controller: "virtio-scsi",
            format: vmdk::DiskFormat::ZeroedThick,
            agent: false,
        },
    );
    let node = "scsi0:0".parse().unwrap();
    t.vm.power_on(&PowerOnOptions::default()).unwrap();
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    let run = g.run().to_owned();
    let idle = write_rate(&t, Duration::from_secs(3));
    eprintln!("figure: guest writes/s, no backup running: {idle:.0}");

    // VCB_RUNTIME_CYCLES raises the number of cycles for soak runs.
    let cycles: u32 = std::env::var("VCB_RUNTIME_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3);
    for cycle in 1..=cycles {
        let redo = t.dir.path().join(format!("live-{cycle:06}.vmdk"));
        let before = t.guest().last_seq.unwrap();
        let snap = t.vm.live_snapshot(&[(node, redo.clone())]).unwrap();
        assert_eq!(snap.disks[0].parent, t.disk);
        assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
        assert_eq!(
            t.vm.node_chain(node).unwrap(),
            [redo.clone(), t.disk.clone()]
        );

        if cycle == 1 {
            let on_redo = write_rate(&t, Duration::from_secs(3));
            eprintln!("figure: guest writes/s into the redo log, no copy running: {on_redo:.0}");
        }
        // Copy the now static base while the guest writes into the redo log; on the first
        // cycle keep reading it for a few seconds to measure the guest under that load.
        let copy_started = Instant::now();
        let mut head = copy_disk(&t.disk, &t.dir.path().join("copy.raw"));
        let copy_once = copy_started.elapsed();
        let (reread_started, seq0) = (Instant::now(), t.guest().last_seq.unwrap());
        let mut rereads = 0;
        while cycle == 1 && reread_started.elapsed() < Duration::from_secs(3) {
            assert_eq!(read_disk(&t.disk), head, "the base changed under the copy");
            rereads += 1;
        }
        let busy =
            (t.guest().last_seq.unwrap() - seq0) as f64 / reread_started.elapsed().as_secs_f64();
        let high = check_point_in_time(&head, &run);
        assert!(
            high >= before,
            "copy misses writes reported before the snapshot"
        );
        head.clear();

        let mut rec = Recorder::default();
        let commit = t.vm.live_commit(node, &mut rec).unwrap();
        assert!(rec.finished && rec.total.is_some());
        assert_eq!(commit.redo_log, redo);
        assert!(
            !redo.exists()
                && !t
                    .dir
                    .path()
                    .join(format!("live-{cycle:06}-delta.vmdk"))
                    .exists()
        );
        assert_eq!(
            t.vm.node_chain(node).unwrap(),
            std::slice::from_ref(&t.disk)
        );
        eprintln!(
            "figure: cycle {cycle}: snapshot {:.1?} (switch {:.1?}, guest paused {:.1?}), copy of 64 MiB {:.2?}, \
             commit of {} KiB {:.2?} (guest paused {:.1?}), image seq {high}{}",
            snap.elapsed,
            snap.switch_elapsed,
            snap.guest_paused,
            copy_once,
            commit.copied_bytes / 1024,
            commit.elapsed,
            commit.guest_paused,
            if cycle == 1 {
                format!(", guest writes/s while reading the base {rereads} times: {busy:.0}")
            } else {
                String::new()
            },
        );
    }

    let took = t.vm.shutdown(Duration::from_secs(60)).unwrap();
    eprintln!("figure: ACPI shutdown {took:.2?}");
    let g = t.guest();
    let stopped = g.stopped.expect("guest reported its last write");
    assert_eq!(g.runs.len(), 1);
    let high = check_point_in_time(&disk_blocks(&t.disk), &run);
    assert_eq!(high, stopped, "the disk lacks writes the guest reported");
    qemu_img_check(&t.disk);
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("live-0"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
