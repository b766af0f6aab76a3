//! A real OpenSSH server per test: own config, host key, client key and authorized_keys
//! in a temp dir, listening on 127.0.0.1 and a free port; killed (with every
//! per-connection child) on drop. On a failing test the config, the server log and the
//! temp dir listing are dumped.

use crate::tools::{require_tools, run};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The OpenSSH server binary.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Generate an ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vcb-test", "-f"])
        .arg(path));
}

/// How a test server misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quirks {
    /// RLIMIT_FSIZE of the server (SIGXFSZ ignored): writes past this many bytes of a
    /// file fail with EFBIG, which the SFTP server reports like a full disk.
    pub file_size_limit: Option<u64>,
    /// `internal-sftp -R`: every write, create and mkdir is refused (permission denied).
    pub read_only: bool,
}

/// A running sshd.
pub struct Server {
    /// The temp dir holding everything; remote test files go under `root()`.
    pub dir: tempfile::TempDir,
    /// The listening port.
    pub port: u16,
    /// A private key listed in authorized_keys.
    pub client_key: PathBuf,
    /// A known_hosts file holding the server's host key as `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    /// The remote user (the local user: tests connect to themselves).
    pub user: String,
    child: Child,
}

impl Server {
    /// Start a well-behaved server, or `None` (SKIP) when sshd or ssh-keygen is missing.
    pub fn start() -> Option<Server> {
        Self::start_with(Quirks::default())
    }

    /// Start a server with `quirks`, or `None` (SKIP) when sshd or ssh-keygen is missing.
    pub fn start_with(quirks: Quirks) -> Option<Server> {
        if !require_tools(&[SSHD, "ssh-keygen"]) {
            return None;
        }
        // sshd refuses to start without its privilege separation folder.
        let _ = std::fs::create_dir_all("/run/sshd");
        // The free port may be taken between probing and sshd binding it: retry.
        for _attempt in 0..5 {
            if let Some(server) = Self::try_start(quirks) {
                return Some(server);
            }
        }
        panic!("sshd failed to start 5 times (see the dumps above)")
    }

    fn try_start(quirks: Quirks) -> Option<Server> {
        let dir = tempfile::Builder::new()
            .prefix("vcb-sshd")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        // A second host key of another algorithm: clients must pick the one they know.
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ecdsa", "-N", "", "-C", "vcb-test", "-f"])
            .arg(d.join("host_key_ecdsa")));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        std::fs::create_dir(d.join("root")).expect("root dir");
        let user = local_user();
        let port = free_port();
        std::fs::write(d.join("sshd_config"), config(d, port, quirks)).expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = quirks.file_size_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec and only calls
            // async-signal-safe functions (setrlimit, signal) on plain values. The
            // ignored SIGXFSZ and the limit are inherited by sshd and its sessions.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn sshd");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let known_hosts = d.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}"))
            .expect("known_hosts");
        let mut server = Server {
            client_key: d.join("client_key"),
            known_hosts,
            user,
            port,
            child,
            dir,
        };
        if server.wait_listening() {
            return Some(server);
        }
        server.dump("sshd did not start");
        None
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The folder remote test files live in.
    pub fn root(&self) -> String {
        self.root_dir().to_string_lossy().into_owned()
    }

    /// The folder remote test files live in, as a local path.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `root()/name` as a remote path.
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.root())
    }

    /// The server-side path of `rel` below the remote folder, as a local path.
    pub fn remote(&self, rel: &str) -> PathBuf {
        self.root_dir().join(rel)
    }

    /// `sftp://user@127.0.0.1:port<root>`.
    pub fn sftp_url(&self) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            self.root()
        )
    }

    /// `scp://user@127.0.0.1:port:<root>/rel`.
    pub fn scp_url(&self, rel: &str) -> String {
        format!(
            "scp://{}@127.0.0.1:{}:{}",
            self.user,
            self.port,
            self.remote(rel).display()
        )
    }

    /// The client key's path as a string (for command lines).
    pub fn key(&self) -> &str {
        self.client_key.to_str().expect("client key path is UTF-8")
    }

    /// The pids of every process serving a connection (every descendant of the sshd).
    pub fn sessions(&self) -> Vec<i32> {
        descendants(self.child.id())
    }

    /// SIGKILL every process serving a connection (the listener stays up).
    pub fn kill_sessions(&self) {
        self.signal_sessions(libc::SIGKILL);
    }

    /// Send `signal` to every process serving a connection.
    pub fn signal_sessions(&self, signal: i32) {
        for pid in self.sessions() {
            // SAFETY: kill(2) takes plain integers and touches no memory of this process;
            // the pid is a descendant of the sshd this test started.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn stop(&mut self) {
        self.kill_sessions();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Print config, server log and the temp dir listing.
    pub fn dump(&self, why: &str) {
        let d = self.dir.path();
        let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
        let listing = Command::new("ls")
            .arg("-laR")
            .arg(d)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        eprintln!(
            "=== {why}\n--- command: {SSHD} -D -e -f {}\n--- sshd_config\n{}\n--- sshd.log\n{}\n--- ls -laR\n{}",
            d.join("sshd_config").display(),
            read("sshd_config"),
            read("sshd.log"),
            listing.unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump("test failed");
        }
        self.stop();
    }
}

fn config(d: &Path, port: u16, quirks: Quirks) -> String {
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nHostKey {d}/host_key_ecdsa\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp{ro}\nLogLevel VERBOSE\nMaxStartups 64\n",
        d = d.display(),
        ro = if quirks.read_only { " -R" } else { "" },
    )
}

/// `$USER` when set, else the name `id -un` prints.
fn local_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| run(Command::new("id").arg("-un")).trim().to_owned())
}

use crate::tools::free_port;

/// Every process below `root` (by parent pid), found by scanning /proc.
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
        let mut stat = String::new();
        if std::fs::File::open(entry.path().join("stat"))
            .and_then(|mut f| f.read_to_string(&mut stat))
            .is_err()
        {
            continue;
        }
        // Field 4 (ppid) follows the parenthesised command name, which may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![i32::try_from(root).unwrap_or(-1)];
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
