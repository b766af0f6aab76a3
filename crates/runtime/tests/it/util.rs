//! Test guest, VM folders, serial log parsing and the consistency check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use runtime::{RuntimeState, Vm};
use testkit::tools::require_tool;

/// Block size the guest writes.
pub const BLOCK: usize = 4096;
/// Blocks the guest cycles through (`seq % BLOCKS`).
pub const BLOCKS: u64 = 128;
/// Disk capacity.
pub const DISK_BYTES: u64 = 64 << 20;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The folder with the guest's `vmlinuz` and `initrd.gz`, built once per test run (and
/// cached across runs under target/vcb-test-guest), or `None` (SKIP) when QEMU or the
/// guest's ingredients are missing.
pub fn guest() -> Option<PathBuf> {
    static GUEST: OnceLock<Option<PathBuf>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            if !require_tool("qemu-system-x86_64") || !require_tool("qemu-img") {
                return None;
            }
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("../../target"));
            // Through `../runtime` so that other crates' tests can include this file.
            let script = manifest.join("../runtime/tests/guest/build.sh");
            let started = Instant::now();
            let out = Command::new("bash")
                .arg(&script)
                .arg(target.join("vcb-test-guest"))
                .output()
                .expect("run build.sh");
            if !out.status.success() {
                let msg = format!(
                    "{} failed ({}):\n{}{}",
                    script.display(),
                    out.status,
                    text(&out.stdout),
                    text(&out.stderr)
                );
                assert!(
                    std::env::var("VCB_REQUIRE_TOOLS").as_deref() != Ok("1"),
                    "{msg}"
                );
                eprintln!("SKIP: test guest unavailable: {msg}");
                return None;
            }
            let dir = PathBuf::from(text(&out.stdout).lines().last().unwrap_or_default().trim());
            eprintln!("test guest: {} ({:.1?})", dir.display(), started.elapsed());
            Some(dir)
        })
        .clone()
}

/// A VM folder in a temp dir, powered off when dropped (and described when a test
/// fails).
pub struct TestVm {
    pub dir: tempfile::TempDir,
    pub vm: Vm,
    pub disk: PathBuf,
    pub serial: PathBuf,
}

/// How the test VM's disk is attached.
pub struct Layout {
    /// `scsi0.virtualDev`: pvscsi, virtio-scsi, virtio-blk...
    pub controller: &'static str,
    pub format: vmdk::DiskFormat,
    pub agent: bool,
}

impl TestVm {
    pub fn new(guest: &Path, name: &str, layout: Layout) -> TestVm {
        let dir = tempfile::Builder::new()
            .prefix("vcb-runtime-")
            .tempdir()
            .unwrap();
        let disk = dir.path().join(format!("{name}.vmdk"));
        vmdk::create(&disk, &vmdk::CreateSpec::new(DISK_BYTES, layout.format)).unwrap();
        // The kernel and initrd live in the VM folder: the host's confinement rule
        // refuses VM files outside its datastores, and the folder is one.
        for file in ["vmlinuz", "initrd.gz"] {
            let (from, to) = (guest.join(file), dir.path().join(file));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap();
            }
        }
        let vmx = dir.path().join(format!("{name}.vmx"));
        let text = format!(
            r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "14"
displayName = "{name}"
memsize = "256"
numvcpus = "1"
scsi0.present = "TRUE"
scsi0.virtualDev = "{controller}"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{name}.vmdk"
serial0.present = "TRUE"
serial0.fileType = "file"
serial0.fileName = "serial.log"
vcb.kernel = "vmlinuz"
vcb.initrd = "initrd.gz"
vcb.append = "console=ttyS0 quiet vcb.blocks={BLOCKS} vcb.every=16"
vcb.guestAgent = "{agent}"
"#,
            controller = layout.controller,
            agent = if layout.agent { "TRUE" } else { "FALSE" },
        );
        std::fs::write(&vmx, text).unwrap();
        TestVm {
            serial: dir.path().join("serial.log"),
            vm: Vm::new(&vmx),
            disk,
            dir,
        }
    }

    pub fn guest(&self) -> Guest {
        Guest::parse(&std::fs::read_to_string(&self.serial).unwrap_or_default())
    }

    /// Waits until the serial log satisfies `ready`.
    pub fn wait_guest(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Guest) -> bool,
    ) -> Guest {
        let deadline = Instant::now() + timeout;
        loop {
            let g = self.guest();
            if ready(&g) {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "guest: {what} not seen within {timeout:?}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Files, vmware.log and the serial log's tail, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::from("VM folder:\n");
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            s += &format!("  {} ({len} bytes)\n", e.file_name().to_string_lossy());
        }
        let log = std::fs::read_to_string(self.dir.path().join("vmware.log")).unwrap_or_default();
        s += &format!("vmware.log:\n{}\n", tail(&log, 40));
        let serial = std::fs::read_to_string(&self.serial).unwrap_or_default();
        s += &format!("serial.log (tail):\n{}\n", tail(&serial, 20));
        s
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        if let Ok(RuntimeState::Running { .. }) = self.vm.status() {
            let _ = self.vm.power_off();
        }
    }
}

