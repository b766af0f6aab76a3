//! The repository end to end on a local folder: write points from synthetic disks, read
//! them back, dedup, verify, check, prune, gc, copy, keys, and damage of every kind.

use repo::{
    backend, check, copy, gc, prune, verify, BackupWriter, InitOptions, KdfParams, PointInfo,
    Repository, Unlock, VmInfo, WriterOptions,
};
use std::path::Path;
use vmdk::{BlockState, DiskSource};

mod common;
use common::{MemDisk, MIB};

fn init(dir: &Path, pass: Option<&str>) -> Repository {
    let b = backend::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    Repository::init(
        b,
        &InitOptions {
            passphrase: pass.map(|p| p.as_bytes().to_vec()),
            kdf: KdfParams::MIN,
            chunk_size: 1 << 20,
            ..InitOptions::default()
        },
    )
    .unwrap()
}

fn open(dir: &Path, pass: &str) -> repo::Result<Repository> {
    let b = backend::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    Repository::open(b, &Unlock::Passphrase(pass.as_bytes().to_vec()))
}

fn vm(name: &str) -> VmInfo {
    VmInfo {
        name: name.into(),
        uuid: Some(format!("uuid-{name}")),
    }
}

fn info(time: u64) -> PointInfo {
    PointInfo {
        time,
        written_ns: None,
        host: Some("esx1".into()),
        quiesced: false,
        power_state: "poweredOff".into(),
        catalog: "version = \"1\"\n".into(),
        tool_version: "test".into(),
    }
}

fn backup(r: &Repository, name: &str, disk: &mut MemDisk, time: u64) -> repo::Point {
    let mut w =
        BackupWriter::begin(r, vm(name), &WriterOptions::default(), Box::new(|| false)).unwrap();
    w.put_file(&format!("{name}.vmx"), &mut &b"displayName = \"x\"\n"[..])
        .unwrap();
    w.put_disk("scsi0:0", "scsi0-0-0-d.vmdk", disk, &mut ())
        .unwrap();
    w.finish(info(time)).unwrap()
}

fn read_back(r: &Repository, p: &repo::Point) -> Vec<u8> {
    let mut d = repo::RepoDisk::open(r, &p.disks[0]).unwrap();
    let mut out = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut out).unwrap();
    out
}

#[test]
fn points_round_trip_and_dedup() {
    let t = tempfile::tempdir().unwrap();
    let r = init(&t.path().join("r"), Some("pw"));
    let mut disk = MemDisk::new(8, 1);
    let p1 = backup(&r, "vm1", &mut disk, 100);
    assert_eq!(read_back(&r, &p1), disk.data);
    let vmx_bytes = 18;
    assert_eq!(p1.stats.new_bytes, 4 * MIB as u64 + vmx_bytes);
    // The map is kept: zero and unallocated chunks are not stored.
    let mut d = repo::RepoDisk::open(&r, &p1.disks[0]).unwrap();
    assert_eq!(
        d.map(4 * MIB as u64, u64::MAX).unwrap().state,
        BlockState::Zero
    );
    assert_eq!(
        d.map(7 * MIB as u64, u64::MAX).unwrap().state,
        BlockState::Unallocated
    );
    // Unchanged: nothing new.
    let p2 = backup(&r, "vm1", &mut disk, 200);
    assert_eq!(p2.stats.new_bytes, 0);
    assert_eq!(p2.parent.as_deref(), Some(p1.id.as_str()));
    // One MiB changed: one chunk new.
    disk.data[MIB + 5] ^= 0xff;
    let p3 = backup(&r, "vm1", &mut disk, 300);
    assert_eq!(p3.stats.new_bytes, MIB as u64);
    assert_eq!(read_back(&r, &p3), disk.data);
    // Another VM with the same content (a clone of one template) stores nothing new.
    let p4 = backup(&r, "vm2", &mut disk, 400);
    assert_eq!(p4.stats.new_bytes, 0, "{:?}", p4.stats);
    let again = open(&t.path().join("r"), "pw").unwrap();
    assert_eq!(again.points().unwrap().0.len(), 4);
    assert_eq!(again.find_point("vm1").unwrap().id, p3.id);
    assert_eq!(again.find_point("vm1@2").unwrap().id, p1.id);
    assert_eq!(again.find_point(&p2.id[..8]).unwrap().id, p2.id);
    let report = check::check(&again, &mut ()).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.points, 4);
}

