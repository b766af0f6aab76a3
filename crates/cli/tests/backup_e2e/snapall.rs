//! vcbSnapAll over a group with one VM whose disk cannot be read.

use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

#[test]
fn snapall_backs_up_the_others_and_fails_overall() {
    let env = Env::new();
    env.vm("web", &[(MB, DiskFormat::Thin)], 1);
    let broken = env.vm("broken", &[(MB, DiskFormat::Thin)], 2);
    env.vm("db", &[(2 * MB, DiskFormat::ZeroedThick)], 3);
    // The broken VM's flat extent is gone: its disk cannot be read.
    std::fs::remove_file(broken.dir.join("broken-flat.vmdk")).unwrap();
    let root = env.path("nightly");
    std::fs::create_dir(&root).unwrap();
    let out = env.run(
        "vcbSnapAll",
        &["-a", "powerstate:off", "-r", root.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("Summary: 2 of 3 VMs backed up"), "{stdout}");
    assert!(stderr.contains("broken"), "{stderr}");
    for vm in ["web", "db"] {
        let c = catalog(&root.join(vm));
        assert_eq!(c.display_name, vm);
        assert!(!root.join(vm).join(backup::INCOMPLETE_MARKER).exists());
    }
    assert!(!root.join("broken/catalog").exists());
    let none = env.ok("vcbSnapAll", &["-a", "none:", "-r", root.to_str().unwrap()]);
    assert!(none.contains("No VM matches"), "{none}");
}
