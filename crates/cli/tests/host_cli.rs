//! The standalone host through the `vcb` binary: VMs, snapshots checked with qemu-img,
//! locking between processes, hostile files, configuration backup.

mod host_util;

use host_util::{qemu_chain, qemu_raw, read_disk, require_tool, write_disk, Env};
use std::process::Stdio;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// The known disk every scenario starts from: 4 MiB, each MiB a different byte.
fn known_image(env: &Env) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..4 * MIB).map(|i| 0x10 + (i / MIB) as u8).collect();
    let path = env.dir.path().join("known.img");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn put(mut v: Vec<u8>, offset: usize, len: usize, byte: u8) -> Vec<u8> {
    v[offset..offset + len].fill(byte);
    v
}

/// Checks the current disk of vm37 with qemu-img: its content and its chain.
#[track_caller]
fn expect_current(env: &Env, content: &[u8], chain: &[&str]) {
    let disk = env.current_disk("vm37", 0);
    assert_eq!(qemu_chain(&disk), chain, "qemu-img info --backing-chain");
    assert!(
        qemu_raw(&disk) == content,
        "qemu-img convert of {} differs",
        disk.display()
    );
    assert!(
        read_disk(&disk) == content,
        "vmdk read of {} differs",
        disk.display()
    );
}

#[test]
fn snapshots_remove_middle_revert_consolidate_checked_by_qemu_img() {
    if !require_tool("qemu-img") {
        return;
    }
    let env = Env::new();
    let (img, k) = known_image(&env);
    env.ok(&[
        "vm",
        "create",
        "vm37",
        "--disk-from",
        img.to_str().unwrap(),
        "--format",
        "thin",
    ]);
    expect_current(&env, &k, &["vm37.vmdk"]);

    env.ok(&["vm", "snapshot", "vm37", "--name", "s1"]);
    expect_current(&env, &k, &["vm37-000001.vmdk", "vm37.vmdk"]);
    write_disk(&env.current_disk("vm37", 0), 0, 65536, 0xa1);
    let k1 = put(k.clone(), 0, 65536, 0xa1);

    env.ok(&["vm", "snapshot", "vm37", "--name", "s2"]);
    write_disk(&env.current_disk("vm37", 0), MIB as u64, 4096, 0xa2);
    let k2 = put(k1.clone(), MIB, 4096, 0xa2);

    let out = env.ok(&[
        "vm",
        "snapshot",
        "vm37",
        "--name",
        "s3",
        "--description",
        "third",
    ]);
    assert!(
        out.contains("vm37-000002.vmdk -> vm37-000003.vmdk"),
        "{out}"
    );
    write_disk(
        &env.current_disk("vm37", 0),
        3 * MIB as u64 - 512,
        1024,
        0xa3,
    );
    let k3 = put(k2.clone(), 3 * MIB - 512, 1024, 0xa3);
    expect_current(
        &env,
        &k3,
        &[
            "vm37-000003.vmdk",
            "vm37-000002.vmdk",
            "vm37-000001.vmdk",
            "vm37.vmdk",
        ],
    );
    let tree = env.ok(&["vm", "snapshots", "vm37"]);
    assert!(
        tree.contains("\n  s2 [uid 2]")
            && tree.contains("    s3 [uid 3]")
            && tree.contains("you are here"),
        "{tree}"
    );

    let out = env.ok(&["vm", "remove-snapshot", "vm37", "s2"]);
    assert!(
        out.contains("committed vm37-000002.vmdk into vm37-000001.vmdk"),
        "{out}"
    );
    expect_current(
        &env,
        &k3,
        &["vm37-000003.vmdk", "vm37-000001.vmdk", "vm37.vmdk"],
    );
    assert!(
        qemu_raw(&env.snapshot_disk("vm37", "s1")) == k,
        "s1 keeps its state"
    );
    assert!(
        qemu_raw(&env.snapshot_disk("vm37", "s3")) == k2,
        "s3 keeps its state"
    );

    env.ok(&["vm", "revert", "vm37", "s3"]);
    expect_current(
        &env,
        &k2,
        &["vm37-000004.vmdk", "vm37-000001.vmdk", "vm37.vmdk"],
    );
    write_disk(&env.current_disk("vm37", 0), 512, 512, 0xa4);
    let k4 = put(k2.clone(), 512, 512, 0xa4);

    // A backup that died after its snapshot: the .vmx is one level deeper than the .vmsd.
    let vmsd = env.vm_dir("vm37").join("vm37.vmsd");
    let saved = std::fs::read(&vmsd).unwrap();
    env.ok(&["vm", "snapshot", "vm37", "--name", "_vcb-backup"]);
    std::fs::write(&vmsd, saved).unwrap();
    write_disk(&env.current_disk("vm37", 0), 2 * MIB as u64, 512, 0xa5);
    let k5 = put(k4, 2 * MIB, 512, 0xa5);
    expect_current(
        &env,
        &k5,
        &[
            "vm37-000005.vmdk",
            "vm37-000004.vmdk",
            "vm37-000001.vmdk",
            "vm37.vmdk",
        ],
    );
    let out = env.ok(&["vm", "consolidate", "vm37"]);
    assert!(
        out.contains("committed vm37-000005.vmdk into vm37-000004.vmdk"),
        "{out}"
    );
    expect_current(
        &env,
        &k5,
        &["vm37-000004.vmdk", "vm37-000001.vmdk", "vm37.vmdk"],
    );
    assert!(env
        .ok(&["vm", "consolidate", "vm37"])
        .contains("nothing to do"));

    env.ok(&["vm", "remove-snapshot", "vm37", "--all"]);
    expect_current(&env, &k5, &["vm37.vmdk"]);
    assert_eq!(
        env.ok(&["vm", "snapshots", "vm37"]).trim(),
        "vm37 has no snapshots"
    );
    let files = host_util::listing(&env.vm_dir("vm37"));
    assert_eq!(
        files,
        [
            ".vcb-lock",
            "vm37-flat.vmdk",
            "vm37.nvram",
            "vm37.vmdk",
            "vm37.vmsd",
            "vm37.vmx"
        ]
    );
}

