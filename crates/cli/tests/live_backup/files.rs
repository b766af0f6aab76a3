//! Issue 13 with a running guest: `vcbMounter -t file` mounts the file system of the VM's
//! ext4 data disk from the held snapshot while the guest keeps writing to its other disk;
//! `tar` reads the whole mount, and `-U` leaves no snapshot and no lost write.

use super::{host_with, layout, shutdown_and_check};
use crate::rt::{self, TestVm, BLOCKS};
use std::path::Path;
use std::time::Duration;
use testkit::guestimg::{self, TreeKind};

const TREE: TreeKind = TreeKind {
    symlinks: true,
    hardlinks: true,
    sparse: true,
    max_file: 4 << 20,
};
const DATA: u64 = 64 << 20;

/// A thin `name` in `dir` holding a GPT disk with one ext4 partition of `tree`.
fn data_disk(dir: &Path, tree: &Path, name: &str) {
    let (ext, raw) = (dir.join("data.ext4"), dir.join("data.raw"));
    guestimg::ext4(tree, &ext, 48 << 20, &[]);
    guestimg::blank(&raw, DATA);
    let parts = guestimg::sgdisk(&raw, &[(0, "8300")]);
    guestimg::place(&raw, parts[0].0, &ext);
    let path = dir.join(name);
    vmdk::create(&path, &vmdk::CreateSpec::new(DATA, vmdk::DiskFormat::Thin)).unwrap();
    let mut d = vmdk::Disk::open(&path, &vmdk::OpenOptions::writable()).unwrap();
    d.write_at(0, &std::fs::read(&raw).unwrap()).unwrap();
    d.close().unwrap();
    std::fs::remove_file(ext).unwrap();
    std::fs::remove_file(raw).unwrap();
}

#[test]
fn issue_13_vcbmounter_file_mode_on_a_running_vm() {
    let Some(guest) = rt::guest() else { return };
    if !testkit::tools::require_tools(guestimg::TOOLS) {
        return;
    }
    let t = TestVm::new(&guest, "live", layout(true));
    let tree = t.dir.path().join("..").join(format!(
        "{}-tree",
        t.dir.path().file_name().unwrap().to_string_lossy()
    ));
    guestimg::make_tree(&tree, TREE, 31);
    data_disk(t.dir.path(), &tree, "live_data.vmdk");
    let vmx = t.vm.vmx_path();
    let mut text = std::fs::read_to_string(vmx).unwrap();
    text.push_str("scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"live_data.vmdk\"\n");
    std::fs::write(vmx, text).unwrap();
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    t.wait_guest("writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS / 4)
    });
    let run = t.guest().run().to_string();

    let mnt = env.path("mnt");
    let out = env.ok(
        "vcbMounter",
        &["-a", "name:live", "-r", mnt.to_str().unwrap(), "-t", "file"],
    );
    assert!(out.contains("read-only on"), "{out}");
    let _guard = guestimg::Unmount(mnt.clone());
    // The guest keeps writing while the mount is read.
    let seq = t.guest().last_seq.unwrap();
    assert!(
        guestimg::tar_bytes(&mnt) > guestimg::file_bytes(&guestimg::manifest(&tree)),
        "tar read every file"
    );
    let mut got = guestimg::manifest(&mnt.join("digits/1"));
    got.remove("lost+found");
    assert_eq!(
        got,
        guestimg::manifest(&tree),
        "the mount shows the data disk's tree"
    );
    assert!(mnt.join("volumes/guest-ext4").is_dir());
    t.wait_guest(
        "the guest writes during the mount",
        Duration::from_secs(120),
        |g| g.last_seq > Some(seq + 8),
    );
    assert!(env
        .ok("vcb", &["vm", "snapshots", "live"])
        .contains("_vcb-file-access_"));

    env.ok("vcbMounter", &["-U", mnt.to_str().unwrap()]);
    assert!(!mnt.exists());
    assert!(!env
        .ok("vcb", &["vm", "snapshots", "live"])
        .contains("_vcb-file-access_"));
    let seq = t.guest().last_seq.unwrap();
    t.wait_guest("the guest writes after -U", Duration::from_secs(120), |g| {
        g.last_seq > Some(seq + 8)
    });
    // Every write the guest reported, before, during and after the mount, is on its disk.
    shutdown_and_check(&env, &t, &run, "live");
    std::fs::remove_dir_all(&tree).ok();
}