#[test]
fn wrong_passphrase_unknown_version_and_keys() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("r");
    let r = init(&dir, Some("pw"));
    let e = open(&dir, "nope").unwrap_err();
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    let k2 = r.add_key(b"second", KdfParams::MIN, "laptop").unwrap();
    open(&dir, "second").unwrap();
    assert_eq!(r.keys().unwrap().len(), 2);
    r.remove_key(&k2.id).unwrap();
    assert!(open(&dir, "second").is_err());
    assert!(
        r.remove_key(&r.keys().unwrap()[0].id).is_err(),
        "last key stays"
    );
    let paper = r.paper_key().unwrap();
    let b = backend::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    Repository::open(b, &Unlock::PaperKey(paper)).unwrap();
    let cfg = std::fs::read_to_string(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config"),
        cfg.replace("\"version\": 1", "\"version\": 2"),
    )
    .unwrap();
    let e = open(&dir, "pw").unwrap_err();
    assert!(e.to_string().contains("version 2 is not supported"), "{e}");
    std::fs::write(
        dir.join("config"),
        cfg.replace("\"chunk_size\": 1048576", "\"chunk_size\": 2097152"),
    )
    .unwrap();
    let e = open(&dir, "pw").unwrap_err();
    assert!(e.to_string().contains("authenticator"), "{e}");
}

#[test]
fn damage_is_named_and_never_restored() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("r");
    let r = init(&dir, Some("pw"));
    let mut disk = MemDisk::new(6, 2);
    let p = backup(&r, "vm1", &mut disk, 100);
    let ix = repo::RepoDisk::open(&r, &p.disks[0])
        .unwrap()
        .index()
        .clone();
    let victim = ix.chunk_ids().nth(1).unwrap();
    let path = dir.join(victim.chunk_name());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let mut d = repo::RepoDisk::open(&r, &p.disks[0]).unwrap();
    let mut buf = vec![0u8; 6 * MIB];
    let e = d.read_at(0, &mut buf).unwrap_err();
    assert!(e.to_string().contains(&victim.hex()), "{e}");
    let report =
        verify::verify(&r, std::slice::from_ref(&p), &Default::default(), &mut ()).unwrap();
    assert!(!report.ok());
    assert_eq!(report.damage[0].points, std::slice::from_ref(&p.id));
    assert!(!r.verify_record(&p.id).unwrap().unwrap().ok);
    // Missing chunk: check names it and the point.
    std::fs::remove_file(&path).unwrap();
    let c = check::check(&r, &mut ()).unwrap();
    assert_eq!(c.problems.len(), 1, "{c:?}");
    assert_eq!(c.problems[0].points, std::slice::from_ref(&p.id));
    // A flipped byte in the index and in the point.
    let ixpath = dir.join(format!("indexes/{}", p.disks[0].index));
    let mut b = std::fs::read(&ixpath).unwrap();
    b[20] ^= 1;
    std::fs::write(&ixpath, &b).unwrap();
    assert!(repo::RepoDisk::open(&r, &p.disks[0])
        .unwrap_err()
        .to_string()
        .contains("indexes/"));
    let ppath = dir.join(p.name());
    let mut b = std::fs::read(&ppath).unwrap();
    b[30] ^= 1;
    std::fs::write(&ppath, &b).unwrap();
    let e = r.load_point(&p.name()).unwrap_err();
    assert!(
        e.to_string().contains(&p.id) && e.to_string().contains("damaged"),
        "{e}"
    );
}

