//! Streamed sparse exports checked by qemu-img (the outside oracle): `qemu-img compare`
//! with the source says identical, `qemu-img check` finds nothing.

use super::*;
use crate::disk::Disk;
use crate::sparse::tests::pattern;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Command;

/// Whether qemu-img runs. Missing: a visible SKIP, or a panic when `VCB_REQUIRE_TOOLS` is set.
#[allow(clippy::print_stderr)]
fn have_qemu_img() -> bool {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ if std::env::var_os("VCB_REQUIRE_TOOLS").is_some() => {
            panic!("qemu-img not found and VCB_REQUIRE_TOOLS is set")
        }
        _ => {
            eprintln!("SKIP: qemu-img not found");
            false
        }
    }
}

fn qemu_img(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A sparse raw image of `size` bytes with `pattern` data at `spots` (offset, len) and an
/// all-zero run written (allocated) at `zero_at`.
fn make_raw(path: &Path, size: u64, spots: &[(u64, usize)], zero_at: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in spots.iter().enumerate() {
        f.write_all_at(&pattern(i as u64 + 1, len), off).unwrap();
    }
    f.write_all_at(&vec![0u8; 256 << 10], zero_at).unwrap();
}

/// Records progress calls.
#[derive(Default)]
struct Seen {
    total: u64,
    advanced: u64,
    finished: u32,
    cancel_after: Option<u64>,
}

impl Progress for Seen {
    fn start(&mut self, total_bytes: u64) {
        self.total = total_bytes;
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.advanced += bytes;
        match self.cancel_after {
            Some(n) if self.advanced >= n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
    fn finish(&mut self) {
        self.finished += 1;
    }
}

/// Export `raw` as `format` into `dir/out.vmdk`, check it with qemu-img against the
/// source; returns the files written.
fn export_and_compare(dir: &Path, raw: &Path, format: DiskFormat) -> Vec<PathBuf> {
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut src = Disk::open_raw(raw).unwrap();
    let capacity = src.capacity();
    let mut sink = DirSink::new(&out_dir);
    let mut seen = Seen::default();
    let names = export_sparse(
        &mut src,
        "out.vmdk",
        &CreateSpec::new(0, format),
        &mut sink,
        &mut seen,
    )
    .unwrap();
    assert_eq!(
        (seen.total, seen.advanced, seen.finished),
        (2 * capacity, 2 * capacity, 1)
    );
    let written: Vec<String> = sink
        .written()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, names);
    assert_eq!(names.last().map(String::as_str), Some("out.vmdk"));
    let raw_arg = raw.to_str().unwrap();
    let (code, text) = qemu_img(
        &out_dir,
        &["compare", "-f", "raw", "-F", "vmdk", raw_arg, "out.vmdk"],
    );
    assert_eq!(code, 0, "qemu-img compare: {text}");
    assert!(text.contains("identical"), "{text}");
    let (code, text) = qemu_img(&out_dir, &["check", "-f", "vmdk", "out.vmdk"]);
    assert_eq!(code, 0, "qemu-img check: {text}");
    // Our own reader and checker agree.
    let report = crate::check(
        &out_dir.join("out.vmdk"),
        false,
        &crate::OpenOptions::read_only(),
    )
    .unwrap();
    assert!(report.is_clean(), "{report:?}");
    sink.written().to_vec()
}

#[test]
fn monolithic_export_is_what_qemu_reads() {
    if !have_qemu_img() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // Not a multiple of the grain: the last grain is short and padded.
    let size = (40 << 20) + 1536;
    let raw = t.path().join("src.raw");
    make_raw(
        &raw,
        size,
        &[
            (0, 4096),
            (GRAIN * 3 + 100, 200_000),
            (33 << 20, 1 << 20),
            (size - 1024, 1024),
        ],
        20 << 20,
    );
    let files = export_and_compare(t.path(), &raw, DiskFormat::MonoSparse);
    assert_eq!(files.len(), 1);
    // Compacted: metadata and the grains with data, not the all-zero ones.
    let grains = 1 + 4 + 16 + 1;
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let header = plan(
        Path::new("x"),
        size,
        &CreateSparse {
            embedded_descriptor: Some(String::new()),
            ..CreateSparse::default()
        },
    )
    .unwrap();
    assert_eq!(len, header.overhead_sectors * SECTOR + grains * GRAIN);
}

#[test]
fn split_export_beyond_2_gib_is_what_qemu_reads() {
    if !have_qemu_img() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let gib = 1u64 << 30;
    let size = 5 * gib + 4096;
    let raw = t.path().join("src.raw");
    make_raw(
        &raw,
        size,
        &[
            (512, 70_000),
            // Across the boundary between the first and second piece.
            (2 * gib - 100_000, 300_000),
            (4 * gib + GRAIN * 7, GRAIN as usize),
            (size - 4096, 4096),
        ],
        3 * gib,
    );
    let files = export_and_compare(t.path(), &raw, DiskFormat::TwoGbSparse);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "out-s001.vmdk",
            "out-s002.vmdk",
            "out-s003.vmdk",
            "out.vmdk"
        ]
    );
    // The piece without data is metadata only.
    let desc = std::fs::read_to_string(&files[3]).unwrap();
    assert!(desc.contains("twoGbMaxExtentSparse"), "{desc}");
}

#[test]
fn cancel_stops_the_export() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.raw");
    make_raw(&raw, 16 << 20, &[(0, 8 << 20)], 12 << 20);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut src = Disk::open_raw(&raw).unwrap();
    let mut seen = Seen {
        cancel_after: Some(20 << 20),
        ..Seen::default()
    };
    let err = export_sparse(
        &mut src,
        "out.vmdk",
        &CreateSpec::new(0, DiskFormat::MonoSparse),
        &mut DirSink::new(&out),
        &mut seen,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    let err = export_sparse(
        &mut src,
        "out2.vmdk",
        &CreateSpec::new(0, DiskFormat::Thin),
        &mut DirSink::new(&out),
        &mut (),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}
