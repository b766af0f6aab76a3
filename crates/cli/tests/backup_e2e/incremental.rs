//! Issue 12: incremental and differential VMDK exports. Each disk of an incremental
//! backup is a sparse child of the previous backup's disk holding only the changed
//! grains; the chain reads as the VM's disk at that time (`qemu-img compare`), restores
//! with vcbRestore, flattens with `vmkfstools -i`, and a missing parent is refused.

use crate::util::*;
use std::path::{Path, PathBuf};
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;
const DISK: &str = "scsi0-0-0-vm1.vmdk";

/// Backs up the first VM (by moref: a restored copy has the same name).
fn mount(env: &Env, dest: &Path, extra: &[&str]) -> String {
    let mut args = vec!["-a", "moref:16", "-r", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.ok("vcbMounter", &args)
}

/// Bytes of the backup's disk files (descriptor and extents).
fn disk_bytes(dir: &Path) -> u64 {
    catalog(dir)
        .files
        .iter()
        .filter(|f| f.name.starts_with("scsi0-0-0"))
        .map(|f| f.size_bytes)
        .sum()
}

#[test]
fn issue_12_incremental_and_differential_exports_chain_restore_and_flatten() {
    let env = Env::new();
    assert_eq!(
        env.vm("vm1", &[(32 * MB, DiskFormat::Thin)], 1).moref,
        host::VmRef(16)
    );
    let disk = disk_paths(&env, "vm1").remove(0);
    write(&disk, 0, &random_bytes(16 * MB, 3));
    env.ok("vcb", &["vm", "ctk", "enable", "vm1"]);
    let b = env.path("backups");
    std::fs::create_dir(&b).unwrap();
    let dir = |n: &str| -> PathBuf { b.join(n) };

    mount(&env, &dir("full"), &[]);
    assert!(catalog(&dir("full")).disks[0].change_id.is_some());
    let full_size = disk_bytes(&dir("full"));

    vcb_write(&env, &disk, 3 * MB, &random_bytes(100_000, 4));
    let out = mount(
        &env,
        &dir("inc1"),
        &["--incremental-from", dir("full").to_str().unwrap()],
    );
    assert!(
        out.contains("changed-block tracking: reading 1 changed areas"),
        "{out}"
    );
    let c1 = content(&disk);
    let inc1 = catalog(&dir("inc1"));
    assert_eq!(inc1.disks[0].parent_backup.as_deref(), Some("full"));
    let inc1_size = disk_bytes(&dir("inc1"));
    eprintln!("figure: full export {full_size} bytes, incremental {inc1_size} bytes");
    assert!(inc1_size < MB, "{inc1_size}");

    vcb_write(&env, &disk, 20 * MB + 7, b"second change");
    mount(
        &env,
        &dir("inc2"),
        &["--incremental-from", dir("inc1").to_str().unwrap()],
    );
    let c2 = content(&disk);
    vcb_write(&env, &disk, 9 * MB, &[5; 70_000]);
    mount(
        &env,
        &dir("diff"),
        &["--differential-from", dir("full").to_str().unwrap()],
    );
    let c3 = content(&disk);
    assert_eq!(
        catalog(&dir("diff")).disks[0].parent_backup.as_deref(),
        Some("full")
    );
    assert_eq!(
        catalog(&dir("inc2")).disks[0].parent_backup.as_deref(),
        Some("inc1")
    );

    // QEMU reads each chain as the disk was at its time.
    if require_tool("qemu-img") {
        let raw = |name: &str, data: &[u8]| {
            let p = env.path(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        for (folder, want) in [("inc1", &c1), ("inc2", &c2), ("diff", &c3)] {
            qemu_same(
                &dir(folder).join(DISK),
                &raw(&format!("{folder}.raw"), want),
            );
        }
    }

    // vmkfstools -i flattens a chain into one disk.
    let flat = env.path("flat.vmdk");
    env.ok(
        "vmkfstools",
        &[
            "-i",
            dir("inc2").join(DISK).to_str().unwrap(),
            flat.to_str().unwrap(),
        ],
    );
    assert!(
        content(&flat) == c2,
        "vmkfstools -i did not flatten the chain"
    );

    // vcbRestore restores the chain elsewhere.
    let mut c = catalog(&dir("inc2"));
    let folder = vmx::DatastorePath::new("datastore1", "back/").unwrap();
    retarget(&mut c, &folder, "back", &["back.vmdk"]);
    restore_with_catalog(&env, "vcbRestore", &dir("inc2"), &c);
    let back = registered(&env, "[datastore1] back/back.vmx");
    let restored = back.disks(&env.host()).unwrap().remove(0).path;
    assert!(content(&restored) == c2, "the restored chain differs");

    // A chain whose parent went missing is refused before anything is written.
    std::fs::rename(dir("inc1"), dir("moved")).unwrap();
    let err = env.fails(
        "vcbRestore",
        &["-s", dir("inc2").to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(
        err.contains("parent backup") && err.contains("missing"),
        "{err}"
    );
    std::fs::rename(dir("moved"), dir("inc1")).unwrap();

    // Tracking lost: the next "incremental" is a whole export, and says so.
    if require_tool("qemu-io") {
        let o = std::process::Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", "write -P 1 0 4k"])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let out = mount(
            &env,
            &dir("inc3"),
            &["--incremental-from", dir("inc2").to_str().unwrap()],
        );
        assert!(out.contains("exporting all of scsi0:0"), "{out}");
        assert_eq!(catalog(&dir("inc3")).disks[0].parent_backup, None);
        assert!(content(&dir("inc3").join(DISK)) == content(&disk));
    }
}

#[test]
fn issue_12_incremental_exports_refuse_a_base_elsewhere_or_of_another_vm() {
    let env = Env::new();
    env.vm("vm1", &[(8 * MB, DiskFormat::Thin)], 1);
    env.vm("vm2", &[(8 * MB, DiskFormat::Thin)], 2);
    let b = env.path("backups");
    std::fs::create_dir(&b).unwrap();
    env.ok(
        "vcbMounter",
        &["-a", "name:vm2", "-r", b.join("vm2").to_str().unwrap()],
    );
    let err = env.fails(
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            b.join("x").to_str().unwrap(),
            "--incremental-from",
            b.join("vm2").to_str().unwrap(),
        ],
    );
    assert!(err.contains("not of vm1"), "{err}");
    let other = env.path("elsewhere");
    std::fs::create_dir(&other).unwrap();
    mount(&env, &b.join("vm1-full"), &[]);
    let err = env.fails(
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            other.join("x").to_str().unwrap(),
            "--incremental-from",
            b.join("vm1-full").to_str().unwrap(),
        ],
    );
    assert!(err.contains("beside"), "{err}");
    assert!(!other.join("x").exists());
}