#[test]
fn a_second_process_gets_busy_or_waits() {
    let env = Env::new();
    env.ok(&["vm", "create", "vm37", "--disk", "1m", "--format", "thin"]);
    let lock_file = env.vm_dir("vm37").join(host::LOCK_FILE_NAME);
    let held = host::FileLock::acquire(&lock_file, host::LockMode::NoWait).unwrap();
    let err = env.fails(&["vm", "snapshot", "vm37"]);
    assert!(err.contains("VM is busy"), "{err}");
    let mut waiting = env.command(
        env!("CARGO_BIN_EXE_vcb"),
        &["vm", "snapshot", "vm37", "--wait", "--name", "w"],
    );
    let mut child = waiting.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "--wait must wait for the lock"
    );
    drop(held);
    assert!(child.wait().unwrap().success());
    assert!(env
        .ok(&["vm", "snapshots", "vm37"])
        .starts_with("w [uid 1]"));
}

#[test]
fn two_processes_snapshotting_at_once_leave_a_consistent_vm() {
    let env = Env::new();
    env.ok(&["vm", "create", "vm37", "--disk", "1m", "--format", "thin"]);
    let mut succeeded = 0;
    for _ in 0..4 {
        let spawn = || {
            let mut c = env.command(env!("CARGO_BIN_EXE_vcb"), &["vm", "snapshot", "vm37"]);
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        for o in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
            if o.status.success() {
                succeeded += 1;
            } else {
                let err = env.check_fails("concurrent snapshot", &o);
                assert!(err.contains("VM is busy"), "{err}");
            }
        }
    }
    assert!(succeeded >= 4, "each round has a winner");
    let h = host::Host::open(&env.root).unwrap();
    let vm = h.find_vm("vm37").unwrap();
    let db = host::read_vmsd(&vm.vmsd_path()).unwrap();
    assert_eq!(db.snapshots().len(), succeeded);
    let chain = vm.disk_chains(&h).unwrap().remove(0).1;
    assert_eq!(chain.len(), succeeded + 1);
    let redo_logs = host_util::listing(&vm.dir)
        .iter()
        .filter(|f| f.ends_with("-delta.vmdk"))
        .count();
    assert_eq!(redo_logs, succeeded);
    env.ok(&["vm", "remove-snapshot", "vm37", "--all"]);
}

#[test]
fn hostile_vmx_and_vmsd_are_refused_and_left_unchanged() {
    let env = Env::new();
    env.ok(&["vm", "create", "vm37", "--disk", "1m", "--format", "thin"]);
    let vmx = env.vm_dir("vm37").join("vm37.vmx");
    let good = std::fs::read_to_string(&vmx).unwrap();
    // Everything but the lock files, which locking creates.
    let files = || -> Vec<String> {
        host_util::listing(&env.root)
            .into_iter()
            .filter(|f| !f.ends_with(host::LOCK_FILE_NAME))
            .collect()
    };
    let before = files();
    let cases = [
        (
            good.replace("\"vm37.vmdk\"", "\"/etc/passwd\""),
            "lies outside the host's datastores",
        ),
        (
            good.replace("\"vm37.vmdk\"", "\"../../../../etc/passwd\""),
            "`..` component",
        ),
        (
            format!("{good}memsize = \"512\"\n"),
            "duplicate key \"memsize\"",
        ),
        (format!("{good}scsi0:0.fileName\n"), "malformed entry"),
    ];
    for (text, expect) in cases {
        std::fs::write(&vmx, &text).unwrap();
        let err = env.fails(&["vm", "snapshot", "moref:16"]);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(err.contains("vm37.vmx"), "the error names the file: {err}");
        assert_eq!(std::fs::read_to_string(&vmx).unwrap(), text);
    }
    std::fs::write(&vmx, &good).unwrap();
    let vmsd = env.vm_dir("vm37").join("vm37.vmsd");
    let cycle = ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"2\"\nsnapshot.numSnapshots = \"2\"\n\
        snapshot0.uid = \"1\"\nsnapshot0.parent = \"2\"\nsnapshot0.filename = \"a.vmsn\"\n\
        snapshot1.uid = \"2\"\nsnapshot1.parent = \"1\"\nsnapshot1.filename = \"b.vmsn\"\n";
    std::fs::write(&vmsd, cycle).unwrap();
    let err = env.fails(&["vm", "remove-snapshot", "vm37", "--all"]);
    assert!(
        err.contains("vm37.vmsd") && err.contains("its own ancestor"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&vmsd).unwrap(), cycle);
    std::fs::remove_file(&vmsd).unwrap();
    assert_eq!(files(), before);
}