/// What the guest reported on its serial console.
#[derive(Debug, Default, Clone)]
pub struct Guest {
    /// Run ids of each `start` line, in order.
    pub runs: Vec<String>,
    /// The newest completed seq reported (progress, frozen or stopped lines).
    pub last_seq: Option<u64>,
    /// The seq of each `frozen` line.
    pub frozen: Vec<u64>,
    pub thawed: usize,
    pub stopped: Option<u64>,
    pub agent: bool,
    /// The seq of each progress line, in order.
    pub progress: Vec<u64>,
}

impl Guest {
    pub fn parse(text: &str) -> Guest {
        let mut g = Guest::default();
        for line in text.lines() {
            let Some((_, rest)) = line.split_once("vcb-guest: ") else {
                continue;
            };
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|t| t.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let seq = field("seq").and_then(|s| s.parse::<u64>().ok());
            match rest.split_whitespace().next() {
                Some("start") => g.runs.extend(field("run")),
                Some("agent") => g.agent = true,
                Some("frozen") => g.frozen.extend(seq),
                Some("thawed") => g.thawed += 1,
                Some("stopped") => g.stopped = seq,
                Some(t) if t.starts_with("run=") => g.progress.extend(seq),
                _ => {}
            }
            if seq.is_some() {
                g.last_seq = seq;
            }
        }
        g
    }

    pub fn run(&self) -> &str {
        self.runs.last().map(String::as_str).unwrap_or("")
    }
}

/// Reads the guest's blocks from a disk (through its whole chain).
pub fn disk_blocks(path: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(path, &vmdk::OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; BLOCK * BLOCKS as usize];
    d.read_at(0, &mut buf).unwrap();
    buf
}

/// Checks that `blocks` is a point-in-time image of run `run`: with H the highest seq
/// found, every block b holds the newest seq s ≤ H with s % BLOCKS == b (or nothing, if
/// no such write happened). Returns H.
pub fn check_point_in_time(blocks: &[u8], run: &str) -> u64 {
    let parsed: Vec<Option<(String, u64, u64)>> = blocks.chunks(BLOCK).map(parse_block).collect();
    let high = parsed
        .iter()
        .flatten()
        .filter(|(r, _, _)| r == run)
        .map(|(_, s, _)| *s)
        .max()
        .expect("no block of this run");
    for (b, got) in parsed.iter().enumerate() {
        let b = b as u64;
        let want = (high >= b).then(|| high - (high - b) % BLOCKS);
        let got_seq = got.as_ref().map(|(r, s, blk)| {
            assert_eq!(r, run, "block {b}: run");
            assert_eq!(*blk, b, "block {b}: blk field");
            *s
        });
        assert_eq!(got_seq, want, "block {b} (image's highest seq {high})");
    }
    high
}

fn parse_block(block: &[u8]) -> Option<(String, u64, u64)> {
    let end = block.iter().position(|&c| c == b'\n' || c == 0)?;
    let line = std::str::from_utf8(&block[..end]).ok()?;
    let mut run = None;
    let (mut seq, mut blk) = (None, None);
    for t in line.split_whitespace() {
        match t.split_once('=') {
            Some(("run", v)) => run = Some(v.to_owned()),
            Some(("seq", v)) => seq = v.parse().ok(),
            Some(("blk", v)) => blk = v.parse().ok(),
            _ => {}
        }
    }
    Some((run?, seq?, blk?))
}

/// `qemu-img check` must pass.
pub fn qemu_img_check(path: &Path) {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}\n{}{}",
        path.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Guest writes per second over `window`, from its progress reports.
pub fn write_rate(vm: &TestVm, window: Duration) -> f64 {
    let (t0, s0) = (Instant::now(), vm.guest().last_seq.unwrap_or(0));
    std::thread::sleep(window);
    let s1 = vm.guest().last_seq.unwrap_or(0);
    (s1.saturating_sub(s0)) as f64 / t0.elapsed().as_secs_f64()
}
