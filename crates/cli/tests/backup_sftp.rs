//! vcbMounter / vcbRestore to and from an `scp://` destination served by a real OpenSSH
//! server on 127.0.0.1 (issue 5, phase 2). SKIP when sshd is missing, unless
//! `VCB_REQUIRE_TOOLS=1`.

#[path = "backup_e2e/util.rs"]
#[allow(dead_code)]
mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::sshd::{Quirks, Server};
use util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

/// Start a well-behaved server with the client HOMEs (see [`serve_with`]).
fn serve() -> Option<Server> {
    serve_with(Quirks::default())
}

/// Start a server with `quirks` and two client HOMEs in its temp dir: `home` with
/// `.ssh/known_hosts` holding the server's key, `stranger` with an empty `.ssh`.
fn serve_with(quirks: Quirks) -> Option<Server> {
    let srv = Server::start_with(quirks)?;
    let d = srv.dir.path();
    std::fs::create_dir_all(d.join("home/.ssh")).unwrap();
    std::fs::copy(&srv.known_hosts, d.join("home/.ssh/known_hosts")).unwrap();
    std::fs::create_dir_all(d.join("stranger/.ssh")).unwrap();
    Some(srv)
}

/// Running the cli tools against a [`Server`].
trait CliServer {
    /// Run a tool as a client whose HOME is `home` (`home` or `stranger`).
    fn run(&self, env: &Env, home: &str, tool: &str, args: &[&str]) -> Output;
    /// Run a tool as the `home` client; its stdout, or a dump and a panic on failure.
    fn ok(&self, env: &Env, tool: &str, args: &[&str]) -> String;
    /// Dump `env`, the server log and the remote files.
    fn dump_env(&self, env: &Env);
}

impl CliServer for Server {
    fn run(&self, env: &Env, home: &str, tool: &str, args: &[&str]) -> Output {
        let mut cmd = env.command(tool, args);
        cmd.env("HOME", self.dir.path().join(home))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("VCB_SSH_KEY");
        let out = cmd.output().unwrap();
        eprintln!(
            "$ {tool} {}\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn ok(&self, env: &Env, tool: &str, args: &[&str]) -> String {
        let out = self.run(env, "home", tool, args);
        if !out.status.success() {
            self.dump_env(env);
            panic!("{tool} {args:?} failed: {}", text(&out.stderr));
        }
        text(&out.stdout)
    }

    fn dump_env(&self, env: &Env) {
        env.dump();
        eprintln!(
            "--- sshd.log\n{}",
            std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
        );
        for f in walk(&self.root_dir()) {
            eprintln!("  remote: {}", f.display());
        }
    }
}

fn destroy(env: &Env, spec: &str) {
    let mut h = env.host();
    let vm = h.find_vm(spec).unwrap();
    h.destroy_vm(vm.moref, host::LockMode::Wait).unwrap();
}

#[test]
fn backup_to_scp_then_restore_from_it() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm(
        "vm37",
        &[
            (8 * MB, DiskFormat::Thin),
            (4 * MB, DiskFormat::ZeroedThick),
        ],
        7,
    );
    let disks = disk_paths(&env, "vm37");
    let expected: Vec<Vec<u8>> = disks.iter().map(|p| content(p)).collect();
    std::fs::create_dir_all(srv.remote("dir")).unwrap();
    let url = srv.scp_url("dir/vm37");

    // Staging goes under TEMPDIR from backuptools.conf and is cleaned up afterwards.
    let stage = env.path("stage");
    std::fs::create_dir(&stage).unwrap();
    let conf = env.path("backuptools.conf");
    std::fs::write(&conf, format!("TEMPDIR={}\n", stage.display())).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = conf.to_str().unwrap();

