//! Issue 12: a backup told which areas changed since the base point reads only those
//! areas (the rest of each touched chunk comes from the base point) and writes exactly
//! the index a full read would, also when a base chunk is unreadable.

use repo::{
    backend, BackupWriter, DiskChanges, InitOptions, KdfParams, PointInfo, Repository, VmInfo,
    WriterOptions,
};
use std::path::Path;

mod common;
use common::{MemDisk, MIB};

fn init(dir: &Path) -> Repository {
    let b = backend::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    let opts = InitOptions {
        passphrase: Some(b"pw".to_vec()),
        kdf: KdfParams::MIN,
        chunk_size: 1 << 20,
        ..InitOptions::default()
    };
    Repository::init(b, &opts).unwrap()
}

fn point(r: &Repository, disk: &mut MemDisk, changes: &DiskChanges, time: u64) -> repo::Point {
    let vm = VmInfo {
        name: "vm1".into(),
        uuid: Some("u1".into()),
    };
    let mut w = BackupWriter::begin(r, vm, &WriterOptions::default(), Box::new(|| false)).unwrap();
    w.put_disk_tracked("scsi0:0", "d.vmdk", disk, changes, &mut ())
        .unwrap();
    w.finish(PointInfo {
        time,
        written_ns: None,
        host: None,
        quiesced: false,
        power_state: "poweredOff".into(),
        catalog: "version = \"1\"\n".into(),
        tool_version: "test".into(),
    })
    .unwrap()
}

#[test]
fn issue_12_tracked_points_equal_full_reads() {
    let t = tempfile::tempdir().unwrap();
    let r = init(&t.path().join("r"));
    let mut disk = MemDisk::new(8, 3);
    let first = point(&r, &mut disk, &DiskChanges::default(), 1);
    // Changes: inside a data chunk, across a chunk border, into the zero and the
    // unallocated runs (the map follows: written ranges become data).
    let writes: [(usize, usize); 4] = [
        (100_000, 5000),
        (2 * MIB - 10, 20),
        (5 * MIB, 70_000),
        (7 * MIB + 3, 1),
    ];
    for (i, &(o, l)) in writes.iter().enumerate() {
        disk.data[o..o + l].fill(i as u8 + 1);
    }
    disk.map = vec![(0, 8 * MIB as u64, vmdk::BlockState::Data)];
    let changed: Vec<(u64, u64)> = writes
        .iter()
        .map(|&(o, l)| {
            (
                o as u64 / 65536 * 65536,
                (l as u64).div_ceil(65536) * 65536 + 65536,
            )
        })
        .collect();
    let tracked = DiskChanges {
        change_id: Some("e/2".into()),
        changed: Some(changed.clone()),
    };
    let second = point(&r, &mut disk, &tracked, 2);
    let read = second.stats.read_bytes;
    assert!(
        read <= changed.iter().map(|c| c.1).sum::<u64>(),
        "read {read}"
    );
    assert_eq!(second.disks[0].change_id.as_deref(), Some("e/2"));
    let full = point(&r, &mut disk, &DiskChanges::default(), 3);
    let index = |p: &repo::Point| r.load_index(&p.disks[0].index).unwrap();
    let (a, b) = (index(&second), index(&full));
    // Same chunks wherever there is data (a full read may find allocated zeros where the
    // tracked one patched zeros: both read back as zeros).
    for (i, (x, y)) in a.entries.iter().zip(&b.entries).enumerate() {
        if matches!(y, repo::index::Entry::Data(_)) || matches!(x, repo::index::Entry::Data(_)) {
            assert_eq!(x, y, "chunk {i}");
        }
    }
    assert_ne!(index(&first).entries, a.entries);

    // A base chunk that cannot be read: that chunk is read from the disk instead.
    disk.data[300_000] ^= 0xff;
    let victim = match index(&full).entries[0] {
        repo::index::Entry::Data(id) => id,
        e => panic!("{e:?}"),
    };
    std::fs::remove_file(t.path().join("r").join(victim.chunk_name())).unwrap();
    let tracked = DiskChanges {
        change_id: Some("e/3".into()),
        changed: Some(vec![(262_144, 65_536)]),
    };
    let fourth = point(&r, &mut disk, &tracked, 4);
    let fresh = point(&r, &mut disk, &DiskChanges::default(), 5);
    assert_eq!(index(&fourth).entries[0], index(&fresh).entries[0]);
    assert_eq!(
        fourth.stats.read_bytes, MIB as u64,
        "the damaged base chunk is read whole"
    );
}
