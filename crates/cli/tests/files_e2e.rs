//! Issue 13: file-level access to backups through the real binary: `vcb files ls|stat|
//! cat|get|find|mount` on backup folders and repository points of a VM whose disk holds a
//! GPT with ext4 and FAT built by Debian's tools.

#[path = "backup_e2e/util.rs"]
#[allow(dead_code, unused_imports)]
mod util;

#[path = "repo_e2e/store.rs"]
#[allow(dead_code)]
mod store;

#[path = "files_e2e/formats.rs"]
mod formats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::guestimg::{self, Entry, TreeKind};
use util::Env;

const TREE: TreeKind = TreeKind {
    symlinks: true,
    hardlinks: true,
    sparse: true,
    max_file: 6 << 20,
};
const FLAT: TreeKind = TreeKind {
    symlinks: false,
    hardlinks: false,
    sparse: false,
    max_file: 1 << 20,
};
const DISK: u64 = 96 << 20;

pub(crate) fn tools() -> bool {
    testkit::tools::require_tools(guestimg::TOOLS)
        && testkit::tools::require_tools(&["tar", "umount"])
}

/// A raw disk: GPT, partition 1 ext4 of `tree`, partition 2 FAT of `flat`.
fn raw_disk(dir: &Path, tree: &Path, flat: &Path) -> PathBuf {
    let (ext, fat, raw) = (
        dir.join("ext.img"),
        dir.join("fat.img"),
        dir.join("disk.raw"),
    );
    guestimg::ext4(tree, &ext, 48 << 20, &[]);
    guestimg::vfat(flat, &fat, 32 << 20, 16);
    guestimg::blank(&raw, DISK);
    let parts = guestimg::sgdisk(&raw, &[(48, "8300"), (33, "0700")]);
    guestimg::place(&raw, parts[0].0, &ext);
    guestimg::place(&raw, parts[1].0, &fat);
    raw
}

/// A VM `files` whose one disk holds `raw`.
fn vm_with(env: &Env, raw: &Path) {
    env.vm("files", &[(DISK, vmdk::DiskFormat::Thin)], 1);
    put(env, raw);
}

fn put(env: &Env, raw: &Path) {
    let disk = &util::disk_paths(env, "files")[0];
    util::write(disk, 0, &std::fs::read(raw).unwrap());
}

