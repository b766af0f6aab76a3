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

#[test]
fn issue_10_snapall_reports_unloadable_vms_and_keeps_twins_apart() {
    let env = Env::new();
    env.vm("web", &[(MB, DiskFormat::Thin)], 1);
    let bad = env.vm("bad", &[(MB, DiskFormat::Thin)], 2);
    // Two VMs with one display name (in different folders).
    env.vm("twin", &[(MB, DiskFormat::Thin)], 3);
    let other = env.vm("twin2", &[(MB, DiskFormat::Thin)], 4);
    let vmx = std::fs::read_to_string(&other.vmx_path).unwrap();
    std::fs::write(
        &other.vmx_path,
        vmx.replace("displayName = \"twin2\"", "displayName = \"twin\""),
    )
    .unwrap();
    // A .vmx that no longer parses.
    std::fs::write(&bad.vmx_path, "this is not = = a vmx\n").unwrap();
    let root = env.path("nightly");
    std::fs::create_dir(&root).unwrap();
    let out = env.run("vcbSnapAll", &["-a", "any:", "-r", root.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Summary: 3 of 4 VMs backed up"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("bad"), "{stderr}");
    let folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let twins: Vec<&String> = folders.iter().filter(|f| f.starts_with("twin_")).collect();
    assert_eq!(twins.len(), 2, "{folders:?}");
    for t in twins {
        assert_eq!(catalog(&root.join(t)).display_name, "twin");
    }
}