#[test]
fn prune_gc_and_copy() {
    let t = tempfile::tempdir().unwrap();
    let r = init(&t.path().join("r"), Some("pw"));
    let day = 86_400;
    let mut disk = MemDisk::new(4, 3);
    let mut ids = Vec::new();
    for i in 0..4u64 {
        disk.data[(i as usize) * 1000] ^= 0x55;
        ids.push(backup(&r, "vm1", &mut disk, 1_767_225_600 + i * day).id);
    }
    let policy = prune::KeepPolicy {
        last: Some(2),
        ..Default::default()
    };
    let dry = prune::prune(&r, None, &policy, true, &mut ()).unwrap();
    assert_eq!(dry.iter().filter(|d| !d.keep).count(), 2);
    assert_eq!(r.points().unwrap().0.len(), 4);
    prune::prune(&r, None, &policy, false, &mut ()).unwrap();
    assert_eq!(r.points().unwrap().0.len(), 2);
    let before = check::check(&r, &mut ()).unwrap();
    assert!(before.chunks_unused > 0);
    // Young chunks stay within the grace period; with none, they go.
    let g = gc::gc(&r, &gc::GcOptions::default(), &mut ()).unwrap();
    assert_eq!(g.removed_objects, 0);
    let g = gc::gc(
        &r,
        &gc::GcOptions {
            grace: std::time::Duration::ZERO,
            dry_run: false,
        },
        &mut (),
    )
    .unwrap();
    assert!(g.removed_objects > 0, "{g:?}");
    let after = check::check(&r, &mut ()).unwrap();
    assert!(after.ok() && after.chunks_unused == 0, "{after:?}");
    for p in r.points().unwrap().0 {
        assert_eq!(read_back(&r, &p).len(), 4 * MIB);
    }
    // Copy into a repository with other keys: everything travels, re-encrypted.
    let other = init(&t.path().join("o"), Some("other"));
    let c = copy::copy(&r, &other, None, &mut ()).unwrap();
    assert_eq!(c.copied.len(), 2);
    let again = copy::copy(&r, &other, None, &mut ()).unwrap();
    assert_eq!((again.copied.len(), again.present.len()), (0, 2));
    let newest = r.find_point("vm1").unwrap();
    let copied = other.find_point(&newest.id).unwrap();
    assert_eq!(read_back(&other, &copied), read_back(&r, &newest));
    assert!(check::check(&other, &mut ()).unwrap().ok());
    // A copy target sharing the key: same ids, only missing chunks are read.
    let b = backend::open(t.path().join("s").to_str().unwrap(), &Default::default()).unwrap();
    let shared = Repository::init(
        b,
        &InitOptions {
            passphrase: Some(b"third".to_vec()),
            kdf: KdfParams::MIN,
            chunk_size: 1 << 20,
            master_key: r.crypto().master_key().cloned(),
            ..InitOptions::default()
        },
    )
    .unwrap();
    assert!(repo::writer::same_ids(&r, &shared));
    copy::copy(&r, &shared, None, &mut ()).unwrap();
    let copied = shared.find_point(&newest.id).unwrap();
    assert_eq!(copied.disks[0].index, newest.disks[0].index);
}

#[test]
fn unencrypted_repositories_work_and_refuse_planted_keys() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("r");
    let r = init(&dir, None);
    let mut disk = MemDisk::new(4, 4);
    let p = backup(&r, "vm1", &mut disk, 5);
    assert_eq!(read_back(&r, &p), disk.data);
    std::fs::write(dir.join("keys/0000000000000000"), "{}").unwrap();
    let b = backend::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    assert!(Repository::open(b, &Unlock::None).is_err());
}

#[test]
fn init_refuses_a_used_location() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("file"), "x").unwrap();
    let b = backend::open(t.path().to_str().unwrap(), &Default::default()).unwrap();
    let e = Repository::init(b, &InitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
}

#[test]
fn concurrent_writers_and_collector_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = init(&t.path().join("r"), Some("pw"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut removed = 0u64;
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let r = &r;
                s.spawn(move || {
                    // Writers share half their content: chunks come and go under the
                    // collector while others rely on them.
                    let mut disk = MemDisk::new(8, 1);
                    for round in 0..8u64 {
                        let at = ((u64::from(w) * 7 + round * 3) % 4) as usize * MIB;
                        disk.data[at + 17] = disk.data[at + 17].wrapping_add(w + 1);
                        backup(r, &format!("w{w}"), &mut disk, 1000 + round);
                    }
                })
            })
            .collect();
        while !writers.iter().all(|w| w.is_finished()) {
            let policy = prune::KeepPolicy {
                last: Some(2),
                ..Default::default()
            };
            prune::prune(&r, None, &policy, false, &mut ()).unwrap();
            let g = gc::gc(
                &r,
                &gc::GcOptions {
                    grace: std::time::Duration::ZERO,
                    dry_run: false,
                },
                &mut (),
            )
            .unwrap();
            removed += g.removed_objects;
        }
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(
        removed > 0,
        "the collector never removed anything beside the writers"
    );
    let c = check::check(&r, &mut ()).unwrap();
    assert!(c.ok(), "{c:?}");
    let (points, bad) = r.points().unwrap();
    assert!(bad.is_empty());
    let v = verify::verify(&r, &points, &Default::default(), &mut ()).unwrap();
    assert!(v.ok(), "{v:?}");
    for p in &points {
        assert_eq!(read_back(&r, p).len(), 8 * MIB);
    }
}