fn trees(dir: &Path) -> (PathBuf, PathBuf) {
    let (tree, flat) = (dir.join("tree"), dir.join("flat"));
    guestimg::make_tree(&tree, TREE, 21);
    guestimg::make_tree(&flat, FLAT, 22);
    std::fs::set_permissions(
        flat.join("plain.txt-0"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    (tree, flat)
}

/// `vcb files mount SOURCE MNT` in the background, once the mount is there.
pub(crate) fn serve(env: &Env, source: &str, mnt: &Path) -> std::process::Child {
    let mut server = env
        .command("vcb", &["files", "mount", source, mnt.to_str().unwrap()])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !mnt.join("digits/1").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60) && server.try_wait().unwrap().is_none(),
            "the mount did not appear"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn same(got: &Path, want: &Path, perms: bool) {
    same_with(got, want, perms, true);
}

/// The tree at `got` equals `want` (modes when `perms`, file mtimes when `mtimes`),
/// leaving out ext4's lost+found.
pub(crate) fn same_with(got: &Path, want: &Path, perms: bool, mtimes: bool) {
    let mut g = guestimg::manifest(got);
    g.remove("lost+found");
    let w = guestimg::manifest(want);
    let diff: Vec<(&String, Option<&Entry>, Option<&Entry>)> = w
        .keys()
        .chain(g.keys())
        .filter_map(|k| {
            let (a, b) = (g.get(k), w.get(k));
            let differs = match (a, b) {
                (Some(a), Some(b)) => {
                    (a.kind, a.size, &a.content, &a.link_group)
                        != (b.kind, b.size, &b.content, &b.link_group)
                        || (perms && a.perm != b.perm)
                        || (mtimes && a.mtime != b.mtime)
                }
                _ => true,
            };
            differs.then_some((k, a, b))
        })
        .collect();
    assert!(
        diff.is_empty(),
        "{} differs from {}: {diff:#?}",
        got.display(),
        want.display()
    );
}

#[test]
fn a_backup_folder_is_listed_read_restored_and_mounted() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    vm_with(&env, &raw_disk(env.dir.path(), &tree, &flat));
    let dest = env.path("bk");
    env.ok("vcb", &["backup", "files", dest.to_str().unwrap()]);
    let d = dest.to_str().unwrap();

    let vols: serde_json::Value =
        serde_json::from_str(&env.ok("vcb", &["files", "ls", d, "--json"])).unwrap();
    let formats: Vec<_> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["number"].as_u64().unwrap(),
                v["format"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(formats, [(1, "ext4".to_string()), (2, "vfat".to_string())]);
    let listing = env.ok("vcb", &["files", "ls", d, "1/deep"]);
    assert!(
        listing.contains("link-up -> ../../../../outside"),
        "{listing}"
    );
    let cat = env.ok("vcb", &["files", "cat", d, "guest-ext4/deep/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/bottom.txt"]);
    assert_eq!(cat, "the bottom\n");
    let st: serde_json::Value =
        serde_json::from_str(&env.ok("vcb", &["files", "stat", d, "1/plain.txt-0", "--json"]))
            .unwrap();
    assert_eq!(st["mode"], "600");

    // get: whole trees, with modes, times, symlinks, hard links and holes.
    let out = env.path("out");
    env.ok(
        "vcb",
        &["files", "get", d, "1/", "2/", "--to", out.to_str().unwrap()],
    );
    same(&out.join("volume-1"), &tree, true);
    same(&out.join("volume-2"), &flat, false);
    let sparse = std::fs::metadata(out.join("volume-1/sparse.img")).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&sparse) * 512 < 1 << 20,
        "the sparse file stayed sparse"
    );
    assert!(!env.path("outside").exists());
    // A single file, and refusing to overwrite.
    env.ok(
        "vcb",
        &[
            "files",
            "get",
            d,
            "1/deep/hardlink-to-space",
            "--to",
            env.path("one").to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(env.path("one/hardlink-to-space")).unwrap(),
        std::fs::read(tree.join("with space.dat-2")).unwrap()
    );
    let err = env.fails(
        "vcb",
        &[
            "files",
            "get",
            d,
            "1/deep/hardlink-to-space",
            "--to",
            env.path("one").to_str().unwrap(),
        ],
    );
    assert!(err.contains("exists"), "{err}");

    // mount: VCB's layout, and `tar` of the whole mount.
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = guestimg::Unmount(mnt.clone());
    let mut server = serve(&env, d, &mnt);
    let result = std::panic::catch_unwind(|| {
        same(&mnt.join("digits/1"), &tree, true);
        same(&mnt.join("letters/C"), &flat, false);
        assert!(mnt.join("volumes/guest-ext4/deep").is_dir());
        assert!(mnt.join("volumes/GUESTFAT").is_dir());
        assert!(
            guestimg::tar_bytes(&mnt) > guestimg::file_bytes(&guestimg::manifest(&tree)),
            "tar read every file"
        );
        assert!(
            std::fs::write(mnt.join("digits/1/new"), b"x").is_err(),
            "the mount is read-only"
        );
    });
    testkit::tools::run(std::process::Command::new("umount").arg(&mnt));
    let status = server.wait().unwrap();
    result.unwrap();
    assert!(status.success(), "vcb files mount ended with {status}");
}

#[test]
fn a_file_deleted_between_two_points_is_found_and_restored_from_the_older() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    std::fs::write(
        tree.join("victim.doc"),
        b"the file that gets deleted\n".repeat(1000),
    )
    .unwrap();
    vm_with(&env, &raw_disk(env.dir.path(), &tree, &flat));
    let repo = store::Repo::local(&env, "repo");
    repo.init(&env);
    repo.ok(&env, "vcb", &["backup", "files", "--repo", &repo.spec]);
    let first = repo.points(&env)[0]["id"].as_str().unwrap().to_string();
    std::fs::remove_file(tree.join("victim.doc")).unwrap();
    put(&env, &raw_disk(env.dir.path(), &tree, &flat));
    repo.ok(&env, "vcb", &["backup", "files", "--repo", &repo.spec]);
    assert_eq!(repo.points(&env).len(), 2);

    let target = repo.target();
    let found: serde_json::Value = serde_json::from_str(&repo.ok(
        &env,
        "vcb",
        &["files", "find", &target, "--name", "victim*", "--json"],
    ))
    .unwrap();
    let hits = found.as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    assert_eq!(hits[0]["point"], first.as_str());
    assert_eq!(hits[0]["path"], "1/victim.doc");
    assert_eq!(hits[0]["size"], 27_000);
    let out = env.path("restored");
    repo.ok(
        &env,
        "vcb",
        &[
            "files",
            "get",
            &format!("{target}#{first}"),
            "1/victim.doc",
            "--to",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(out.join("victim.doc")).unwrap(),
        b"the file that gets deleted\n".repeat(1000)
    );
    let err = repo.fails(
        &env,
        "vcb",
        &["files", "find", &target, "--name", "nothing-like-this"],
    );
    assert!(err.contains("no point holds"), "{err}");
}

#[test]
fn hostile_names_and_links_never_write_outside_the_target() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    std::fs::write(tree.join("qXq1"), b"slash").unwrap();
    std::fs::write(tree.join("dXd"), b"dots").unwrap();
    std::os::unix::fs::symlink(env.path("escape-target"), tree.join("escape")).unwrap();
    let raw = raw_disk(env.dir.path(), &tree, &flat);
    // Rename in the image itself: "qXq1" becomes "q/q1", "dXd" becomes "..." then "..".
    let mut bytes = std::fs::read(&raw).unwrap();
    let mut patched = 0;
    for (from, to) in [
        (&b"\x04\x01qXq1"[..], &b"\x04\x01q/q1"[..]),
        (&b"\x03\x01dXd"[..], &b"\x02\x01..d"[..]),
    ] {
        while let Some(at) = bytes.windows(from.len()).position(|w| w == from) {
            bytes[at..at + to.len()].copy_from_slice(to);
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "the names were found in the directory block");
    std::fs::write(&raw, &bytes).unwrap();
    vm_with(&env, &raw);
    let dest = env.path("bk");
    env.ok("vcb", &["backup", "files", dest.to_str().unwrap()]);
    let out = env.path("out");
    let err = env.fails(
        "vcb",
        &[
            "files",
            "get",
            dest.to_str().unwrap(),
            "1/",
            "--to",
            out.to_str().unwrap(),
        ],
    );
    assert!(err.contains("refused the name \"q/q1\""), "{err}");
    assert!(!out.join("volume-1/q").exists());
    // The symlink is restored as a link, never followed.
    assert_eq!(
        std::fs::read_link(out.join("volume-1/escape")).unwrap(),
        env.path("escape-target")
    );
    assert!(!env.path("escape-target").exists());
    assert_eq!(
        std::fs::read(out.join("volume-1/plain.txt-5")).unwrap(),
        std::fs::read(tree.join("plain.txt-5")).unwrap()
    );
}

/// The record `vcbMounter -t file` keeps under the host root.
fn mount_record(env: &Env) -> Option<serde_json::Value> {
    let dir = env.root.join("file-mounts");
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))?;
    serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).ok()
}

