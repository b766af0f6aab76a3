//! A host agent (`vcb hostd`) on 127.0.0.1 and a backup proxy that runs the tools as an
//! unprivileged user who cannot read the host's root folder.

use super::util::{bin, text, Env};
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A running `vcb hostd`; killed when dropped.
pub struct Agent {
    pub child: Child,
    pub url: String,
    pub nbd_port: u16,
}

impl Agent {
    /// Starts the agent of `env`'s host with `extra` arguments, on any free port.
    pub fn start(env: &Env, extra: &[&str]) -> Agent {
        Agent::start_on(env, 0, extra)
    }

    /// [`Agent::start`] on `port` (an agent restarted where clients know it).
    pub fn start_on(env: &Env, port: u16, extra: &[&str]) -> Agent {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(bin("vcb"))
            .args(["hostd", "--listen", &listen, "--root"])
            .arg(&env.root)
            .args(extra)
            .env_remove("VCB_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let line = loop {
            let l = lines.next().expect("hostd said nothing").unwrap();
            if l.contains("listening on") {
                break l;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap()
            .to_owned();
        let nbd_port = line
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        Agent {
            child,
            url,
            nbd_port,
        }
    }

    /// The API's port.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The proxy: a folder the unprivileged user owns (its HOME, trust file, backups).
pub struct Proxy {
    pub dir: tempfile::TempDir,
    /// Drop root for the tools (`None` when the tests do not run as root).
    pub uid: Option<u32>,
}

pub const NOBODY: u32 = 65534;

impl Proxy {
    pub fn new() -> Proxy {
        Proxy::with_user(true)
    }

    /// A proxy running the tools as this process's user (FUSE mounts need root here:
    /// there is no setuid fusermount).
    pub fn privileged() -> Proxy {
        Proxy::with_user(false)
    }

    fn with_user(drop_root: bool) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let uid = (root && drop_root).then_some(NOBODY);
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Proxy { dir, uid }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A password file the proxy user can read.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, format!("{password}\n")).unwrap();
        if let Some(uid) = self.uid {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    pub fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = match self.uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(bin(tool));
                c
            }
            None => Command::new(bin(tool)),
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("VCB_CONF", "")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.command(tool, args).output().unwrap();
        eprintln!(
            "proxy$ {tool} {}\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// `args[0]` is the tool.
    pub fn run_tool(&self, args: &[&str]) -> Output {
        self.run(args[0], &args[1..])
    }

    pub fn ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn fails(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run(tool, args);
        assert!(
            !out.status.success(),
            "{tool} {args:?} succeeded unexpectedly"
        );
        text(&out.stderr)
    }

    pub fn trust_file(&self) -> PathBuf {
        self.path(".config/vcb/host-certs")
    }
}

/// Adds a user to the agent of `env` with a password file in `proxy`.
pub fn add_user(env: &Env, proxy: &Proxy, name: &str, role: &str) -> PathBuf {
    let pw = proxy.password_file(&format!("{name}.pw"), &format!("pw-of-{name}"));
    env.ok(
        "vcb",
        &[
            "host",
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-file",
            pw.to_str().unwrap(),
        ],
    );
    pw
}

/// The audit log's lines.
pub fn audit(env: &Env) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(env.root.join("agent/audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The thumbprint `vcb host cert` prints.
pub fn thumbprint(env: &Env) -> String {
    let out = env.ok("vcb", &["host", "cert"]);
    out.lines()
        .find_map(|l| l.strip_prefix("SHA-256 thumbprint: "))
        .unwrap()
        .to_owned()
}

/// Whether the proxy user can read `path` (it must not read the host's files).
pub fn proxy_can_read(proxy: &Proxy, path: &Path) -> bool {
    let Some(uid) = proxy.uid else { return true };
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}
