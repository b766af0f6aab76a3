//! Helpers shared by the `host_*` integration tests: a host root per test, running the
//! built binaries, qemu-img as an independent reader of the disk chains.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
#[allow(unused_imports)] // not every test crate including this module checks tools
pub use testkit::tools::require_tool;

/// One test's host: a temp dir with `root/` as the host root.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    /// A new, initialised host called `esx1`.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // Keep the tools away from /etc/vmware/backuptools.conf: an empty file instead.
        std::fs::write(dir.path().join("empty-backuptools.conf"), "").unwrap();
        let env = Env { dir, root };
        env.ok(&["host", "init", "--name", "esx1"]);
        env
    }

    /// `vcb ARGS --root ROOT`.
    pub fn vcb(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_vcb"), args)
    }

    /// A tool binary (`vcbVmName`, `vcbUtil`) with `--root ROOT`.
    pub fn run(&self, bin: &str, args: &[&str]) -> Output {
        let mut c = self.command(bin, args);
        c.output().unwrap_or_else(|e| panic!("run {bin}: {e}"))
    }

    /// The command with `--root ROOT`, not yet run.
    pub fn command(&self, bin: &str, args: &[&str]) -> Command {
        self.command_at(bin, &self.root, args)
    }

    /// The command with `--root root`, not yet run.
    pub fn command_at(&self, bin: &str, root: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .arg("--root")
            .arg(root)
            .current_dir(self.dir.path());
        c.env_remove("VCB_ROOT")
            .env("VCB_CONF", self.dir.path().join("empty-backuptools.conf"));
        c
    }

    /// `vcb ARGS` must succeed; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.vcb(args);
        self.check_ok(&format!("vcb {}", args.join(" ")), &o)
    }

    /// `vcb ARGS` must fail with a one-line error; returns it.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.vcb(args);
        self.check_fails(&format!("vcb {}", args.join(" ")), &o)
    }

    #[track_caller]
    pub fn check_ok(&self, what: &str, o: &Output) -> String {
        if !o.status.success() {
            panic!("{what} failed\n{}", self.dump(o));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[track_caller]
    pub fn check_fails(&self, what: &str, o: &Output) -> String {
        if o.status.success() {
            panic!("{what} succeeded but should have failed\n{}", self.dump(o));
        }
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: one-line error expected\n{}",
            self.dump(o)
        );
        err
    }

    /// Status, stdout, stderr and the files under the root, for failure messages.
    pub fn dump(&self, o: &Output) -> String {
        format!(
            "cwd: {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}\nfiles:\n{}",
            self.dir.path().display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            listing(&self.root).join("\n")
        )
    }

    /// The VM folder of `vm` on datastore1.
    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("volumes/datastore1").join(vm)
    }

    /// The disk the .vmx of `vm` names at `scsi0:i` (the current state).
    pub fn current_disk(&self, vm: &str, i: usize) -> PathBuf {
        let h = host::Host::open(&self.root).unwrap();
        let vm = h.find_vm(vm).unwrap();
        vm.disks(&h).unwrap()[i].path.clone()
    }

    /// The disk file snapshot `name` of `vm` recorded (its state).
    pub fn snapshot_disk(&self, vm: &str, name: &str) -> PathBuf {
        let h = host::Host::open(&self.root).unwrap();
        let vm = h.find_vm(vm).unwrap();
        let db = host::read_vmsd(&vm.vmsd_path()).unwrap();
        let s = db.find_by_name(name).unwrap();
        vm.resolve_name(&h, &s.disks[0].1).unwrap()
    }
}

/// Every file under `dir`, relative, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The disk at `path` as qemu-img reads it (`qemu-img convert -O raw`).
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    let out = path.with_file_name(format!(
        ".{}.qemu.raw",
        path.file_name().unwrap().to_string_lossy()
    ));
    let o = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(path)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img convert {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// The file names of the chain at `path`, top first, as `qemu-img info --backing-chain`
/// reports them.
pub fn qemu_chain(path: &Path) -> Vec<String> {
    let o = Command::new("qemu-img")
        .args(["info", "--backing-chain", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img info {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let f = i["filename"].as_str().unwrap();
            Path::new(f)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Writes `byte` over `[offset, offset + len)` of the disk at `path` through vmdk.
pub fn write_disk(path: &Path, offset: u64, len: usize, byte: u8) {
    let mut d = vmdk::Disk::open(path, &vmdk::OpenOptions::writable()).unwrap();
    d.write_at(offset, &vec![byte; len]).unwrap();
    d.close().unwrap();
}

/// Reads the whole disk at `path` through vmdk.
pub fn read_disk(path: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(path, &vmdk::OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; usize::try_from(d.capacity()).unwrap()];
    d.read_at(0, &mut buf).unwrap();
    buf
}
