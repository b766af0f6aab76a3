//! Issue 10 with a running guest: a restore never replaces the files of a VM QEMU runs,
//! a thaw that fails fails the backup, and an independent disk is never copied torn.

use super::{host_with, layout};
use crate::e2e::content;
use crate::rt::{self, TestVm, BLOCKS};
use std::time::Duration;

#[test]
fn issue_10_restore_onto_a_running_vm_is_refused() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:live", "-r", dest.to_str().unwrap()],
    );
    env.ok("vcb", &["vm", "power-on", "live"]);
    t.wait_guest("writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS / 4)
    });
    let err = env.fails(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(
        err.contains("poweredOn") && err.contains("--power-off"),
        "{err}"
    );
    let seq = t.guest().last_seq.unwrap_or(0);
    t.wait_guest("the guest still writes", Duration::from_secs(60), |g| {
        g.last_seq > Some(seq + 4)
    });
    // Asked to, the restore powers the VM off first and then replaces it.
    let out = env.ok_all(
        "vcbRestore",
        &[
            "-s",
            dest.to_str().unwrap(),
            "-l",
            "overwrite",
            "--power-off",
        ],
    );
    assert!(out.contains("powered off for the restore"), "{out}");
    assert!(matches!(t.vm.status().unwrap(), runtime::RuntimeState::Off));
    let h = env.host();
    let vm = h.find_vm("live").unwrap();
    assert_eq!(vm.power_state(&h), host::PowerState::PoweredOff);
    assert_eq!(
        content(&vm.disks(&h).unwrap()[0].path),
        content(&dest.join("scsi0-0-0-live.vmdk"))
    );
}

/// Appends `extra` to the guest's kernel command line.
fn append_kernel_args(t: &TestVm, extra: &str) {
    let vmx = t.vm.vmx_path();
    let text = std::fs::read_to_string(vmx).unwrap();
    let text = text.replace(
        "vcb.append = \"console=ttyS0",
        &format!("vcb.append = \"{extra} console=ttyS0"),
    );
    std::fs::write(vmx, text).unwrap();
}

#[test]
fn issue_10_a_thaw_that_fails_fails_the_backup() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(true));
    append_kernel_args(&t, "vcb.failthaw=1");
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    t.wait_guest("the agent and writes", Duration::from_secs(120), |g| {
        g.agent && g.last_seq >= Some(BLOCKS / 4)
    });
    let dest = env.path("b");
    let err = env.fails(
        "vcbMounter",
        &["-a", "name:live", "-r", dest.to_str().unwrap()],
    );
    assert!(err.contains("COULD NOT THAW"), "{err}");
    assert!(!dest.exists() || dest.join(backup::INCOMPLETE_MARKER).exists());
    // The snapshot went: the VM writes its own disk again.
    let h = env.host();
    let vm = h.find_vm("live").unwrap();
    assert!(host::read_vmsd(&vm.vmsd_path())
        .unwrap()
        .snapshots()
        .is_empty());
    let seq = t.guest().last_seq.unwrap_or(0);
    t.wait_guest("the guest still writes", Duration::from_secs(60), |g| {
        g.last_seq > Some(seq + 4)
    });
}

#[test]
fn issue_10_an_independent_disk_of_a_running_vm_is_not_copied_torn() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let data = t.dir.path().join("data.vmdk");
    vmdk::create(
        &data,
        &vmdk::CreateSpec::new(1 << 20, vmdk::DiskFormat::Thin),
    )
    .unwrap();
    let vmx = t.vm.vmx_path();
    let mut text = std::fs::read_to_string(vmx).unwrap();
    text.push_str("scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"data.vmdk\"\nscsi0:1.mode = \"independent-persistent\"\n");
    std::fs::write(vmx, text).unwrap();
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    t.wait_guest("writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS / 4)
    });
    let dest = env.path("b");
    let out = env.ok_all(
        "vcbMounter",
        &["-a", "name:live", "-r", dest.to_str().unwrap()],
    );
    assert!(out.contains("independent disk of a running VM"), "{out}");
    let c = crate::e2e::catalog(&dest);
    let disk = c
        .disks
        .iter()
        .find(|d| d.node.to_string() == "scsi0:1")
        .unwrap();
    assert!(!disk.backed_up && disk.reason.as_deref().unwrap_or("").contains("independent"));
    assert!(!dest.join("scsi0-1-0-data.vmdk").exists());
}