/// `vcbMounter -a name:files -r MNT -t file`, required to succeed (`ok`) or fail; its
/// stdout or stderr.
fn file_mount(env: &Env, mnt: &Path, ok: bool) -> String {
    let args = [
        "-a",
        "name:files",
        "-r",
        mnt.to_str().unwrap(),
        "-t",
        "file",
    ];
    if ok {
        env.ok("vcbMounter", &args)
    } else {
        env.fails("vcbMounter", &args)
    }
}

fn snapshots(env: &Env) -> String {
    env.ok("vcb", &["vm", "snapshots", "files"])
}

#[test]
fn vcbmounter_file_mode_mounts_the_snapshot_and_u_commits_what_was_written_meanwhile() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    std::fs::write(tree.join("victim.doc"), b"still in the snapshot\n").unwrap();
    vm_with(&env, &raw_disk(env.dir.path(), &tree, &flat));
    let mnt = env.path("mnt");
    let out = file_mount(&env, &mnt, true);
    let _guard = guestimg::Unmount(mnt.clone());
    assert!(out.contains("vcbMounter -U"), "{out}");
    // The mount outlives vcbMounter; the VM's disk is now a redo log over a static base.
    assert!(snapshots(&env).contains("_vcb-file-access_"));
    same(&mnt.join("digits/1"), &tree, true);
    same(&mnt.join("letters/C"), &flat, false);
    // "The guest" writes meanwhile: the new image goes into the redo log.
    std::fs::remove_file(tree.join("victim.doc")).unwrap();
    put(&env, &raw_disk(env.dir.path(), &tree, &flat));
    assert!(
        mnt.join("digits/1/victim.doc").exists(),
        "the mount shows the snapshot's state"
    );
    assert!(
        guestimg::tar_bytes(&mnt) > guestimg::file_bytes(&guestimg::manifest(&tree)),
        "tar read every file"
    );
    env.ok("vcbMounter", &["-U", mnt.to_str().unwrap()]);
    assert!(!mnt.exists(), "-U removes the folder it created");
    assert!(mount_record(&env).is_none());
    assert!(!snapshots(&env).contains("_vcb-file-access_"));
    // Nothing the guest wrote was lost: the committed disk, read through a VM source.
    let vols = env.ok("vcb", &["files", "ls", "files", "1/"]);
    assert!(
        !vols.contains("victim.doc") && vols.contains("plain.txt-0"),
        "{vols}"
    );
    assert!(
        !snapshots(&env).contains("_vcb-file-access_"),
        "vcb files removes its own snapshot"
    );
    let err = env.fails("vcbMounter", &["-U", mnt.to_str().unwrap()]);
    assert!(err.contains("no file-level mount"), "{err}");
}

