//! Running a command under strace and killing it at chosen syscalls.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Syscalls whose every call is a kill point.
const EVERY_CALL: &[&str] = &[
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "fsync",
    "fdatasync",
    "ftruncate",
    "fallocate",
    "link",
    "linkat",
    "mkdir",
];
/// Syscalls too frequent to kill at each call: spread over their calls (writes, and
/// opens and closes between the steps).
const SAMPLED: &[&str] = &["pwrite64", "write", "openat", "close"];
/// Kills per operation (the issue asks for 50 or more).
pub const MIN_KILLS: usize = 50;

/// A command: program, arguments, environment.
#[derive(Clone, Debug)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: &str, args: &[&str]) -> Cmd {
        Cmd {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Cmd {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    fn strace(&self, extra: &[String]) -> Command {
        let mut c = Command::new("strace");
        c.args(["-f", "-qq"])
            .args(extra)
            .arg("--")
            .arg(&self.program)
            .args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.env("VCB_CONF", "").stdin(std::process::Stdio::null());
        c
    }
}

/// How often `cmd` calls each traced syscall in a clean run (in `dir`'s state).
pub fn count_calls(cmd: &Cmd) -> BTreeMap<String, usize> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let set = EVERY_CALL
        .iter()
        .chain(SAMPLED)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let out = cmd
        .strace(&[
            "-o".into(),
            log.path().display().to_string(),
            "-e".into(),
            format!("trace={set}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clean run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log.path()).unwrap().lines() {
        // "PID name(args..." or "name(args..."; resumed lines are not new calls.
        let body = line
            .split_once(' ')
            .filter(|(p, _)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(line, |(_, b)| b);
        if body.starts_with('<') {
            continue;
        }
        if let Some((name, _)) = body.split_once('(') {
            *counts.entry(name.trim().to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// The (syscall, N) points to kill at: every call of [`EVERY_CALL`], and writes spread
/// so that the total reaches [`MIN_KILLS`].
pub fn kill_points(counts: &BTreeMap<String, usize>) -> Vec<(String, usize)> {
    let mut points: Vec<(String, usize)> = counts
        .iter()
        .filter(|(n, _)| EVERY_CALL.contains(&n.as_str()))
        .flat_map(|(n, &c)| (1..=c).map(move |i| (n.clone(), i)))
        .collect();
    let writes: Vec<(&String, &usize)> = counts
        .iter()
        .filter(|(n, _)| SAMPLED.contains(&n.as_str()))
        .collect();
    let want = (MIN_KILLS + 10).saturating_sub(points.len()).max(12);
    let total: usize = writes.iter().map(|(_, c)| **c).sum();
    for (name, &c) in writes {
        let share = (want * c).div_ceil(total.max(1)).min(c);
        for k in 0..share {
            points.push((name.clone(), 1 + k * c / share.max(1)));
        }
    }
    points.sort();
    points.dedup();
    points
}

/// Runs `cmd`, killed at the `n`-th call of `syscall`. True when the kill happened.
pub fn run_killed(cmd: &Cmd, syscall: &str, n: usize) -> bool {
    let out = cmd
        .strace(&[
            "-o".into(),
            "/dev/null".into(),
            "-e".into(),
            format!("trace={syscall}"),
            "-e".into(),
            format!("inject={syscall}:signal=KILL:when={n}"),
        ])
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => false,
        Some(137) | None => true,
        Some(other) => panic!(
            "{syscall}#{n}: exit {other}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `qemu-img check` of `disk`: clean (exit 0).
pub fn qemu_check_clean(disk: &Path) {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        disk.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies the tree at `from` into `to` (small test trees; symlinks kept).
pub fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sweeps `cmd` (built for a copy of `template`) over every kill point; `check` gets the
/// copy after each kill (or finished run) and says which state it found (false: old,
/// true: new). Returns (kills, runs that ended in the new state).
pub fn sweep(
    template: &Path,
    cmd: impl Fn(&Path) -> Cmd,
    check: impl Fn(&Path, &str) -> bool,
) -> (usize, usize) {
    testkit::tools::require_tools(&["strace", "qemu-img"]);
    let probe = tempfile::tempdir().unwrap();
    let probe_root = probe.path().join("t");
    copy_tree(template, &probe_root);
    let points = kill_points(&count_calls(&cmd(&probe_root)));
    assert!(points.len() >= MIN_KILLS, "too few kill points: {points:?}");
    let (mut kills, mut new) = (0, 0);
    for (syscall, n) in &points {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        copy_tree(template, &root);
        let killed = run_killed(&cmd(&root), syscall, *n);
        kills += usize::from(killed);
        if check(&root, &format!("{syscall}#{n} (killed: {killed})")) {
            new += 1;
        }
    }
    eprintln!(
        "figure: {kills} kills over {} points, {new} ended in the new state",
        points.len()
    );
    assert!(kills >= MIN_KILLS.min(points.len()), "only {kills} kills");
    (kills, new)
}
