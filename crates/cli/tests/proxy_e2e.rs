//! Issue 14: the host agent (`vcb hostd`) and the VCB tools on a backup proxy. The agent
//! listens on 127.0.0.1; the proxy runs the tools as an unprivileged user who cannot read
//! the host's root folder, so every byte it backs up came through the API and NBD.

#[path = "backup_e2e/util.rs"]
#[allow(dead_code, unused_imports)]
mod util;

#[path = "proxy_e2e/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "proxy_e2e/security.rs"]
mod security;

use agent::{add_user, audit, thumbprint, Agent, Proxy};
use util::{catalog, text, Env};

const MIB: u64 = 1 << 20;

/// A VM with two disks, the agent with a backup and a readonly user, and the proxy.
fn setup() -> (Env, Proxy, Agent, String, String) {
    let env = Env::new();
    for d in [env.dir.path(), env.root.as_path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    env.vm(
        "vm1",
        &[
            (8 * MIB, vmdk::DiskFormat::Thin),
            (4 * MIB, vmdk::DiskFormat::ZeroedThick),
        ],
        7,
    );
    let proxy = Proxy::new();
    thumbprint(&env);
    let pw = add_user(&env, &proxy, "backup1", "backup");
    let ro = add_user(&env, &proxy, "viewer", "readonly");
    let agent = Agent::start(&env, &[]);
    (
        env,
        proxy,
        agent,
        pw.display().to_string(),
        ro.display().to_string(),
    )
}

#[test]
fn proxy_backup_is_the_local_backup_and_the_host_stays_private() {
    let (env, proxy, agent, pw, _) = setup();
    assert!(!agent::proxy_can_read(&proxy, &env.root.join("host.toml")));
    let dest = proxy.path("b1");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "-h",
            &agent.url,
            "-u",
            "backup1",
            "--host-password-file",
            &pw,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |tool: &str, a: &[String]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        proxy.run(tool, &a)
    };
    // A first backup leaves the VM with a (.vmsd) snapshot database: take it before the
    // two backups compared.
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", env.path("first").to_str().unwrap()],
    );
    // An unknown certificate is refused until accepted, then pinned.
    let mut a = args(&["-a", "name:vm1", "-r"]);
    a.push(dest.display().to_string());
    let out = run("vcbMounter", &a);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("is unknown") && err.contains("--accept-new-host-cert"),
        "{err}"
    );
    assert!(!dest.exists());
    a.push("--accept-new-host-cert".into());
    let out = run("vcbMounter", &a);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("Backed up vm1 to"), "{said}");
    let pinned = std::fs::read_to_string(proxy.trust_file()).unwrap();
    assert!(pinned.contains(&thumbprint(&env)), "{pinned}");

    // The same files, the same disk contents as the host's own backup.
    let local = env.path("local");
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", local.to_str().unwrap()],
    );
    let (pc, lc) = (catalog(&dest), catalog(&local));
    let names = |c: &vmx::Catalog| {
        let mut n: Vec<String> = c.files.iter().map(|f| f.name.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&pc), names(&lc));
    assert_eq!(pc.disks.len(), lc.disks.len());
    for d in &lc.disks {
        let name = d.filename.clone().unwrap();
        util::qemu_same(&dest.join(&name), &local.join(&name));
    }
    // The snapshot is gone from the host; the audit log names the user and the VM.
    let h = env.host();
    let vm = h.find_vm("vm1").unwrap();
    assert!(h
        .lock_vm(vm.moref, host::LockMode::Wait)
        .unwrap()
        .snapshots()
        .snapshots()
        .is_empty());
    let log = audit(&env);
    assert!(log.iter().any(|e| e["user"] == "backup1"
        && e["action"] == "POST /api/v1/backups"
        && e["target"] == "name:vm1"
        && e["result"].as_str().unwrap().starts_with("ok")));
    // A restore from the proxy's backup on the host boots the same disks.
    let restored = env.ok_all(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-b", "overwrite"],
    );
    assert!(!restored.is_empty());
}

