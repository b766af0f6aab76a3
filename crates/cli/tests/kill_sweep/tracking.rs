//! Issue 12: kill -9 at any point of a backup that reads only what change tracking
//! reports: the next backup succeeds, and its point holds exactly the VM's disks (a
//! killed backup never makes a later incremental miss a change).

use crate::harness::sweep;
use crate::util::{disk_paths, write};
use std::path::Path;

const MB: u64 = 1 << 20;
const PASS: &str = "kill sweep passphrase";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every disk of the newest point of vm1 equals the VM's disk now.
fn newest_point_is_the_vm(root: &Path, what: &str) {
    let b = repo::backend::open(s(&root.join("repo")), &Default::default()).unwrap();
    let r = repo::Repository::open(b, &repo::Unlock::Passphrase(PASS.as_bytes().to_vec())).unwrap();
    let point = r.find_point("vm1").unwrap();
    let h = host::Host::open(&root.join("host")).unwrap();
    let vm = h.find_vm("vm1").unwrap();
    for (entry, disk) in point.disks.iter().zip(vm.disks(&h).unwrap()) {
        let mut src = repo::RepoDisk::open(&r, entry).unwrap();
        let mut got = vec![0u8; entry.capacity as usize];
        vmdk::DiskSource::read_at(&mut src, 0, &mut got).unwrap();
        let want = crate::util::content(&disk.path);
        assert!(
            got == want,
            "{what}: the newest point of {} differs from the VM's disk",
            entry.node
        );
    }
}

#[test]
fn issue_12_a_tracked_incremental_backup_survives_kill_9() {
    let env = crate::repo_sweep::template_tracked(1, true);
    let disks = disk_paths(&env, "vm1");
    // Tracked changes on both disks since that point.
    write(&disks[0], MB + 4096, &[7; 300_000]);
    write(&disks[1], 512 * 1024, &[9; 4096]);
    let incremental = std::cell::Cell::new(0);
    let (kills, _) = sweep(
        env.dir.path(),
        crate::repo_sweep::backup_cmd,
        |root, what| {
            let text = crate::repo_sweep::run_to_end(&crate::repo_sweep::backup_cmd(root), what);
            if text.contains("changed areas") {
                incremental.set(incremental.get() + 1);
            }
            newest_point_is_the_vm(root, what);
            true
        },
    );
    eprintln!(
        "figure: tracked incremental backup: {kills} kills; the next backup was incremental {} times, exact every time",
        incremental.get()
    );
    assert!(incremental.get() > 0);
}
