//! Issue 10: what a backup leaves on disk (modes, EFI variables) and how it stops.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn issue_10_backups_are_private_and_carry_the_efi_variables() {
    let env = Env::new();
    let vm = env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 4);
    std::fs::write(vm.dir.join("vm1.efivars.fd"), vec![0xef; 4096]).unwrap();
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
    );
    assert_eq!(mode(&dest), 0o700, "backup folder");
    for f in walk(&dest) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let mut c = catalog(&dest);
    assert!(c.file("vm1.efivars.fd").is_some(), "{:?}", c.files);
    // Restored under another name, the variables follow the .vmx's name.
    let folder = vmx::DatastorePath::new("datastore1", "copy/").unwrap();
    retarget(&mut c, &folder, "copy", &["copy.vmdk"]);
    restore_with_catalog(&env, "vcbRestore", &dest, &c);
    let copy = registered(&env, "[datastore1] copy/copy.vmx");
    assert_eq!(
        std::fs::read(copy.dir.join("copy.efivars.fd")).unwrap(),
        vec![0xef; 4096]
    );
    // The host's configuration bundle holds backuptools.conf (a PASSWORD): 0600.
    let bundle = env.path("host-config.toml");
    env.ok("vcb", &["host", "config-backup", bundle.to_str().unwrap()]);
    assert_eq!(mode(&bundle), 0o600);
}

#[test]
fn issue_10_sigint_stops_a_backup_and_leaves_the_vm_as_it_was() {
    let env = Env::new();
    env.vm("vm1", &[(4 * MB, DiskFormat::Thin)], 6);
    let before: Vec<Vec<u8>> = disk_paths(&env, "vm1").iter().map(|p| content(p)).collect();
    let dest = env.path("b");
    let child = env
        .command(
            "vcbMounter",
            &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
        )
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "120")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dest.join("vm1.vmx").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "backup did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill with a valid signal to our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a cancelled backup must fail");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!dest.exists() || dest.join(backup::INCOMPLETE_MARKER).exists());
    let tops = disk_paths(&env, "vm1");
    assert!(
        tops[0].ends_with("vm1.vmdk"),
        "the snapshot was removed: {tops:?}"
    );
    let h = env.host();
    let vm = h.find_vm("vm1").unwrap();
    assert!(host::read_vmsd(&vm.vmsd_path())
        .unwrap()
        .snapshots()
        .is_empty());
    assert_eq!(content(&tops[0]), before[0]);
}