#[test]
fn lookups_and_ping_from_the_proxy_match_the_host() {
    let (env, proxy, agent, _, ro) = setup();
    let common = [
        "-h",
        agent.url.as_str(),
        "-u",
        "viewer",
        "--host-password-file",
        ro.as_str(),
        "--accept-new-host-cert",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let ok = |tool: &str, a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        proxy.ok(tool, &a)
    };
    let remote = ok("vcbVmName", with(&["-s", "any:"]));
    let local = env.ok("vcbVmName", &["-s", "any:"]);
    assert_eq!(remote, local);
    for c in ["vmfolders", "resourcepools", "datastores"] {
        assert_eq!(
            ok("vcbUtil", with(&["-c", c])),
            env.ok("vcbUtil", &["-c", c]),
            "{c}"
        );
    }
    let ping = ok("vcbUtil", with(&["-c", "ping"]));
    assert!(
        ping.starts_with("Ping succeeded: standalone host esx-test")
            && ping.contains("role readonly"),
        "{ping}"
    );
    // A readonly user may look but not snapshot.
    let mut a = with(&["-a", "name:vm1", "-r"]);
    a.push(proxy.path("nope").display().to_string());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let err = proxy.fails("vcbMounter", &a);
    assert!(
        err.contains("user viewer has role readonly; this needs backup"),
        "{err}"
    );
    assert!(!proxy.path("nope").exists());
    assert!(audit(&env).iter().any(|e| e["user"] == "viewer"
        && e["action"] == "POST /api/v1/backups"
        && e["result"].as_str().unwrap().starts_with("refused")));
}

#[test]
fn bad_credentials_and_changed_certificates_are_refused() {
    let (env, proxy, mut agent, pw, _) = setup();
    let bad = proxy.password_file("bad.pw", "not-it");
    let try_ping = |url: &str, user: &str, pw: &str, accept: bool| {
        let mut a = vec![
            "-c",
            "ping",
            "-h",
            url,
            "-u",
            user,
            "--host-password-file",
            pw,
        ];
        if accept {
            a.push("--accept-new-host-cert");
        }
        proxy.run("vcbUtil", &a)
    };
    let out = try_ping(&agent.url, "backup1", bad.to_str().unwrap(), true);
    assert!(
        text(&out.stderr).contains("wrong user name or password"),
        "{}",
        text(&out.stderr)
    );
    let out = try_ping(&agent.url, "mallory", &pw, true);
    assert!(text(&out.stderr).contains("wrong user name or password"));
    let log = audit(&env);
    assert!(log
        .iter()
        .any(|e| e["user"] == "mallory" && e["result"].as_str().unwrap().contains("refused")));
    // Plain HTTP is no way in.
    let out = try_ping(
        &agent.url.replace("https://", "http://"),
        "backup1",
        &pw,
        true,
    );
    assert!(
        text(&out.stderr).contains("HTTPS only"),
        "{}",
        text(&out.stderr)
    );
    assert!(try_ping(&agent.url, "backup1", &pw, false).status.success());
    // A new certificate on the same address is refused, even with --accept-new-host-cert.
    agent.kill();
    env.ok("vcb", &["host", "cert", "--replace"]);
    let mut again = Agent::start_on(&env, agent.port(), &[]);
    assert_eq!(again.url, agent.url);
    let out = try_ping(&again.url, "backup1", &pw, true);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("CHANGED") && err.lines().count() == 1, "{err}");
    again.kill();
}

/// Logs in with the agent crate's client, pinning into the proxy's trust file.
fn login(proxy: &Proxy, agent: &Agent, pw: &str) -> agent_client::Agent {
    let password = std::fs::read_to_string(pw).unwrap();
    let policy = ::agent::tls::TrustPolicy::Pinned {
        file: proxy.path("client-trust"),
        accept_new: true,
    };
    agent_client::Agent::login(&agent.url, "backup1", password.trim(), policy).unwrap()
}

use ::agent::client as agent_client;