    srv.ok(
        &env,
        "vcbMounter",
        &[
            "-a",
            "name:vm37",
            "-r",
            &url,
            "-i",
            srv.key(),
            "--config",
            conf,
        ],
    );
    assert!(
        walk(&stage).is_empty(),
        "staging left behind: {:?}",
        walk(&stage)
    );
    let folder = srv.remote("dir/vm37");
    assert!(folder.join(backup::CATALOG_NAME).is_file());
    assert!(!folder.join(backup::INCOMPLETE_MARKER).exists());
    let names: Vec<String> = walk(&folder)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    let c = catalog(&folder);
    for f in &c.files {
        assert_eq!(
            std::fs::metadata(folder.join(&f.name)).unwrap().len(),
            f.size_bytes,
            "{}",
            f.name
        );
    }
    assert!(
        names.iter().any(|n| n == "scsi0-0-0-vm37.vmdk"),
        "{names:?}"
    );

    // A second backup to the same folder is refused: backups never overwrite.
    let out = srv.run(
        &env,
        "home",
        "vcbMounter",
        &["-a", "name:vm37", "-r", &url, "-i", srv.key()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    destroy(&env, "vm37");
    for d in &disks {
        assert!(!d.exists());
    }
    srv.ok(
        &env,
        "vcbRestore",
        &[
            "-s",
            &url,
            "-l",
            "overwrite",
            "-i",
            srv.key(),
            "--config",
            conf,
        ],
    );
    assert!(
        walk(&stage).is_empty(),
        "download left behind: {:?}",
        walk(&stage)
    );
    let restored = disk_paths(&env, "vm37");
    assert_eq!(restored.len(), 2);
    for (p, want) in restored.iter().zip(&expected) {
        assert!(
            content(p) == *want,
            "{} differs from the original",
            p.display()
        );
    }
}

#[test]
fn missing_remote_parent_is_a_clear_error_and_leaves_nothing() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm("vm1", &[(MB, DiskFormat::Thin)], 3);
    let url = srv.scp_url("no/such/vm1");
    let out = srv.run(
        &env,
        "home",
        "vcbMounter",
        &["-a", "name:vm1", "-r", &url, "-i", srv.key()],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("parent folder") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        walk(&srv.remote("")).is_empty(),
        "{:?}",
        walk(&srv.remote(""))
    );
    // The VM is untouched: no backup snapshot left.
    let h = env.host();
    let vm = h.find_vm("vm1").unwrap();
    assert!(!std::fs::read_to_string(vm.vmsd_path())
        .unwrap_or_default()
        .contains(backup::BACKUP_SNAPSHOT_NAME));
}

#[test]
fn unknown_host_key_is_refused_unless_accepted() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm("vm1", &[(MB, DiskFormat::Thin)], 3);
    let url = srv.scp_url("vm1");
    let out = srv.run(
        &env,
        "stranger",
        "vcbMounter",
        &["-a", "name:vm1", "-r", &url, "-i", srv.key()],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown host key"), "{err}");
    assert!(err.contains("--accept-new-host-key"), "{err}");
    assert!(!srv.remote("vm1").exists());

    // Accepting it records the key and the backup goes through.
    let out = srv.run(
        &env,
        "stranger",
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            &url,
            "-i",
            srv.key(),
            "--accept-new-host-key",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(srv.remote("vm1").join(backup::CATALOG_NAME).is_file());
    assert!(srv.dir.path().join("stranger/.ssh/known_hosts").is_file());
}

#[test]
fn snapall_to_scp_root_backs_up_each_vm_into_its_folder() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm("web", &[(MB, DiskFormat::Thin)], 5);
    env.vm("db", &[(MB, DiskFormat::Thin)], 6);
    std::fs::create_dir_all(srv.remote("all")).unwrap();
    let url = srv.scp_url("all");
    srv.ok(
        &env,
        "vcbSnapAll",
        &["-a", "any:", "-r", &url, "-i", srv.key()],
    );
    for vm in ["web", "db"] {
        let folder = srv.remote(&format!("all/{vm}"));
        assert!(folder.join(backup::CATALOG_NAME).is_file(), "{vm}");
        assert!(!folder.join(backup::INCOMPLETE_MARKER).exists(), "{vm}");
    }
    // A missing root is refused before any VM is touched.
    let out = srv.run(
        &env,
        "home",
        "vcbSnapAll",
        &["-a", "any:", "-r", &srv.scp_url("nope"), "-i", srv.key()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
    assert!(!srv.remote("nope").exists());
}

#[test]
fn wrong_key_names_user_and_host() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm("vm1", &[(MB, DiskFormat::Thin)], 3);
    let stranger_key = srv.dir.path().join("host_key");
    let out = srv.run(
        &env,
        "home",
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            &srv.scp_url("vm1"),
            "-i",
            stranger_key.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(err.contains(&format!("{}@127.0.0.1", srv.user)), "{err}");
    assert!(!srv.remote("vm1").exists());
}

#[test]
fn server_killed_mid_backup_leaves_nothing_restore_accepts_and_a_rerun_succeeds() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 3);
    let url = srv.scp_url("vm1");
    let mut cmd = env.command(
        "vcbMounter",
        &["-a", "name:vm1", "-r", &url, "-i", srv.key()],
    );
    cmd.env("HOME", srv.dir.path().join("home"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("VCB_SSH_KEY")
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Wait for the configuration files to be on the server, then cut every session.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv.remote("vm1/vm1.vmx").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        srv.remote("vm1/vm1.vmx").exists(),
        "the backup never started"
    );
    for pid in srv.sessions() {
        // SAFETY: kill(2) takes plain integers; the pid is a child of our own sshd.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    // Whatever is left is marked incomplete and refused by restore.
    if srv.remote("vm1").exists() {
        assert!(srv.remote("vm1").join(backup::INCOMPLETE_MARKER).exists());
        assert!(!srv.remote("vm1").join(backup::CATALOG_NAME).exists());
    }
    let out = srv.run(
        &env,
        "home",
        "vcbRestore",
        &["-s", &url, "-l", "overwrite", "-i", srv.key()],
    );
    assert!(!out.status.success());
    // The VM kept no backup snapshot, and a rerun to a new folder succeeds.
    srv.ok(
        &env,
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            &srv.scp_url("vm1-again"),
            "-i",
            srv.key(),
        ],
    );
    assert!(srv.remote("vm1-again").join(backup::CATALOG_NAME).is_file());
}

/// `len` bytes of pseudo-random data (nothing for compaction to drop).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of a file, hex.
fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every file of a finished backup folder: listed in the catalog with its size and
/// SHA-256, no `.partial` or marker left.
fn assert_complete(folder: &Path) -> vmx::Catalog {
    assert!(folder.join(backup::CATALOG_NAME).is_file(), "no catalog");
    assert!(!folder.join(backup::INCOMPLETE_MARKER).exists());
    let c = catalog(folder);
    let mut names: Vec<String> = walk(folder)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != backup::CATALOG_NAME)
        .collect();
    names.sort();
    let mut listed: Vec<String> = c.files.iter().map(|f| f.name.clone()).collect();
    listed.sort();
    assert_eq!(names, listed, "files on the server vs the catalog");
    for f in &c.files {
        let p = folder.join(&f.name);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            f.size_bytes,
            "{}",
            f.name
        );
        assert_eq!(
            sha256_hex(&p),
            backup::hash::to_hex(&f.sha256),
            "{}: sha256",
            f.name
        );
    }
    c
}

