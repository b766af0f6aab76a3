//! Issue 12: changed-block tracking. Backups into a repository read only what changed
//! since the previous point, every point still restores exactly, and whatever loses the
//! tracking (a revert, a tool that does not track, a killed writer) makes the next
//! backup read everything and say why.

use crate::store::Repo;
use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MB;

struct Case<'a> {
    env: &'a Env,
    repo: Repo,
    /// The disk's content at each point, by point id.
    expected: Vec<(String, Vec<u8>)>,
}

impl Case<'_> {
    /// Backs the VM up; returns the output and the point's stats.
    fn backup(&mut self) -> (String, serde_json::Value) {
        let out = self.repo.ok(
            self.env,
            "vcb",
            &["backup", "vm1", "--repo", &self.repo.spec],
        );
        let points = self.repo.points(self.env);
        let id = points.last().unwrap()["id"].as_str().unwrap().to_owned();
        let disk = disk_paths(self.env, "vm1").remove(0);
        self.expected.push((id.clone(), content(&disk)));
        let stats = self.repo.json(self.env, "show", &[&id])["stats"].clone();
        (out, stats)
    }

    /// Every point exported as a folder reads back as the disk was at its time.
    fn check_points(&self) {
        for (n, (id, want)) in self.expected.iter().enumerate() {
            let dir = self.env.path(&format!("export-{n}"));
            self.repo.ok(
                self.env,
                "vcb",
                &["repo", "export", &self.repo.spec, id, dir.to_str().unwrap()],
            );
            let got = content(&dir.join("scsi0-0-0-vm1.vmdk"));
            assert!(got == *want, "point {n} ({id}) does not restore its disk");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// Bytes the backup read, less the configuration files (a few KiB, always read).
fn read_bytes(stats: &serde_json::Value) -> u64 {
    stats["read_bytes"].as_u64().unwrap().saturating_sub(CONFIG)
}

/// More than the configuration files of the test VM hold.
const CONFIG: u64 = 16 * 1024;

#[test]
fn issue_12_offline_incrementals_read_only_what_changed_and_restore_exactly() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    repo.init(&env);
    env.vm("vm1", &[(64 * MB, DiskFormat::Thin)], 1);
    let disk = disk_paths(&env, "vm1").remove(0);
    write(&disk, 0, &random_bytes(40 * MB, 12));
    env.ok("vcb", &["vm", "ctk", "enable", "vm1"]);
    let mut case = Case {
        env: &env,
        repo,
        expected: Vec::new(),
    };

    let (out, first) = case.backup();
    assert!(out.contains("reading all of scsi0:0"), "{out}");
    assert!(read_bytes(&first) >= 40 * MB, "{first}");

    // Three small writes through vcb's own tools: only the 64 KiB tracking blocks they
    // touch are read from the disk (the rest of their chunks comes from the first point).
    for (i, off) in [3 * MB + 100, 17 * MB, 50 * MB].iter().enumerate() {
        vcb_write(&env, &disk, *off, &random_bytes(4096 << i, 100 + i as u64));
    }
    let (out, second) = case.backup();
    assert!(out.contains("reading 3 changed areas"), "{out}");
    eprintln!(
        "figure: full read {} bytes, incremental read {} bytes",
        read_bytes(&first),
        read_bytes(&second)
    );
    assert!(
        read_bytes(&second) <= 3 * 2 * 65536 && read_bytes(&second) > 0,
        "{second}"
    );
    assert!(second["new_chunks"].as_u64().unwrap() <= 4, "{second}");

    // Nothing changed: nothing is read.
    let (_, third) = case.backup();
    assert_eq!(read_bytes(&third), 0, "{third}");

    // A user snapshot taken and removed offline carries the tracking along.
    env.ok("vcb", &["vm", "snapshot", "vm1", "--name", "before"]);
    let top = disk_paths(&env, "vm1").remove(0);
    assert_ne!(top, disk);
    vcb_write(&env, &top, 9 * MB, b"written into the redo log");
    let (out, fourth) = case.backup();
    assert!(out.contains("reading 1 changed areas"), "{out}");
    assert!(read_bytes(&fourth) <= CHUNK, "{fourth}");
    env.ok("vcb", &["vm", "remove-snapshot", "vm1", "before"]);
    vcb_write(
        &env,
        &disk_paths(&env, "vm1")[0],
        33 * MB,
        b"after the merge",
    );
    let (out, fifth) = case.backup();
    assert!(out.contains("reading 1 changed areas"), "{out}");
    assert!(read_bytes(&fifth) <= CHUNK, "{fifth}");

    // `vcb disk changed-areas` answers QueryChangedDiskAreas from the last point's ID.
    let status = env.ok("vcb", &["vm", "ctk", "status", "vm1"]);
    let next = status
        .split("next change ID ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let (uuid, seq) = next.split_once('/').unwrap();
    let since = format!("{uuid}/{}", seq.parse::<u64>().unwrap() - 1);
    let top = disk_paths(&env, "vm1").remove(0);
    vcb_write(&env, &top, 20 * MB + 512, &[7; 1000]);
    let json = env.ok(
        "vcb",
        &[
            "disk",
            "changed-areas",
            top.to_str().unwrap(),
            "--since",
            &since,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["changedArea"],
        serde_json::json!([{"start": 20 * MB, "length": 65536}]),
        "{v}"
    );
    assert_eq!(v["length"], 64 * MB);
    let all = env.ok(
        "vcb",
        &[
            "disk",
            "changed-areas",
            top.to_str().unwrap(),
            "--since",
            "*",
        ],
    );
    assert!(all.lines().count() >= 1, "{all}");
    case.backup();
    case.check_points();
}

#[test]
fn issue_12_lost_tracking_is_noticed_and_the_next_backup_reads_everything() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    repo.init(&env);
    env.vm("vm1", &[(32 * MB, DiskFormat::Thin)], 1);
    let disk = disk_paths(&env, "vm1").remove(0);
    write(&disk, 0, &random_bytes(20 * MB, 5));
    env.ok("vcb", &["vm", "ctk", "enable", "vm1"]);
    let mut case = Case {
        env: &env,
        repo,
        expected: Vec::new(),
    };
    case.backup();

    // A tool that does not track (QEMU's own vmdk driver) writes the disk.
    if require_tool("qemu-io") {
        let o = std::process::Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", "write -P 9 1M 4k"])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let (out, stats) = case.backup();
        assert!(out.contains("written without tracking"), "{out}");
        assert!(read_bytes(&stats) >= 20 * MB, "{stats}");
        case.backup();
    }

    // Revert: the guest sees older content; the new redo log has no tracking.
    env.ok("vcb", &["vm", "snapshot", "vm1", "--name", "s1"]);
    vcb_write(
        &env,
        &disk_paths(&env, "vm1")[0],
        2 * MB,
        b"discarded by the revert",
    );
    case.backup();
    env.ok("vcb", &["vm", "revert", "vm1", "s1"]);
    let (out, stats) = case.backup();
    assert!(out.contains("no change-tracking file"), "{out}");
    assert!(read_bytes(&stats) >= 20 * MB, "{stats}");

    // A restore over the disk: whatever tracked the old disk is gone.
    let first = case.expected[0].0.clone();
    case.repo.ok(
        &env,
        "vcbRestore",
        &[
            "-s",
            &format!("{}#{first}", case.repo.target()),
            "-l",
            "overwrite",
        ],
    );
    let (out, stats) = case.backup();
    assert!(out.contains("no change-tracking file"), "{out}");
    assert!(read_bytes(&stats) >= 20 * MB, "{stats}");

    // A writer killed before it recorded its writes.
    let top = disk_paths(&env, "vm1").remove(0);
    {
        let mut d = vmdk::Disk::open(&top, &vmdk::OpenOptions::writable()).unwrap();
        d.write_at(5 * MB, b"never recorded").unwrap();
        d.flush().unwrap();
        d.write_at(6 * MB, b"also never recorded").unwrap();
        std::mem::forget(d);
    }
    let (out, stats) = case.backup();
    assert!(out.contains("never recorded its writes"), "{out}");
    assert!(read_bytes(&stats) >= 20 * MB, "{stats}");

    // Tracking turned off: no tracking files are left, backups read everything quietly.
    env.ok("vcb", &["vm", "ctk", "disable", "vm1"]);
    let left: Vec<_> = walk(&env.host().find_vm("vm1").unwrap().dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("-ctk.vmdk"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let (out, _) = case.backup();
    assert!(!out.contains("changed-block tracking"), "{out}");
    case.check_points();
}