#[test]
fn vms_are_created_registered_listed_and_destroyed() {
    let env = Env::new();
    env.ok(&["folder", "create", "/Production/Web"]);
    env.ok(&["pool", "create", "/ha-datacenter/host/esx1/Resources/Gold"]);
    let out = env.ok(&[
        "vm",
        "create",
        "web01",
        "--disk",
        "1m",
        "--disk",
        "2m",
        "--format",
        "eagerzeroedthick",
        "--folder",
        "/Production/Web",
        "--pool",
        "Gold",
        "--memory",
        "512",
        "--cpus",
        "2",
        "--guest-os",
        "rhel5",
    ]);
    assert!(out.contains("moref 16"), "{out}");
    let list = env.ok(&["vm", "list"]);
    assert!(
        list.contains("/ha-datacenter/vm/Production/Web") && list.contains("Resources/Gold"),
        "{list}"
    );
    let show: serde_json::Value =
        serde_json::from_str(&env.ok(&["vm", "show", "web01", "--json"])).unwrap();
    assert_eq!(show["memory_mb"], 512);
    assert_eq!(show["disks"].as_array().unwrap().len(), 2);
    assert!(env
        .fails(&["vm", "create", "web01", "--disk", "1m"])
        .contains("registered already"));
    assert!(env
        .fails(&["vm", "create", "x", "--disk", "1m", "--format", "2gbsparse"])
        .contains("disk format"));
    env.ok(&["vm", "unregister", "web01"]);
    assert_eq!(env.ok(&["vm", "list", "--json"]).trim(), "[]");
    env.ok(&[
        "vm",
        "register",
        "[datastore1] web01/web01.vmx",
        "--folder",
        "/Production",
    ]);
    assert!(env
        .fails(&["vm", "register", "[datastore1] web01/web01.vmx"])
        .contains("registered already"));
    env.ok(&["vm", "destroy", "web01"]);
    assert!(!env.vm_dir("web01").exists());
    assert!(env
        .fails(&["vm", "show", "web01"])
        .contains("no virtual machine matches"));
}

#[test]
fn host_configuration_backup_round_trip() {
    let env = Env::new();
    env.ok(&["folder", "create", "/Production"]);
    env.ok(&["pool", "create", "/Gold"]);
    let nfs = env.dir.path().join("nfs");
    std::fs::create_dir(&nfs).unwrap();
    env.ok(&["datastore", "add", "nfs1", nfs.to_str().unwrap()]);
    env.ok(&[
        "vm",
        "create",
        "vm37",
        "--disk",
        "1m",
        "--format",
        "thin",
        "--folder",
        "/Production",
    ]);
    std::fs::write(
        env.root.join("backuptools.conf"),
        "VCHOST=\"localhost\"\nVMNAMECACHE=\"/tmp/c\"\n",
    )
    .unwrap();
    let bundle = env.dir.path().join("esx1-config.toml");
    env.ok(&["host", "config-backup", bundle.to_str().unwrap()]);

    let other = env.dir.path().join("other");
    let o = env
        .command_at(
            env!("CARGO_BIN_EXE_vcb"),
            &other,
            &["host", "config-restore", bundle.to_str().unwrap()],
        )
        .output()
        .unwrap();
    env.check_ok("config-restore", &o);
    for f in ["host.toml", "inventory.toml", "backuptools.conf"] {
        assert_eq!(
            std::fs::read(env.root.join(f)).unwrap(),
            std::fs::read(other.join(f)).unwrap(),
            "{f}"
        );
    }
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("vm37/vm37.vmx does not exist"), "{stderr}");

    let text = std::fs::read_to_string(&bundle).unwrap();
    std::fs::write(&bundle, text.replace("Production", "Prod")).unwrap();
    let before = std::fs::read(env.root.join("host.toml")).unwrap();
    let err = env.fails(&["host", "config-restore", bundle.to_str().unwrap()]);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert_eq!(std::fs::read(env.root.join("host.toml")).unwrap(), before);
}