/// Run a tool as the `home` client with `TMPDIR` pointing at `tmp`.
fn run_with_tmp(srv: &Server, env: &Env, tmp: &Path, tool: &str, args: &[&str]) -> Output {
    let mut cmd = env.command(tool, args);
    cmd.env("HOME", srv.dir.path().join("home"))
        .env("TMPDIR", tmp)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("VCB_SSH_KEY");
    let out = cmd.output().unwrap();
    eprintln!(
        "$ {tool} {}\n{}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

#[test]
fn disks_stream_to_scp_without_staging_in_both_formats_and_restore() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm(
        "vm5",
        &[
            (24 * MB, DiskFormat::Thin),
            (6 * MB, DiskFormat::ZeroedThick),
        ],
        9,
    );
    let disks = disk_paths(&env, "vm5");
    write(&disks[0], 3 * MB + 512, &noise(5 * MB as usize, 1));
    let expected: Vec<Vec<u8>> = disks.iter().map(|p| content(p)).collect();
    // Nothing may be staged: the system temporary folder stays empty.
    let tmp = env.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for (mode, rel) in [("1", "vm5-mono"), ("0", "vm5-split")] {
        let url = srv.scp_url(rel);
        let out = run_with_tmp(
            &srv,
            &env,
            &tmp,
            "vcbMounter",
            &["-a", "name:vm5", "-r", &url, "-M", mode, "-i", srv.key()],
        );
        if !out.status.success() {
            srv.dump_env(&env);
            panic!("vcbMounter -M {mode} failed");
        }
        assert!(walk(&tmp).is_empty(), "staged: {:?}", walk(&tmp));
        let stdout = text(&out.stdout);
        let shown = format!("Converting \"{url}/scsi0-0-0-vm5.vmdk\" (compact file):");
        assert!(stdout.contains(&shown), "{stdout}");
        let folder = srv.remote(rel);
        let c = assert_complete(&folder);
        let split = c.files.iter().any(|f| f.name == "scsi0-0-0-vm5-s001.vmdk");
        assert_eq!(split, mode == "0", "{:?}", c.files);
        if require_tool("qemu-img") {
            for (i, d) in disks.iter().enumerate() {
                let name = format!("scsi0-{i}-0-{}", d.file_name().unwrap().to_string_lossy());
                qemu_same(d, &folder.join(name));
            }
        }
    }
    destroy(&env, "vm5");
    let out = run_with_tmp(
        &srv,
        &env,
        &tmp,
        "vcbRestore",
        &[
            "-s",
            &srv.scp_url("vm5-split"),
            "-l",
            "overwrite",
            "-i",
            srv.key(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restored = disk_paths(&env, "vm5");
    assert_eq!(restored.len(), 2);
    for (p, want) in restored.iter().zip(&expected) {
        assert!(content(p) == *want, "{} differs", p.display());
    }
}

/// Whatever a failed backup left in `folder` is nothing restore accepts.
fn assert_nothing_complete(srv: &Server, env: &Env, rel: &str) {
    let folder = srv.remote(rel);
    if folder.exists() {
        assert!(
            folder.join(backup::INCOMPLETE_MARKER).exists(),
            "{:?}",
            walk(&folder)
        );
        assert!(!folder.join(backup::CATALOG_NAME).exists());
    }
    let out = srv.run(
        env,
        "home",
        "vcbRestore",
        &["-s", &srv.scp_url(rel), "-l", "overwrite", "-i", srv.key()],
    );
    assert!(!out.status.success(), "restore accepted a failed backup");
}

/// The VM kept no backup snapshot.
fn assert_no_backup_snapshot(env: &Env, vm: &str) {
    let h = env.host();
    let vm = h.find_vm(vm).unwrap();
    assert!(!std::fs::read_to_string(vm.vmsd_path())
        .unwrap_or_default()
        .contains(backup::BACKUP_SNAPSHOT_NAME));
}

#[test]
fn remote_disk_full_mid_stream_is_a_clear_error_and_a_rerun_succeeds() {
    // The server may write files up to 4 MiB: the configuration files fit, the disk
    // does not, and the write fails (EFBIG, reported like ENOSPC: SSH_FX_FAILURE).
    let quirks = Quirks {
        file_size_limit: Some(4 * MB),
        ..Quirks::default()
    };
    let Some(full) = serve_with(quirks) else {
        return;
    };
    let env = Env::new();
    env.vm("vm1", &[(16 * MB, DiskFormat::Thin)], 3);
    write(&disk_paths(&env, "vm1")[0], 0, &noise(8 * MB as usize, 2));
    let url = full.scp_url("vm1");
    let out = full.run(
        &env,
        "home",
        "vcbMounter",
        &["-a", "name:vm1", "-r", &url, "-i", full.key()],
    );
    assert!(
        !out.status.success(),
        "a backup past the size limit succeeded"
    );
    let err = text(&out.stderr);
    assert!(err.contains("/vm1/scsi0-0-0-vm1-s001.vmdk"), "{err}");
    assert!(err.contains("may be full"), "{err}");
    assert!(
        !err.contains("connection lost"),
        "the session must survive: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_nothing_complete(&full, &env, "vm1");
    assert_no_backup_snapshot(&env, "vm1");
    // A server with room takes the whole backup.
    let Some(good) = serve() else { return };
    good.ok(
        &env,
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            &good.scp_url("vm1"),
            "-i",
            good.key(),
        ],
    );
    assert_complete(&good.remote("vm1"));
}

#[test]
fn read_only_server_is_permission_denied_naming_the_path() {
    let quirks = Quirks {
        read_only: true,
        ..Quirks::default()
    };
    let Some(srv) = serve_with(quirks) else {
        return;
    };
    let env = Env::new();
    env.vm("vm1", &[(MB, DiskFormat::Thin)], 3);
    let url = srv.scp_url("vm1");
    let out = srv.run(
        &env,
        "home",
        "vcbMounter",
        &["-a", "name:vm1", "-r", &url, "-i", srv.key()],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        err.contains(&srv.remote("vm1").display().to_string()),
        "{err}"
    );
    assert!(!srv.remote("vm1").exists());
    assert_no_backup_snapshot(&env, "vm1");
}

#[test]
fn server_killed_mid_disk_stream_leaves_nothing_restore_accepts_and_a_rerun_succeeds() {
    let Some(srv) = serve() else { return };
    let env = Env::new();
    env.vm("vm1", &[(160 * MB, DiskFormat::Thin)], 3);
    write(&disk_paths(&env, "vm1")[0], 0, &noise(128 * MB as usize, 4));
    let url = srv.scp_url("vm1");
    let mut cmd = env.command(
        "vcbMounter",
        &["-a", "name:vm1", "-r", &url, "-i", srv.key()],
    );
    cmd.env("HOME", srv.dir.path().join("home"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("VCB_SSH_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Wait until the disk is being streamed (its partial file holds grains), freeze the
    // server so the transfer cannot finish meanwhile, then kill every session.
    let partial = srv.remote("vm1/scsi0-0-0-vm1-s001.vmdk.partial");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(true, |m| m.len() < 4 * MB)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sessions = srv.sessions();
    for &pid in &sessions {
        // SAFETY: kill(2) takes plain integers; the pid is a child of our own sshd.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    assert!(
        std::fs::metadata(&partial).is_ok_and(|m| m.len() >= 4 * MB),
        "the disk never started streaming"
    );
    for &pid in &sessions {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("connection"), "{err}");
    assert_nothing_complete(&srv, &env, "vm1");
    assert_no_backup_snapshot(&env, "vm1");
    srv.ok(
        &env,
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            &srv.scp_url("vm1-again"),
            "-i",
            srv.key(),
        ],
    );
    assert_complete(&srv.remote("vm1-again"));
}

/// A small tmpfs mounted at a folder, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    /// `None` (with a visible SKIP) where mounting is not allowed (unprivileged CI).
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs(dir.to_path_buf())),
            _ => {
                eprintln!("SKIP: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn too_little_remote_space_is_refused_before_any_disk_is_sent() {
    let Some(srv) = serve() else { return };
    let Some(_fs) = SmallFs::mount(&srv.remote("small"), "8m") else {
        return;
    };
    let env = Env::new();
    env.vm("vm1", &[(32 * MB, DiskFormat::Thin)], 3);
    write(&disk_paths(&env, "vm1")[0], 0, &noise(16 * MB as usize, 5));
    let out = srv.run(
        &env,
        "home",
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            &srv.scp_url("small/vm1"),
            "-i",
            srv.key(),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not enough space on the server"), "{err}");
    assert!(err.contains(&srv.scp_url("small/vm1")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(!text(&out.stdout).contains("Converting"), "a disk was sent");
    assert!(
        !srv.remote("small/vm1").exists(),
        "{:?}",
        walk(&srv.remote("small"))
    );
    assert_no_backup_snapshot(&env, "vm1");
}
