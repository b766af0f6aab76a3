//! Test helpers: external tools, temp dirs, random content, dumps on failure.

use rand::{Rng, RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
pub use testkit::tools::require_tool;

/// Run a command; on failure panic with the command, cwd, status, stdout and stderr.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed: {cmd:?}\ncwd: {:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            std::env::current_dir().ok(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `qemu-img` with arguments, expecting success.
pub fn qemu_img(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut c = Command::new("qemu-img");
    for a in args {
        c.arg(a);
    }
    run(&mut c)
}

/// `qemu-img convert -O raw` of `disk` into a Vec.
pub fn qemu_read_raw(disk: &Path) -> Vec<u8> {
    let out = disk.with_extension("qemu-oracle.raw");
    qemu_img(&[&"convert", &"-O", &"raw", &disk, &out]);
    let v = std::fs::read(&out).expect("read oracle output");
    let _ = std::fs::remove_file(&out);
    v
}

/// `qemu-img info --output=json` parsed.
pub fn qemu_info(disk: &Path) -> serde_json::Value {
    let out = qemu_img(&[&"info", &"--output=json", &disk]);
    serde_json::from_slice(&out.stdout).expect("qemu-img info json")
}

/// `qemu-img check` exit status and output.
pub fn qemu_check(disk: &Path) -> (bool, String) {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(disk)
        .output()
        .expect("run qemu-img check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `qemu-img compare` of a vmdk against a raw file: true when identical.
pub fn qemu_compare_raw(disk: &Path, raw: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "vmdk", "-F", "raw"])
        .arg(disk)
        .arg(raw)
        .output()
        .expect("run qemu-img compare");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Deterministic RNG for a test.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `len` bytes holding random runs of data between zero gaps (like a used disk).
pub fn scattered_content(len: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let mut v = vec![0u8; len];
    let mut pos = 0usize;
    while pos < len {
        let gap = r.random_range(0..len / 8 + 1);
        pos += gap;
        if pos >= len {
            break;
        }
        let run = r.random_range(1..(len / 8).max(2)).min(len - pos);
        r.fill_bytes(&mut v[pos..pos + run]);
        pos += run;
    }
    v
}

/// A fresh temp dir.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Write `data` to `dir/name` and return the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write file");
    p
}

/// Read the whole disk through vcb.
pub fn vcb_read_all(path: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(path, &vmdk::OpenOptions::read_only())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut v = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut v).expect("read");
    v
}

/// Print the first differing offset of two buffers (for assertion messages).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Assert two disk images are equal, reporting the first difference.
#[track_caller]
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: differs at byte {i:#x} (len got {} want {}): got {:?} want {:?}",
            got.len(),
            want.len(),
            got.get(i..(i + 8).min(got.len())),
            want.get(i..(i + 8).min(want.len()))
        );
    }
}