/// Redo logs in the VM's folder (read without the VM lock a session holds).
fn snapshots(env: &Env) -> usize {
    let h = env.host();
    let vm = h.find_vm("vm1").unwrap();
    std::fs::read_dir(&vm.dir)
        .unwrap()
        .filter(|e| {
            let n = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            n.ends_with("-000001.vmdk")
        })
        .count()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_vanished_proxy_loses_its_snapshot_when_the_lease_runs_out() {
    let (env, proxy, agent, pw, _) = setup();
    drop(agent);
    let agent = Agent::start(&env, &["--lease", "2"]);
    let client = login(&proxy, &agent, &pw);
    let req = ::agent::api::BackupRequest {
        vm: "name:vm1".into(),
        ..Default::default()
    };
    // A session whose client never calls again (as if the proxy was killed).
    let session = client.start_backup(&req).unwrap();
    assert_eq!(session.lease_secs, 2);
    assert!(snapshots(&env) > 0, "the session holds a snapshot");
    wait_until("the lease to expire", || snapshots(&env) == 0);
    let err = client.finish_backup(&session.id).unwrap_err().to_string();
    assert!(err.contains("no backup session"), "{err}");
}

#[test]
fn an_agent_killed_mid_backup_cleans_up_when_it_restarts() {
    let (env, proxy, mut agent, pw, _) = setup();
    let client = login(&proxy, &agent, &pw);
    let session = client
        .start_backup(&::agent::api::BackupRequest {
            vm: "name:vm1".into(),
            ..Default::default()
        })
        .unwrap();
    agent.kill();
    assert!(snapshots(&env) > 0, "kill -9 leaves the snapshot");
    let err = client.keepalive(&session.id).unwrap_err().to_string();
    assert!(err.contains("connection refused"), "{err}");
    let again = Agent::start(&env, &[]);
    assert_eq!(
        snapshots(&env),
        0,
        "the restarted agent committed it before serving"
    );
    drop(again);

    // The same under a real proxy tool mid-backup: it fails with one clear line.
    let mut agent = Agent::start(&env, &[]);
    let dest = proxy.path("killed-agent");
    let args = [
        "-h",
        agent.url.as_str(),
        "-u",
        "backup1",
        "--host-password-file",
        pw.as_str(),
        "--accept-new-host-cert",
        "-a",
        "name:vm1",
        "-r",
        dest.to_str().unwrap(),
    ];
    let child = proxy
        .command("vcbMounter", &args)
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the proxy's snapshot", || snapshots(&env) > 0);
    agent.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains("host agent") || last.contains("NBD"), "{err}");
    assert!(!dest.exists(), "the incomplete backup folder is removed");
    let again = Agent::start(&env, &[]);
    assert_eq!(snapshots(&env), 0);
    drop(again);
}

