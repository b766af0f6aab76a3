//! Issue 10: disk tools refuse disks others use, descriptors that name host files, and
//! hostile descriptors that would exhaust memory.

use super::{fails, ok};
use std::path::Path;
use std::process::{Command, Output};

/// A tool run with `VCB_ROOT` pointing at `root` (a host, or nothing).
fn tool(bin: &str, root: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("VCB_ROOT", root)
        .env("VCB_CONF", "")
        .output()
        .unwrap()
}

fn vmkfstools(root: &Path, args: &[&str]) -> Output {
    tool(env!("CARGO_BIN_EXE_vmkfstools"), root, args)
}

fn vcb(root: &Path, args: &[&str]) -> Output {
    tool(env!("CARGO_BIN_EXE_vcb"), root, args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn issue_10_parents_of_redo_logs_are_never_written() {
    let t = tempfile::tempdir().unwrap();
    let none = t.path().join("no-host");
    let base = t.path().join("base.vmdk");
    ok(vmkfstools(&none, &["-c", "4M", "-d", "thin", s(&base)]));
    let child = t.path().join("base-000001.vmdk");
    ok(vcb(&none, &["disk", "snapshot", s(&base), s(&child)]));
    for args in [
        vec!["-X", "8M", s(&base)],
        vec!["-K", s(&base)],
        vec!["-j", s(&base)],
        vec!["-U", s(&base)],
        vec!["-x", "repair", s(&base)],
    ] {
        let err = fails(vmkfstools(&none, &args));
        assert!(err.contains("parent of redo log"), "{args:?}: {err}");
    }
    let data = t.path().join("data");
    std::fs::write(&data, b"x").unwrap();
    let err = fails(vcb(&none, &["disk", "write", s(&base), "0", s(&data)]));
    assert!(err.contains("parent of redo log"), "{err}");
    // The child itself may be committed into it: it is the one child.
    ok(vcb(&none, &["disk", "commit", s(&child)]));
    ok(vmkfstools(&none, &["-X", "8M", s(&base)]));
}

/// Holds an open-file-description lock on `file` as QEMU does on its images.
fn ofd_lock(file: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file).unwrap();
    // SAFETY: an all-zero flock is valid; F_OFD_SETLK reads it; the descriptor is open.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_RDLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 100;
        fl.l_len = 1;
        assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl), 0);
    }
    f
}

#[test]
fn issue_10_disks_a_process_holds_locks_on_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let none = t.path().join("no-host");
    let disk = t.path().join("d.vmdk");
    ok(vmkfstools(&none, &["-c", "4M", "-d", "thin", s(&disk)]));
    let held = ofd_lock(&t.path().join("d-flat.vmdk"));
    for args in [
        vec!["-K", s(&disk)],
        vec!["-X", "8M", s(&disk)],
        vec!["-E", s(&disk), s(&t.path().join("e.vmdk"))],
    ] {
        let err = fails(vmkfstools(&none, &args));
        assert!(err.contains("open in a running VM"), "{args:?}: {err}");
    }
    drop(held);
    ok(vmkfstools(&none, &["-K", s(&disk)]));
}

#[test]
fn issue_10_disk_from_outside_its_folder_needs_consent() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    ok(vcb(&root, &["host", "init", "--name", "h"]));
    let secret = t.path().join("secret.txt");
    std::fs::write(&secret, vec![b'S'; 8192]).unwrap();
    std::fs::create_dir(t.path().join("import")).unwrap();
    let evil = t.path().join("import/evil.vmdk");
    std::fs::write(
        &evil,
        format!("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"{}\" 0\n", s(&secret)),
    )
    .unwrap();
    let err = fails(vcb(
        &root,
        &["vm", "create", "vm1", "--disk-from", s(&evil)],
    ));
    assert!(err.contains("outside the disk's folder"), "{err}");
    assert!(!root.join("volumes/datastore1/vm1").exists());
    // The user may vouch for it.
    ok(vcb(
        &root,
        &[
            "vm",
            "create",
            "vm1",
            "--disk-from",
            s(&evil),
            "--allow-outside-extents",
        ],
    ));
    // vmkfstools -i the same.
    let copy = t.path().join("copy.vmdk");
    let err = fails(vmkfstools(&none_root(&t), &["-i", s(&evil), s(&copy)]));
    assert!(err.contains("outside the disk's folder"), "{err}");
}

fn none_root(t: &tempfile::TempDir) -> std::path::PathBuf {
    t.path().join("no-host")
}

#[test]
fn issue_10_a_many_extent_descriptor_stays_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("big.vmdk");
    ok(vmkfstools(
        &none_root(&t),
        &["-c", "1T", "-d", "monosparse", s(&big)],
    ));
    // The reported shape: one 1 TiB sparse file in 1000 one-sector extents.
    let mut text = String::from("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n");
    for _ in 0..1000 {
        text.push_str("RW 1 SPARSE \"big.vmdk\"\n");
    }
    std::fs::write(t.path().join("many.vmdk"), &text).unwrap();
    // 1000 distinct 1 TiB sparse files (headers only), one sector of each.
    let mut distinct = String::from("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n");
    for i in 0..1000 {
        // Links cost no space; each is a distinct name and open.
        std::fs::hard_link(&big, t.path().join(format!("e{i}.vmdk"))).unwrap();
        distinct.push_str(&format!("RW 1 SPARSE \"e{i}.vmdk\"\n"));
    }
    std::fs::write(t.path().join("distinct.vmdk"), &distinct).unwrap();
    for (name, want_ok) in [("many.vmdk", false), ("distinct.vmdk", true)] {
        let disk = t.path().join(name);
        // 1 GiB of address space: 1000 × (GD + 16 MiB GT cache) would need 16 GiB.
        let script = format!(
            "ulimit -v 1048576; exec {} disk read {} 0 512000 >/dev/null",
            env!("CARGO_BIN_EXE_vcb"),
            s(&disk)
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("VCB_ROOT", none_root(&t))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), want_ok, "{name}: {err}");
        if !want_ok {
            assert!(err.contains("more than one sparse extent"), "{err}");
        }
    }
}

#[test]
fn issue_10_global_root_before_the_subcommand() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("h");
    let out = Command::new(env!("CARGO_BIN_EXE_vcb"))
        .args(["--root", s(&root), "host", "init", "--name", "esx9"])
        .env_remove("VCB_ROOT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vcb"))
        .args(["--root", s(&root), "-L", "5", "host", "show"])
        .env_remove("VCB_ROOT")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("esx9"));
}
