//! External tools: whether they exist, a visible SKIP when they do not (a failure under
//! `VCB_REQUIRE_TOOLS=1`), and running them.

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

/// Whether the tools exist; a visible SKIP when not, a failure under `VCB_REQUIRE_TOOLS=1`.
pub fn require_tools(names: &[&str]) -> bool {
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

/// Whether `tool --version` runs (its first line is printed); a visible SKIP when not, a
/// failure under `VCB_REQUIRE_TOOLS=1`.
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
                std::env::var("VCB_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "{tool} is required (VCB_REQUIRE_TOOLS=1)"
            );
            eprintln!("SKIP: {tool} not installed");
            false
        }
    }
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