#[test]
fn vcbmounter_u_undoes_a_mount_whose_server_was_killed() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    vm_with(&env, &raw_disk(env.dir.path(), &tree, &flat));
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    file_mount(&env, &mnt, true);
    let _guard = guestimg::Unmount(mnt.clone());
    let err = file_mount(&env, &env.path("second"), false);
    assert!(
        err.contains("file-mounted at") && err.contains("vcbMounter -U"),
        "{err}"
    );
    assert!(!env.path("second").exists());
    let pid = mount_record(&env).unwrap()["server_pid"].as_u64().unwrap();
    testkit::tools::run(std::process::Command::new("kill").args(["-9", &pid.to_string()]));
    let started = Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok()
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::read_dir(&mnt).is_err(),
        "a dead FUSE mount cannot be read"
    );
    env.ok("vcbMounter", &["-U", mnt.to_str().unwrap()]);
    assert!(
        mnt.is_dir() && std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "the folder it did not create stays, empty"
    );
    assert!(!snapshots(&env).contains("_vcb-file-access_"));
    assert!(mount_record(&env).is_none());
    // A non-empty folder is refused before any snapshot is taken.
    std::fs::write(mnt.join("x"), b"x").unwrap();
    let err = file_mount(&env, &mnt, false);
    assert!(err.contains("not empty"), "{err}");
    assert!(!snapshots(&env).contains("_vcb-file-access_"));
}

#[test]
fn an_incremental_backup_folder_is_read_through_its_chain() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    std::fs::write(tree.join("victim.doc"), b"only in the full backup\n").unwrap();
    vm_with(&env, &raw_disk(env.dir.path(), &tree, &flat));
    env.ok("vcb", &["vm", "ctk", "enable", "files"]);
    let (full, inc) = (env.path("full"), env.path("inc"));
    env.ok(
        "vcbMounter",
        &["-a", "name:files", "-r", full.to_str().unwrap()],
    );
    std::fs::remove_file(tree.join("victim.doc")).unwrap();
    std::fs::write(tree.join("added.txt"), b"only in the incremental\n").unwrap();
    put(&env, &raw_disk(env.dir.path(), &tree, &flat));
    let args = [
        "-a",
        "name:files",
        "-r",
        inc.to_str().unwrap(),
        "--incremental-from",
        full.to_str().unwrap(),
    ];
    env.ok("vcbMounter", &args);
    assert_eq!(
        util::catalog(&inc).disks[0].parent_backup.as_deref(),
        Some("full")
    );
    let out = env.path("out");
    env.ok(
        "vcb",
        &[
            "files",
            "get",
            inc.to_str().unwrap(),
            "1/",
            "--to",
            out.to_str().unwrap(),
        ],
    );
    same(&out.join("volume-1"), &tree, true);
    let old = env.ok(
        "vcb",
        &["files", "cat", full.to_str().unwrap(), "1/victim.doc"],
    );
    assert_eq!(old, "only in the full backup\n");
}

#[test]
fn vcbmounter_killed_after_its_snapshot_leaves_what_u_finishes() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (tree, flat) = trees(env.dir.path());
    vm_with(&env, &raw_disk(env.dir.path(), &tree, &flat));
    let before = util::content(&util::disk_paths(&env, "files")[0]);
    let mnt = env.path("mnt");
    let mut holder = env
        .command(
            "vcbMounter",
            &[
                "-a",
                "name:files",
                "-r",
                mnt.to_str().unwrap(),
                "-t",
                "file",
            ],
        )
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "30")
        .spawn()
        .unwrap();
    // The snapshot is in the .vmsd while the holder sleeps; its uid is in no record yet.
    let vmsd = env.host().find_vm("files").unwrap().dir.join("files.vmsd");
    let started = Instant::now();
    while !std::fs::read_to_string(&vmsd)
        .unwrap_or_default()
        .contains("_vcb-file-access_")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no snapshot appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let record = mount_record(&env).expect("the record was written before the snapshot");
    assert!(record["uid"].is_null());
    let err = file_mount(&env, &env.path("other"), false);
    assert!(err.contains("vcbMounter -U"), "{err}");
    env.ok("vcbMounter", &["-U", mnt.to_str().unwrap()]);
    assert!(!snapshots(&env).contains("_vcb-file-access_"));
    assert!(mount_record(&env).is_none() && !mnt.exists());
    assert_eq!(util::content(&util::disk_paths(&env, "files")[0]), before);
}
