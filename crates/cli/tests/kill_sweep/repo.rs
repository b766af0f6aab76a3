//! Issue 11: kill -9 at any point of a backup into a repository, a prune or a gc leaves
//! a repository that `check` passes, no unfinished point is ever listed, and the next
//! backup succeeds and reuses what a killed one uploaded.

use crate::harness::{sweep, Cmd};
use crate::util::{disk_paths, write, Env};
use std::path::Path;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;
const PASS: &str = "kill sweep passphrase";

fn bin(name: &str) -> String {
    match name {
        "vcb" => env!("CARGO_BIN_EXE_vcb"),
        _ => env!("CARGO_BIN_EXE_vcbMounter"),
    }
    .to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn open(root: &Path) -> repo::Repository {
    let b = repo::backend::open(s(&root.join("repo")), &Default::default()).unwrap();
    repo::Repository::open(b, &repo::Unlock::Passphrase(PASS.as_bytes().to_vec())).unwrap()
}

/// The repository checks clean and every listed point is complete (all its chunks are
/// there: a verify reads them). Returns the point count.
fn sound(root: &Path, what: &str) -> usize {
    let r = open(root);
    let c = repo::check::check(&r, &mut ()).unwrap();
    assert!(c.ok(), "{what}: {c:?}");
    let (points, bad) = r.points().unwrap();
    assert!(bad.is_empty(), "{what}: {bad:?}");
    let v = repo::verify::verify(
        &r,
        &points,
        &repo::verify::VerifyOptions {
            percent: 100,
            record: false,
        },
        &mut (),
    )
    .unwrap();
    assert!(v.ok(), "{what}: {v:?}");
    points.len()
}

/// A host with `vm1` (a thin and a zeroedthick disk) and an encrypted repository
/// holding `points` backups of it (the disk changed before each).
fn template(points: usize) -> Env {
    template_tracked(points, false)
}

/// [`template`], with changed-block tracking on for `vm1` when `tracked`.
pub(crate) fn template_tracked(points: usize, tracked: bool) -> Env {
    let env = Env::new();
    env.vm(
        "vm1",
        &[(4 * MB, DiskFormat::Thin), (MB, DiskFormat::ZeroedThick)],
        4,
    );
    if tracked {
        env.ok("vcb", &["vm", "ctk", "enable", "vm1"]);
    }
    std::fs::write(env.path("pass"), PASS).unwrap();
    let pass = env.path("pass");
    let vars = [("VCB_PASSWORD_FILE", s(&pass))];
    let r = s(&env.path("repo")).to_owned();
    let out = env.run_env(
        "vcb",
        &[
            "repo",
            "init",
            &r,
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
            "--chunk-size",
            "262144",
        ],
        &vars,
    );
    assert!(out.status.success());
    for i in 0..points {
        let disk = disk_paths(&env, "vm1").remove(0);
        write(&disk, (i as u64 % 4) * MB, &[i as u8 + 1; 300_000]);
        let out = env.run_env(
            "vcbMounter",
            &["-a", "name:vm1", "-r", &format!("repo:{r}")],
            &vars,
        );
        assert!(out.status.success());
    }
    env
}

fn cmd(root: &Path, program: &str, args: &[&str]) -> Cmd {
    Cmd::new(&bin(program), args)
        .env("VCB_ROOT", s(&root.join("host")))
        .env("VCB_PASSWORD_FILE", s(&root.join("pass")))
}

/// vcbMounter backing `vm1` up into the repository of the sweep's copy at `root`.
pub(crate) fn backup_cmd(root: &Path) -> Cmd {
    let target = format!("repo:{}", s(&root.join("repo")));
    let host = root.join("host");
    cmd(
        root,
        "vcbMounter",
        &["-a", "name:vm1", "-r", &target, "--root", s(&host)],
    )
}

/// Runs `c` to its end (the backup after a killed one) and requires success; returns
/// its standard output.
pub(crate) fn run_to_end(c: &Cmd, what: &str) -> String {
    let out = std::process::Command::new(&c.program)
        .args(&c.args)
        .envs(c.env.iter().cloned())
        .env("VCB_CONF", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: the next backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn issue_11_backup_into_a_repository_survives_kill_9() {
    let env = template(1);
    // New random data: the killed backups upload chunks the next one can reuse.
    let disk = disk_paths(&env, "vm1").remove(0);
    let data = crate::util::random_bytes(3 * MB, 99);
    write(&disk, 0, &data);
    let reuse_checked = std::cell::Cell::new(0);
    let (kills, _) = sweep(env.dir.path(), backup_cmd, |root, what| {
        let n = sound(root, what);
        assert!(n == 1 || n == 2, "{what}: {n} points");
        if n == 1 {
            // The next backup succeeds, and reuses what the killed one stored.
            let stored = std::process::Command::new(bin("vcb"))
                .args(["repo", "check", s(&root.join("repo")), "--json"])
                .env("VCB_PASSWORD_FILE", s(&root.join("pass")))
                .output()
                .unwrap();
            let before: serde_json::Value = serde_json::from_slice(&stored.stdout).unwrap();
            let unused = before["chunks_unused"].as_u64().unwrap();
            run_to_end(&backup_cmd(root), what);
            let r = open(root);
            let newest = r.find_point("vm1").unwrap();
            if unused > 0 {
                assert!(
                    newest.stats.reused_chunks > 0,
                    "{what}: nothing reused of {unused} chunks"
                );
                reuse_checked.set(reuse_checked.get() + 1);
            }
            assert_eq!(sound(root, what), 2);
        }
        n == 2
    });
    eprintln!("figure: backup into a repository: {kills} kills, the next backup reused a killed one's chunks {} times", reuse_checked.get());
    assert!(reuse_checked.get() > 0);
}

#[test]
fn issue_11_prune_survives_kill_9() {
    let env = template(4);
    let newest = open(env.dir.path()).find_point("vm1").unwrap().id;
    sweep(
        env.dir.path(),
        |root| {
            cmd(
                root,
                "vcb",
                &["repo", "prune", s(&root.join("repo")), "--keep-last", "1"],
            )
        },
        |root, what| {
            let n = sound(root, what);
            assert!((1..=4).contains(&n), "{what}: {n}");
            assert_eq!(open(root).find_point("vm1").unwrap().id, newest, "{what}");
            n == 1
        },
    );
}

#[test]
fn issue_11_gc_survives_kill_9() {
    let env = template(4);
    let pass = env.path("pass");
    let out = env.run_env(
        "vcb",
        &["repo", "prune", s(&env.path("repo")), "--keep-last", "1"],
        &[("VCB_PASSWORD_FILE", s(&pass))],
    );
    assert!(out.status.success());
    sweep(
        env.dir.path(),
        |root| {
            cmd(
                root,
                "vcb",
                &["repo", "gc", s(&root.join("repo")), "--grace", "0s"],
            )
        },
        |root, what| {
            assert_eq!(sound(root, what), 1);
            // A killed collector's lock does not stop the next one.
            let r = open(root);
            let g = repo::gc::gc(
                &r,
                &repo::gc::GcOptions {
                    grace: std::time::Duration::ZERO,
                    dry_run: false,
                },
                &mut (),
            )
            .unwrap();
            assert_eq!(sound(root, what), 1);
            g.removed_objects == 0
        },
    );
}
