//! Issue 10: a restore never replaces the files of a VM that QEMU is running.

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
