//! The S3 backend against a real SeaweedFS cluster (master, three volume servers on
//! three racks with replication 010, filer, S3 gateway on 127.0.0.1).

mod common;

use common::{MemDisk, MIB};
use repo::backend::{S3Options, S3};
use repo::{
    check, Backend, BackendKind, BackupWriter, InitOptions, KdfParams, PointInfo, PutMode,
    Repository, Unlock, VmInfo, WriterOptions,
};
use testkit::seaweed::{Cluster, ACCESS_KEY, SECRET_KEY};
use vmdk::DiskSource;

fn s3(c: &Cluster, prefix: &str) -> S3 {
    S3::open(
        &format!("vcb/{prefix}"),
        &S3Options {
            endpoint: Some(c.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
        },
    )
    .unwrap()
}

fn info() -> PointInfo {
    PointInfo {
        time: 1,
        written_ns: None,
        host: None,
        quiesced: false,
        power_state: "poweredOff".into(),
        catalog: String::new(),
        tool_version: String::new(),
    }
}

#[test]
fn objects_listing_and_conditional_creates_on_seaweedfs() {
    let Some(c) = Cluster::start("vcb") else {
        return;
    };
    let b = s3(&c, "raw");
    let mut seen = Vec::new();
    b.list("", &mut |m| {
        seen.push(m.name);
        Ok(())
    })
    .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
    assert!(b.is_empty().unwrap());
    b.put("chunks/ab/ab02", b"two", PutMode::Data).unwrap();
    b.put("chunks/ab/ab01", b"one", PutMode::Data).unwrap();
    b.put("chunks/0f/0f01", b"x", PutMode::Data).unwrap();
    b.put("sessions/s1", b"s", PutMode::Create).unwrap();
    b.put("sessions/s1.r0", b"s", PutMode::Data).unwrap();
    let e = b.put("sessions/s1", b"again", PutMode::Create).unwrap_err();
    assert_eq!(e.backend_kind(), Some(BackendKind::AlreadyExists), "{e}");
    assert_eq!(b.get("sessions/s1").unwrap(), b"s");
    let mut names = Vec::new();
    b.list("chunks/", &mut |m| {
        names.push(m.name);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        names,
        ["chunks/0f/0f01", "chunks/ab/ab01", "chunks/ab/ab02"]
    );
    let mut names = Vec::new();
    b.list("sessions/s1.", &mut |m| {
        names.push(m.name);
        Ok(())
    })
    .unwrap();
    assert_eq!(names, ["sessions/s1.r0"]);
    assert!(b.stat("chunks/ab/ab01").unwrap().is_some());
    assert!(b.stat("chunks/ab/nope").unwrap().is_none());
    assert!(b.get("nope").unwrap_err().is_not_found());
    b.delete("chunks/ab/ab01").unwrap();
    assert!(b.stat("chunks/ab/ab01").unwrap().is_none());
    // Wrong credentials: one clear error.
    let bad = S3::open(
        "vcb/raw",
        &S3Options {
            endpoint: Some(c.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some("wrong".into()),
        },
    )
    .unwrap();
    let e = bad.get("sessions/s1").unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn a_repository_on_seaweedfs_round_trips_and_checks_clean() {
    let Some(c) = Cluster::start("vcb") else {
        return;
    };
    let r = Repository::init(
        Box::new(s3(&c, "repo1")),
        &InitOptions {
            passphrase: Some(b"pw".to_vec()),
            kdf: KdfParams::MIN,
            chunk_size: 1 << 20,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let mut disk = MemDisk::new(6, 9);
    let vm = VmInfo {
        name: "vm1".into(),
        uuid: None,
    };
    let mut w = BackupWriter::begin(
        &r,
        vm.clone(),
        &WriterOptions::default(),
        Box::new(|| false),
    )
    .unwrap();
    w.put_disk("scsi0:0", "d.vmdk", &mut disk, &mut ()).unwrap();
    let p = w.finish(info()).unwrap();
    let r = Repository::open(
        Box::new(s3(&c, "repo1")),
        &Unlock::Passphrase(b"pw".to_vec()),
    )
    .unwrap();
    let mut back = repo::RepoDisk::open(&r, &p.disks[0]).unwrap();
    let mut buf = vec![0u8; 6 * MIB];
    back.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, disk.data);
    let mut w = BackupWriter::begin(&r, vm, &WriterOptions::default(), Box::new(|| false)).unwrap();
    w.put_disk("scsi0:0", "d.vmdk", &mut disk, &mut ()).unwrap();
    let p2 = w.finish(info()).unwrap();
    assert_eq!(p2.stats.new_bytes, 0);
    let report = check::check(&r, &mut ()).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.points, 2);
}