#[test]
fn proxy_restore_to_another_datastore_registers_the_same_disks() {
    let (env, proxy, agent, pw, ro) = setup();
    let dest = proxy.path("b");
    let base = |user: &str, pwf: &str| -> Vec<String> {
        [
            "-h",
            agent.url.as_str(),
            "-u",
            user,
            "--host-password-file",
            pwf,
            "--accept-new-host-cert",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        proxy.run_tool(&a)
    };
    let mut a = base("backup1", &pw);
    a.insert(0, "vcbMounter".into());
    a.extend([
        "-a".into(),
        "name:vm1".into(),
        "-r".into(),
        dest.display().to_string(),
    ]);
    assert!(run(a).status.success());

    // An alternate catalog sends the copy to datastore ds2 under another name.
    let mut h = env.host();
    let ds2 = env.path("ds2");
    std::fs::create_dir(&ds2).unwrap();
    h.add_datastore("ds2", &ds2).unwrap();
    let mut c = catalog(&dest);
    let folder = vmx::DatastorePath::new("ds2", "copy/").unwrap();
    util::retarget(&mut c, &folder, "copy", &["copy.vmdk", "copy_1.vmdk"]);
    let alt = proxy.path("alt-catalog");
    util::write_catalog(&alt, &c);
    if let Some(uid) = proxy.uid {
        std::os::unix::fs::chown(&alt, Some(uid), Some(uid)).unwrap();
    }
    let restore = |user: &str, pwf: &str| {
        let mut a = base(user, pwf);
        a.insert(0, "vcbRestore".into());
        a.extend([
            "-s".into(),
            dest.display().to_string(),
            "-a".into(),
            alt.display().to_string(),
            "-l".into(),
            "abort".into(),
        ]);
        run(a)
    };
    // A readonly user may not restore; nothing is staged or registered.
    let out = restore("viewer", &ro);
    assert!(
        text(&out.stderr).contains("this needs backup"),
        "{}",
        text(&out.stderr)
    );
    let out = restore("backup1", &pw);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("Restored vm1 to [ds2] copy/copy.vmx (moref "),
        "{said}"
    );
    let copy = util::registered(&env, "[ds2] copy/copy.vmx");
    let h = env.host();
    let original = util::registered(&env, "[datastore1] vm1/vm1.vmx");
    for (o, n) in original
        .disks(&h)
        .unwrap()
        .iter()
        .zip(copy.disks(&h).unwrap())
    {
        util::qemu_same(&o.path, &n.path);
    }
    assert!(
        !env.root
            .join("agent/restores")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "staging removed"
    );
    // The same restore again stops on the conflict (-l abort) and changes nothing.
    let out = restore("backup1", &pw);
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn eight_proxies_back_up_eight_vms_through_one_agent_at_once() {
    let env = Env::new();
    for d in [env.dir.path(), env.root.as_path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    for i in 0..8u8 {
        env.vm(
            &format!("vm{i}"),
            &[(8 * MIB, vmdk::DiskFormat::Thin)],
            10 + i,
        );
    }
    let proxy = Proxy::new();
    thumbprint(&env);
    let pw = add_user(&env, &proxy, "backup1", "backup");
    let agent = Agent::start(&env, &[]);
    // The certificate is pinned once, before the crowd.
    let pinned = proxy.run(
        "vcbUtil",
        &[
            "-c",
            "ping",
            "-h",
            &agent.url,
            "-u",
            "backup1",
            "--host-password-file",
            pw.to_str().unwrap(),
            "--accept-new-host-cert",
        ],
    );
    assert!(pinned.status.success());
    let children: Vec<_> = (0..8)
        .map(|i| {
            let dest = proxy.path(&format!("b{i}"));
            let vm = format!("name:vm{i}");
            let a = [
                "-h",
                &agent.url,
                "-u",
                "backup1",
                "--host-password-file",
                pw.to_str().unwrap(),
                "-a",
                &vm,
                "-r",
                dest.to_str().unwrap(),
            ];
            proxy
                .command("vcbMounter", &a)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "vm{i}: {}", text(&out.stderr));
    }
    let h = env.host();
    for i in 0..8 {
        let dest = proxy.path(&format!("b{i}"));
        let c = catalog(&dest);
        let vm = h.find_vm(&format!("vm{i}")).unwrap();
        let disk = &vm.disks(&h).unwrap()[0].path;
        util::qemu_same(&dest.join(c.disks[0].filename.clone().unwrap()), disk);
    }
    let sessions = audit(&env)
        .iter()
        .filter(|e| {
            e["action"] == "POST /api/v1/backups" && e["result"].as_str().unwrap().starts_with("ok")
        })
        .count();
    assert_eq!(sessions, 8);
    assert!(
        !env.root
            .join("agent/sessions")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "no session left"
    );
}

#[test]
fn vcbsnapall_and_vcb_host_run_from_a_proxy() {
    let (env, proxy, agent, pw, _) = setup();
    env.vm("vm2", &[(4 * MIB, vmdk::DiskFormat::Thin)], 9);
    let root = proxy.path("all");
    std::fs::create_dir(&root).unwrap();
    if let Some(uid) = proxy.uid {
        std::os::unix::fs::chown(&root, Some(uid), Some(uid)).unwrap();
    }
    let said = proxy.ok(
        "vcbSnapAll",
        &[
            "-h",
            &agent.url,
            "-u",
            "backup1",
            "--host-password-file",
            &pw,
            "--accept-new-host-cert",
            "-a",
            "any:",
            "-r",
            root.to_str().unwrap(),
        ],
    );
    assert!(said.contains("Summary: 2 of 2 VMs backed up"), "{said}");
    for vm in ["vm1", "vm2"] {
        assert_eq!(catalog(&root.join(vm)).display_name, vm);
    }
    // vcb's own commands: backup and restore through --host; others say they cannot.
    let dest = proxy.path("vcb-backup");
    let global = [
        "--host",
        agent.url.as_str(),
        "--user",
        "backup1",
        "--host-password-file",
        pw.as_str(),
    ];
    let mut a: Vec<&str> = global.to_vec();
    a.extend(["backup", "name:vm2", dest.to_str().unwrap()]);
    let said = proxy.ok("vcb", &a);
    assert!(said.contains("Backed up vm2 to"), "{said}");
    let mut a: Vec<&str> = global.to_vec();
    a.extend(["vm", "list"]);
    let err = proxy.fails("vcb", &a);
    assert!(
        err.contains("only `vcb backup` and `vcb restore` run through a host agent"),
        "{err}"
    );
}

#[test]
fn file_level_mount_from_a_proxy_and_unmount() {
    if !testkit::tools::require_tools(&["mkfs.ext4"]) || !std::path::Path::new("/dev/fuse").exists()
    {
        return;
    }
    let env = Env::new();
    let vm = env.vm("fs1", &[(32 * MIB, vmdk::DiskFormat::Thin)], 3);
    // The disk holds an ext4 file system (no partition table) with one known file.
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("docs")).unwrap();
    std::fs::write(tree.join("docs/hello.txt"), b"hello from the guest\n").unwrap();
    let img = env.path("fs.img");
    testkit::guestimg::ext4(&tree, &img, 32 * MIB, &[]);
    let h = env.host();
    let disk = &vm.disks(&h).unwrap()[0].path;
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::writable()).unwrap();
    d.write_at(0, &std::fs::read(&img).unwrap()).unwrap();
    d.close().unwrap();
    thumbprint(&env);
    let proxy = Proxy::privileged();
    let pw = add_user(&env, &proxy, "backup1", "backup");
    let agent = Agent::start(&env, &[]);
    let mnt = proxy.path("mnt");
    let pw = pw.to_str().unwrap();
    let base = [
        "-h",
        agent.url.as_str(),
        "-u",
        "backup1",
        "--host-password-file",
        pw,
        "--accept-new-host-cert",
    ];
    let mut a = base.to_vec();
    a.extend(["-a", "name:fs1", "-t", "file", "-r", mnt.to_str().unwrap()]);
    let said = proxy.ok("vcbMounter", &a);
    assert!(said.contains("Mounted the file systems of fs1"), "{said}");
    let read = std::fs::read_to_string(mnt.join("digits/1/docs/hello.txt"));
    // A second session of the same VM waits for this one to end: refused at once.
    let mut a = base.to_vec();
    let other = proxy.path("b");
    a.extend(["-a", "name:fs1", "-r", other.to_str().unwrap()]);
    let err = proxy.fails("vcbMounter", &a);
    let redo = std::fs::read_dir(&vm.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("-00000")
        })
        .count();
    let said = proxy.ok("vcbMounter", &["-U", mnt.to_str().unwrap()]);
    assert_eq!(read.unwrap(), "hello from the guest\n");
    assert!(
        err.contains("a proxy session of this VM is open already"),
        "{err}"
    );
    assert!(redo > 0, "the session holds a snapshot while mounted");
    assert!(said.contains("Unmounted"), "{said}");
    assert!(!mnt.exists(), "the folder -t file created is gone");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&vm.dir)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().contains("-00000"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot stayed after -U"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn proxy_backups_into_a_repository_store_only_what_is_new() {
    let (_env, proxy, agent, pw, _) = setup();
    let repo = proxy.path("repo");
    let pass = proxy.password_file("repo.pass", "repo passphrase");
    let run = |tool: &str, args: &[&str]| {
        let out = proxy
            .command(tool, args)
            .env("VCB_PASSWORD_FILE", &pass)
            .output()
            .unwrap();
        eprintln!(
            "proxy$ {tool} {}\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout) + &text(&out.stderr)
    };
    let r = repo.to_str().unwrap();
    run(
        "vcb",
        &[
            "repo",
            "init",
            r,
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
        ],
    );
    let target = format!("repo:{r}");
    let backup = [
        "-h",
        agent.url.as_str(),
        "-u",
        "backup1",
        "--host-password-file",
        pw.as_str(),
        "--accept-new-host-cert",
        "-a",
        "name:vm1",
        "-r",
        target.as_str(),
    ];
    let first = run("vcbMounter", &backup);
    assert!(
        first.contains("Backed up vm1 to") && first.contains("as point"),
        "{first}"
    );
    let second = run("vcbMounter", &backup);
    assert!(second.contains("new 0 B"), "{second}");
    let list = run("vcb", &["repo", "list", r]);
    assert_eq!(list.matches("vm1").count(), 2, "{list}");
    run("vcb", &["repo", "verify", r]);
}

#[test]
fn vm_details_snapshots_power_and_host_configuration_through_the_api() {
    let (env, proxy, agent, pw, ro) = setup();
    let admin_pw = add_user(&env, &proxy, "root1", "admin");
    let as_user = |user: &str, pwf: &std::path::Path| {
        let password = std::fs::read_to_string(pwf).unwrap();
        let policy = ::agent::tls::TrustPolicy::Pinned {
            file: proxy.path("api-trust"),
            accept_new: true,
        };
        agent_client::Agent::login(&agent.url, user, password.trim(), policy).unwrap()
    };
    let viewer = as_user("viewer", std::path::Path::new(&ro));
    let backup = as_user("backup1", std::path::Path::new(&pw));
    let admin = as_user("root1", &admin_pw);
    let moref = viewer.vms("name:vm1").unwrap().vms[0].moref.clone();
    let d = viewer.vm_details(&moref).unwrap();
    assert_eq!(d.info.name, "vm1");
    assert_eq!(d.disks.len(), 2);
    assert!(d.snapshots.is_empty());
    // Snapshots: backup may, readonly may not.
    let err = viewer.snapshot(&moref, "s1", "").unwrap_err().to_string();
    assert!(err.contains("this needs backup"), "{err}");
    let taken = backup
        .snapshot(&moref, "before-patch", "via the agent")
        .unwrap();
    let uid = taken.uid.unwrap();
    let d = viewer.vm_details(&moref).unwrap();
    assert_eq!(
        d.snapshots,
        vec![(uid, "before-patch".to_owned(), "via the agent".to_owned())]
    );
    backup.remove_snapshot(&moref, uid).unwrap();
    assert!(viewer.vm_details(&moref).unwrap().snapshots.is_empty());
    assert_eq!(snapshots(&env), 0);
    // Power: admin only; a bad operation is one clear line.
    let err = backup.power(&moref, "on").unwrap_err().to_string();
    assert!(err.contains("this needs admin"), "{err}");
    let err = admin.power(&moref, "explode").unwrap_err().to_string();
    assert!(err.contains("expected one of on, off"), "{err}");
    let err = admin.power(&moref, "off").unwrap_err().to_string();
    assert!(
        err.contains("powered off") || err.contains("power"),
        "{err}"
    );
    // The host's configuration backup, admin only; it restores on the host.
    assert!(backup
        .config_backup()
        .unwrap_err()
        .to_string()
        .contains("this needs admin"));
    let bundle = admin.config_backup().unwrap();
    let file = env.path("host-config");
    std::fs::write(&file, &bundle).unwrap();
    let said = env.ok("vcb", &["host", "config-restore", file.to_str().unwrap()]);
    assert!(
        said.contains("Restored the configuration of host esx-test"),
        "{said}"
    );
}
