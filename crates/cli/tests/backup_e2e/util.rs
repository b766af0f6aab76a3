//! Test helpers: a temporary host, VMs with known content, running the tools with a
//! full dump on failure, and `qemu-img` with a visible SKIP.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
pub use testkit::tools::require_tool;

/// A temporary folder holding a host root and room for backups.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        host::Host::init(&root, "esx-test").unwrap();
        Env { dir, root }
    }

    pub fn host(&self) -> host::Host {
        host::Host::open(&self.root).unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A VM with one disk per entry of `disks` (capacity, format), each filled with a
    /// pattern derived from `seed` and the disk index.
    pub fn vm(&self, name: &str, disks: &[(u64, vmdk::DiskFormat)], seed: u8) -> host::Vm {
        let mut h = self.host();
        let mut spec = host::VmSpec::new(name);
        spec.format = vmdk::DiskFormat::Thin;
        spec.ip = Some(format!("10.0.0.{seed}"));
        for (cap, _) in disks {
            spec.disks.push(host::DiskSource::New {
                capacity_bytes: *cap,
            });
        }
        let vm = h.create_vm(&spec, &mut ()).unwrap();
        for (i, (d, (cap, format))) in vm.disks(&h).unwrap().iter().zip(disks).enumerate() {
            if *format != vmdk::DiskFormat::Thin {
                vmdk::delete(&d.path).unwrap();
                vmdk::create(&d.path, &vmdk::CreateSpec::new(*cap, format.clone())).unwrap();
            }
            fill(&d.path, seed.wrapping_add(i as u8), *cap);
        }
        h.vm(vm.moref).unwrap()
    }

    /// Run a tool with `--root` and a clean environment; returns its output.
    pub fn run(&self, tool: &str, args: &[&str]) -> Output {
        self.run_env(tool, args, &[])
    }

    pub fn run_env(&self, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(tool, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        eprintln!(
            "$ {tool} {}\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    pub fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(tool));
        cmd.args(args);
        // Repository and disk commands take no host.
        let hostless = tool == "vmkfstools"
            || (tool == "vcb" && matches!(args.first(), Some(&"repo") | Some(&"disk")));
        if !hostless {
            cmd.arg("--root").arg(&self.root);
        }
        cmd.env_remove("VCB_ROOT")
            .env("VCB_CONF", "")
            .stdin(std::process::Stdio::null());
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Run and require success, dumping everything otherwise.
    pub fn ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run(tool, args);
        if !out.status.success() {
            self.dump();
            panic!(
                "{tool} {args:?} failed: {}\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        text(&out.stdout)
    }

    /// Run and require success; returns stdout and stderr together.
    pub fn ok_all(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run(tool, args);
        if !out.status.success() {
            self.dump();
            panic!(
                "{tool} {args:?} failed: {}\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    /// Run and require failure; returns stderr.
    pub fn fails(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run(tool, args);
        if out.status.success() {
            self.dump();
            panic!(
                "{tool} {args:?} succeeded unexpectedly:\n{}",
                text(&out.stdout)
            );
        }
        text(&out.stderr)
    }

    /// Print every file of the temporary folder (for failures).
    pub fn dump(&self) {
        eprintln!("--- files under {}:", self.dir.path().display());
        for f in walk(self.dir.path()) {
            let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            eprintln!("  {} ({size} bytes)", f.display());
        }
    }
}

pub fn bin(tool: &str) -> &'static str {
    match tool {
        "vcb" => env!("CARGO_BIN_EXE_vcb"),
        "vcbMounter" => env!("CARGO_BIN_EXE_vcbMounter"),
        "vcbRestore" => env!("CARGO_BIN_EXE_vcbRestore"),
        "vcbSnapAll" => env!("CARGO_BIN_EXE_vcbSnapAll"),
        "vmkfstools" => env!("CARGO_BIN_EXE_vmkfstools"),
        "vcbVmName" => env!("CARGO_BIN_EXE_vcbVmName"),
        "vcbUtil" => env!("CARGO_BIN_EXE_vcbUtil"),
        other => panic!("unknown tool {other}"),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every file below `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Write a recognisable pattern: 64 KiB runs every 1 MiB plus the last sector.
pub fn fill(disk: &Path, seed: u8, capacity: u64) {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::writable()).unwrap();
    let block: Vec<u8> = (0..65536u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect();
    let mut off = 0;
    while off + 65536 <= capacity {
        d.write_at(off, &block).unwrap();
        off += 1 << 20;
    }
    d.write_at(capacity - 512, &[seed | 1; 512]).unwrap();
    d.close().unwrap();
}

/// Write `data` at `offset` into the disk (or chain) at `disk`.
pub fn write(disk: &Path, offset: u64, data: &[u8]) {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::writable()).unwrap();
    d.write_at(offset, data).unwrap();
    d.close().unwrap();
}

/// The whole content of a disk (small test disks only).
pub fn content(disk: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut buf).unwrap();
    buf
}

/// The disk files of a VM (display name or specifier) as its .vmx names them now.
pub fn disk_paths(env: &Env, vm: &str) -> Vec<PathBuf> {
    let h = env.host();
    let vm = h.find_vm(vm).unwrap();
    vm.disks(&h).unwrap().into_iter().map(|d| d.path).collect()
}

/// `qemu-img compare` of two images (any formats qemu reads).
pub fn qemu_same(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Read a backup's catalog.
pub fn catalog(dir: &Path) -> vmx::Catalog {
    let text = std::fs::read_to_string(dir.join("catalog")).unwrap();
    vmx::Catalog::from_dict(&vmx::Dict::parse(&text).unwrap()).unwrap()
}

/// Write a catalog (e.g. an edited copy).
pub fn write_catalog(path: &Path, c: &vmx::Catalog) {
    std::fs::write(path, c.to_dict().unwrap().to_string()).unwrap();
}

/// Points an (edited copy of a) catalog at another place: the .vmx becomes
/// `FOLDER/<stem>.vmx` (suspend and log folders follow) and disk i is named `disks[i]`
/// in the same folder.
pub fn retarget(c: &mut vmx::Catalog, folder: &vmx::DatastorePath, stem: &str, disks: &[&str]) {
    c.config_vmx = Some(folder.join(&format!("{stem}.vmx")).unwrap());
    c.config_suspend_dir = Some(folder.clone());
    c.config_log_dir = Some(folder.clone());
    for (disk, name) in c.disks.iter_mut().zip(disks) {
        disk.diskname = Some(folder.join(name).unwrap());
    }
}

/// Restores the backup in `dest` with `-a` pointing at catalog `c` (written next to the
/// environment's other files) and `-l abort`, through `vcbRestore -s` or `vcb restore`;
/// returns the tool's output.
pub fn restore_with_catalog(env: &Env, tool: &str, dest: &Path, c: &vmx::Catalog) -> String {
    let alt = env.path("catalog-alt");
    write_catalog(&alt, c);
    let (dest, alt) = (dest.to_str().unwrap(), alt.to_str().unwrap());
    match tool {
        "vcbRestore" => env.ok(tool, &["-s", dest, "-a", alt, "-l", "abort"]),
        _ => env.ok(tool, &["restore", dest, "-a", alt, "-l", "abort"]),
    }
}

/// The registered VM whose .vmx is the datastore path `vmx`.
pub fn registered(env: &Env, vmx: &str) -> host::Vm {
    env.host()
        .vms()
        .0
        .into_iter()
        .find(|v| v.vmx.to_string() == vmx)
        .unwrap_or_else(|| panic!("{vmx} is not registered"))
}

/// `len` pseudo-random bytes from `seed` (xorshift: incompressible, the same every run).
#[allow(dead_code)] // used by the repository and kill-sweep tests, not by backup_e2e
pub fn random_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` at `offset` of `disk` through `vcb disk write` (vcb's own tool, which
/// keeps changed-block tracking).
#[allow(dead_code)] // used by the tracking tests
pub fn vcb_write(env: &Env, disk: &Path, offset: u64, data: &[u8]) {
    let f = env.path("payload.bin");
    std::fs::write(&f, data).unwrap();
    env.ok(
        "vcb",
        &[
            "disk",
            "write",
            disk.to_str().unwrap(),
            &offset.to_string(),
            f.to_str().unwrap(),
        ],
    );
}

/// A VM `vm37` with a thin 8 MiB and a zeroedthick 4 MiB disk, a user snapshot, and data
/// written after the snapshot. Returns the disks as the .vmx names them (the redo logs).
pub fn vm37_with_snapshot(env: &Env) -> Vec<PathBuf> {
    env.vm(
        "vm37",
        &[
            (8 * MIB, vmdk::DiskFormat::Thin),
            (4 * MIB, vmdk::DiskFormat::ZeroedThick),
        ],
        7,
    );
    let h = env.host();
    let vm = h.find_vm("vm37").unwrap();
    let mut locked = h.lock_vm(vm.moref, host::LockMode::Wait).unwrap();
    locked
        .create_snapshot("before-upgrade", "a user snapshot")
        .unwrap();
    drop(locked);
    let tops = disk_paths(env, "vm37");
    write(&tops[0], 3 * MIB, b"written after the user snapshot");
    write(&tops[1], 0, b"also after the snapshot");
    tops
}

const MIB: u64 = 1 << 20;
