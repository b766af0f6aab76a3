//! vcbMounter / vcbRestore to and from an `scp://` destination served by a real OpenSSH
//! server on 127.0.0.1 (issue 5, phase 2). SKIP when sshd is missing, unless
//! `VCB_REQUIRE_TOOLS=1`.

#[path = "backup_e2e/util.rs"]
#[allow(dead_code)]
mod util;

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use util::*;
use vmdk::DiskFormat;

const SSHD: &str = "/usr/sbin/sshd";
const MB: u64 = 1 << 20;

fn tool_exists(name: &str) -> bool {
    if name.starts_with('/') {
        return Path::new(name).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A visible SKIP when a tool is missing; a failure under `VCB_REQUIRE_TOOLS=1`.
fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !tool_exists(n)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing {missing:?} (Debian: openssh-server, openssh-client)");
    if std::env::var("VCB_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("VCB_REQUIRE_TOOLS=1 but {msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vcb-test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
}

/// A real sshd with its own host key and authorized_keys; `home` is a HOME for the
/// client holding `.ssh/known_hosts` with the server's key.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    key: PathBuf,
    user: String,
    child: Child,
}

impl Server {
    fn start() -> Option<Server> {
        if !require_tools(&[SSHD, "ssh-keygen"]) {
            return None;
        }
        let _ = std::fs::create_dir_all("/run/sshd");
        for _ in 0..5 {
            if let Some(s) = Self::try_start() {
                return Some(s);
            }
        }
        panic!("sshd failed to start 5 times");
    }

    fn try_start() -> Option<Server> {
        let dir = tempfile::Builder::new()
            .prefix("vcb-backup-sftp")
            .tempdir()
            .unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir(d.join("remote")).unwrap();
        let port = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\nMaxStartups 64\n",
                d = d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // The client's HOME: known_hosts with the server key, nothing else.
        std::fs::create_dir_all(d.join("home/.ssh")).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("home/.ssh/known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("stranger/.ssh")).unwrap();
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                text(&Command::new("id").arg("-un").output().unwrap().stdout)
                    .trim()
                    .to_owned()
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Server {
                    key: d.join("client_key"),
                    dir,
                    port,
                    user,
                    child,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "sshd did not start:\n{}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
        None
    }

    /// The server-side path of `rel` below the remote folder.
    fn remote(&self, rel: &str) -> PathBuf {
        self.dir.path().join("remote").join(rel)
    }

    /// `scp://user@127.0.0.1:PORT:/…/remote/rel`.
    fn url(&self, rel: &str) -> String {
        format!(
            "scp://{}@127.0.0.1:{}:{}",
            self.user,
            self.port,
            self.remote(rel).display()
        )
    }

    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }

    /// Run a tool as a client whose HOME is `home` (`home` or `stranger`).
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
            self.dump(env);
            panic!("{tool} {args:?} failed: {}", text(&out.stderr));
        }
        text(&out.stdout)
    }

    fn dump(&self, env: &Env) {
        env.dump();
        eprintln!(
            "--- sshd.log\n{}",
            std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
        );
        for f in walk(&self.dir.path().join("remote")) {
            eprintln!("  remote: {}", f.display());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn destroy(env: &Env, spec: &str) {
    let mut h = env.host();
    let vm = h.find_vm(spec).unwrap();
    h.destroy_vm(vm.moref, host::LockMode::Wait).unwrap();
}

#[test]
fn backup_to_scp_then_restore_from_it() {
    let Some(srv) = Server::start() else { return };
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
    let url = srv.url("dir/vm37");

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
    let Some(srv) = Server::start() else { return };
    let env = Env::new();
    env.vm("vm1", &[(MB, DiskFormat::Thin)], 3);
    let url = srv.url("no/such/vm1");
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
    let Some(srv) = Server::start() else { return };
    let env = Env::new();
    env.vm("vm1", &[(MB, DiskFormat::Thin)], 3);
    let url = srv.url("vm1");
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
    let Some(srv) = Server::start() else { return };
    let env = Env::new();
    env.vm("web", &[(MB, DiskFormat::Thin)], 5);
    env.vm("db", &[(MB, DiskFormat::Thin)], 6);
    std::fs::create_dir_all(srv.remote("all")).unwrap();
    let url = srv.url("all");
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
        &["-a", "any:", "-r", &srv.url("nope"), "-i", srv.key()],
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
    let Some(srv) = Server::start() else { return };
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
            &srv.url("vm1"),
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

/// Every process below `root` (by parent pid), from /proc.
fn descendants(root: u32) -> Vec<i32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root as i32];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

#[test]
fn server_killed_mid_backup_leaves_nothing_restore_accepts_and_a_rerun_succeeds() {
    let Some(srv) = Server::start() else { return };
    let env = Env::new();
    env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 3);
    let url = srv.url("vm1");
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
    for pid in descendants(srv.child.id()) {
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
            &srv.url("vm1-again"),
            "-i",
            srv.key(),
        ],
    );
    assert!(srv.remote("vm1-again").join(backup::CATALOG_NAME).is_file());
}
