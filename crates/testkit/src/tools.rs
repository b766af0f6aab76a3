//! External tools: whether they exist, a visible SKIP when they do not (a failure when
//! `VCB_REQUIRE_TOOLS` is set), and running them.

use std::path::Path;
use std::process::{Command, Stdio};

/// `true` when `name` can be run (an absolute path or a command on PATH).
pub fn tool_exists(name: &str) -> bool {
    if name.starts_with('/') {
        return Path::new(name).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tools exist; a visible SKIP when not, a failure when `VCB_REQUIRE_TOOLS` is set.
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !tool_exists(n)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing {missing:?} (Debian: openssh-server, openssh-client)");
    if tools_required() {
        panic!("VCB_REQUIRE_TOOLS is set but {msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// Whether `tool --version` runs (its first line is printed); a visible SKIP when not, a
/// failure when `VCB_REQUIRE_TOOLS` is set.
pub fn require_tool(tool: &str) -> bool {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => {
            eprintln!(
                "{tool}: {}",
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
            true
        }
        _ => {
            assert!(
                !tools_required(),
                "{tool} is required (VCB_REQUIRE_TOOLS is set)"
            );
            eprintln!("SKIP: {tool} not installed");
            false
        }
    }
}

/// Whether a missing tool fails the test instead of skipping it: `VCB_REQUIRE_TOOLS` is
/// set (CI sets it to 1 after installing everything).
pub fn tools_required() -> bool {
    std::env::var_os("VCB_REQUIRE_TOOLS").is_some()
}

/// Run a command, panicking with its output when it fails; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback TCP port no other caller in this process was given: free when asked, and
/// never handed out twice (servers started one after the other bind their ports a moment
/// after they are chosen, so a port released by one probe could otherwise be chosen
/// again for the next server before the first one binds it).
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a loopback port");
        let port = l.local_addr().expect("local address").port();
        if given.insert(port) {
            return port;
        }
    }
}
