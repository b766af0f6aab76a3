//! Issue 14 with a running guest: a backup proxy (an unprivileged user who cannot read
//! the host's folders) backs the VM up through `vcb hostd` while the guest writes; a
//! proxy killed mid-backup loses its snapshot when the lease runs out, committed live
//! with no guest write lost; the proxy's backup restored (through the agent) into
//! another datastore boots.

use super::{host_with, layout, redo_logs, shutdown_and_check};
use crate::agent_util::{add_user, Agent, Proxy};
use crate::e2e::{catalog, registered, retarget, text, write_catalog, Env};
use crate::rt::{self, check_point_in_time, disk_blocks, TestVm, BLOCKS};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn issue_14_proxy_backup_of_a_running_vm_then_a_killed_proxy_then_a_restore_that_boots() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    for d in [env.dir.path(), env.root.as_path(), t.dir.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    env.ok("vcb", &["host", "cert"]);
    let proxy = Proxy::new();
    let pw = add_user(&env, &proxy, "backup1", "backup");
    let agent = Agent::start(&env, &["--lease", "3"]);
    env.ok("vcb", &["vm", "power-on", "live"]);
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    let run = g.run().to_owned();
    let pw = pw.to_str().unwrap().to_owned();
    let args = |dest: &str| -> Vec<String> {
        let a = [
            "-h",
            &agent.url,
            "-u",
            "backup1",
            "--host-password-file",
            &pw,
        ];
        let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        v.extend(["--accept-new-host-cert", "-a", "name:live", "-r", dest].map(String::from));
        v
    };

    // A proxy backup while the guest writes is a point-in-time image.
    let before = t.guest().last_seq.unwrap();
    let dest = proxy.path("b1");
    let a = args(dest.to_str().unwrap());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    proxy.ok("vcbMounter", &a);
    let c = catalog(&dest);
    assert_eq!(c.state, vmx::PowerState::PoweredOn);
    let high = check_point_in_time(
        &disk_blocks(&dest.join(c.disks[0].filename.clone().unwrap())),
        &run,
    );
    assert!(
        high >= before,
        "the proxy backup misses writes ({high} < {before})"
    );
    assert!(redo_logs(t.dir.path()).is_empty());

    // The proxy killed after the snapshot: the agent commits it live when the lease ends.
    let killed = proxy.path("killed");
    let a = args(killed.to_str().unwrap());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut child = proxy
        .command("vcbMounter", &a)
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait("the proxy's snapshot", 60, || {
        !redo_logs(t.dir.path()).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    wait("the lease to expire and the snapshot to go", 60, || {
        redo_logs(t.dir.path()).is_empty()
    });
    let seen = t.guest().last_seq.unwrap();
    t.wait_guest("writes after the commit", Duration::from_secs(60), |g| {
        g.last_seq >= Some(seen + 16)
    });
    shutdown_and_check(&env, &t, &run, "live");

    // The proxy's backup restored through the agent into another datastore boots.
    let mut h = env.host();
    let ds2 = env.path("ds2");
    std::fs::create_dir(&ds2).unwrap();
    h.add_datastore("ds2", &ds2).unwrap();
    let mut c = catalog(&dest);
    let folder = vmx::DatastorePath::new("ds2", "copy/").unwrap();
    retarget(&mut c, &folder, "copy", &["copy.vmdk"]);
    let alt = proxy.path("alt-catalog");
    write_catalog(&alt, &c);
    if let Some(uid) = proxy.uid {
        std::os::unix::fs::chown(&alt, Some(uid), Some(uid)).unwrap();
    }
    let a = [
        "-h",
        &agent.url,
        "-u",
        "backup1",
        "--host-password-file",
        &pw,
        "-s",
    ];
    let mut a: Vec<&str> = a.to_vec();
    a.extend([
        dest.to_str().unwrap(),
        "-a",
        alt.to_str().unwrap(),
        "-l",
        "abort",
    ]);
    let out = proxy.run("vcbRestore", &a);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copy = registered(&env, "[ds2] copy/copy.vmx");
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::hard_link(t.dir.path().join(f), copy.dir.join(f)).unwrap();
    }
    let spec = format!("moref:{}", copy.moref);
    env.ok("vcb", &["vm", "power-on", &spec]);
    let serial = copy.dir.join("serial.log");
    let booted = || rt::Guest::parse(&std::fs::read_to_string(&serial).unwrap_or_default());
    wait("the restored copy to boot and write", 120, || {
        let g = booted();
        g.runs.len() == 1 && g.last_seq >= Some(16)
    });
    env.ok("vcb", &["vm", "power-off", &spec]);
    drop(agent);
    let _: &Env = &env;
}
