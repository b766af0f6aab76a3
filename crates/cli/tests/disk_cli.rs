//! `vmkfstools` and `vcb disk` through the real binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "disk_cli/safety.rs"]
mod safety;

fn vmkfstools(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmkfstools"));
    for a in args {
        c.arg(a);
    }
    c.output().expect("run vmkfstools")
}

fn vcb(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vcb"));
    for a in args {
        c.arg(a);
    }
    c.output().expect("run vcb")
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn fails(o: Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one-line error expected, got:\n{err}"
    );
    err
}

fn qemu_available() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("VCB_REQUIRE_TOOLS").is_none(),
            "qemu-img required"
        );
        eprintln!("SKIP: qemu-img not found");
    }
    ok
}

fn qemu_create_type(p: &Path) -> String {
    let o = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["format-specific"]["data"]["create-type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn qemu_raw(p: &Path) -> Vec<u8> {
    let out = p.with_extension("oracle.raw");
    let o = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(p)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn create_every_format_with_size_suffixes() {
    let dir = tempfile::tempdir().unwrap();
    for (fmt, ct) in [
        ("zeroedthick", "vmfs"),
        ("eagerzeroedthick", "vmfs"),
        ("thin", "vmfs"),
        ("2gbsparse", "twoGbMaxExtentSparse"),
        ("monosparse", "monolithicSparse"),
        ("monoflat", "monolithicFlat"),
    ] {
        let d = dir.path().join(format!("{fmt}.vmdk"));
        ok(vmkfstools(&[
            &"-c",
            &"3m",
            &"-d",
            &fmt,
            &"-a",
            &"buslogic",
            &d,
        ]));
        let info: serde_json::Value =
            serde_json::from_str(&ok(vcb(&[&"disk", &"info", &d, &"--json"]))).unwrap();
        assert_eq!(info["capacity"], 3 << 20, "{fmt}");
        assert_eq!(info["adapter"], "buslogic", "{fmt}");
        if qemu_available() {
            assert_eq!(qemu_create_type(&d), ct, "{fmt}");
        }
    }
    // Default format is zeroedthick ("preallocated"): a vmfs flat whose blocks are reserved.
    let d = dir.path().join("default.vmdk");
    ok(vmkfstools(&[&"-c", &"1M", &d]));
    let text = std::fs::read_to_string(&d).unwrap();
    assert!(
        text.contains("createType=\"vmfs\"") && !text.contains("thinProvisioned"),
        "{text}"
    );
    let thin = std::fs::read_to_string(dir.path().join("thin.vmdk")).unwrap();
    assert!(thin.contains("ddb.thinProvisioned = \"1\""), "{thin}");
}

#[test]
fn import_raw_write_read_and_clone() {
    let dir = tempfile::tempdir().unwrap();
    let raw: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let src = dir.path().join("guest.img");
    std::fs::write(&src, &raw).unwrap();
    let thin = dir.path().join("thin.vmdk");
    ok(vmkfstools(&[&"-i", &src, &thin, &"-d", &"thin"]));
    let patch = dir.path().join("patch.bin");
    std::fs::write(&patch, b"hello from vcb").unwrap();
    ok(vcb(&[&"disk", &"write", &thin, &"1M", &patch]));
    let got = vcb(&[&"disk", &"read", &thin, &"1M", &"14"]);
    assert_eq!(ok(got), "hello from vcb");
    let mut want = raw.clone();
    want[1 << 20..(1 << 20) + 14].copy_from_slice(b"hello from vcb");
    for fmt in ["2gbsparse", "monosparse", "zeroedthick", "eagerzeroedthick"] {
        let out = dir.path().join(format!("clone-{fmt}.vmdk"));
        ok(vmkfstools(&[&"-i", &thin, &out, &"-d", &fmt]));
        if qemu_available() {
            assert!(qemu_raw(&out) == want, "{fmt} clone differs");
        }
    }
}

#[test]
fn extend_rename_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("a.vmdk");
    ok(vmkfstools(&[&"-c", &"1M", &"-d", &"monosparse", &d]));
    let content = dir.path().join("content.bin");
    std::fs::write(
        &content,
        (0..300_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    ok(vcb(&[&"disk", &"write", &d, &"100k", &content]));
    let before = ok(vcb(&[&"disk", &"read", &d, &"0", &"1M"]));
    ok(vmkfstools(&[&"-X", &"5M", &d]));
    let info: serde_json::Value =
        serde_json::from_str(&ok(vcb(&[&"disk", &"info", &d, &"--json"]))).unwrap();
    assert_eq!(info["capacity"], 5 << 20);
    assert_eq!(ok(vcb(&[&"disk", &"read", &d, &"0", &"1M"])), before);
    let err = fails(vmkfstools(&[&"-X", &"2M", &d]));
    assert!(err.contains("never shrunk"), "{err}");
    let flat = dir.path().join("f.vmdk");
    ok(vmkfstools(&[&"-c", &"1M", &"-d", &"thin", &flat]));
    ok(vmkfstools(&[&"-X", &"3M", &flat]));
    let renamed = dir.path().join("g.vmdk");
    ok(vmkfstools(&[&"-E", &flat, &renamed]));
    assert!(
        files_in(dir.path()).contains(&"g-flat.vmdk".to_string()),
        "{:?}",
        files_in(dir.path())
    );
    assert!(!flat.exists());
    ok(vmkfstools(&[&"-e", &renamed]));
    ok(vmkfstools(&[&"-U", &renamed]));
    ok(vmkfstools(&[&"-U", &d]));
    assert_eq!(
        files_in(dir.path()),
        vec!["content.bin".to_string()],
        "only the test input remains"
    );
}

#[test]
fn rdm_create_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let dev: PathBuf = dir.path().join("lun0.bin");
    std::fs::write(&dev, vec![7u8; 1 << 20]).unwrap();
    let map = dir.path().join("rdm.vmdk");
    ok(vmkfstools(&[&"-r", &dev, &map]));
    let q = ok(vmkfstools(&[&"-q", &map]));
    assert!(
        q.contains("Non-passthrough Raw Device Mapping") && q.contains("lun0.bin"),
        "{q}"
    );
    let mapp = dir.path().join("rdmp.vmdk");
    ok(vmkfstools(&[&"-z", &dev, &mapp]));
    let q = ok(vmkfstools(&[&"-q", &mapp]));
    assert!(q.contains("is a Passthrough Raw Device Mapping"), "{q}");
    // Reading the mapping reads the device.
    assert_eq!(
        ok(vcb(&[&"disk", &"read", &map, &"0", &"4"])).as_bytes(),
        &[7, 7, 7, 7]
    );
    let err = fails(vmkfstools(&[&"-q", &dir.path().join("nothing.vmdk")]));
    assert!(err.contains("nothing.vmdk"), "{err}");
}

#[test]
fn bad_options_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("x.vmdk");
    let err = fails(vmkfstools(&[&"-c", &"10Q", &d]));
    assert!(err.contains("invalid size"), "{err}");
    let err = fails(vmkfstools(&[&"-c", &"1M", &"-d", &"bogus", &d]));
    assert!(err.contains("unknown disk format"), "{err}");
    let err = fails(vmkfstools(&[&"-c", &"1M"]));
    assert!(err.contains("missing the target"), "{err}");
    let err = fails(vmkfstools(&[&"-x", &"fixit", &d]));
    assert!(err.contains("check or repair"), "{err}");
    let err = fails(vmkfstools(&[]));
    assert!(err.contains("no operation"), "{err}");
    ok(vmkfstools(&[&"-c", &"1M", &d]));
    let err = fails(vmkfstools(&[&"-c", &"1M", &d]));
    assert!(err.contains("already exists"), "{err}");
    let junk = dir.path().join("junk.vmdk");
    std::fs::write(&junk, [0xffu8; 1000]).unwrap();
    let err = fails(vmkfstools(&[&"-i", &junk, &dir.path().join("y.vmdk")]));
    assert!(
        err.contains("junk.vmdk") && err.contains("not a VMDK"),
        "{err}"
    );
}

#[test]
fn check_and_repair_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("c.vmdk");
    ok(vmkfstools(&[&"-c", &"1M", &"-d", &"thin", &d]));
    let out = ok(vmkfstools(&[&"-x", &"check", &d]));
    assert!(out.contains("no errors"), "{out}");
    // Truncate the flat file: check reports, repair fixes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("c-flat.vmdk"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = fails(vmkfstools(&[&"-x", &"check", &d]));
    assert!(err.contains("problem"), "{err}");
    let out = ok(vmkfstools(&[&"-x", &"repair", &d]));
    assert!(out.contains("repaired"), "{out}");
    ok(vmkfstools(&[&"-x", &"check", &d]));
}

#[test]
fn punch_zero_frees_zero_blocks_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    for fmt in ["thin", "monosparse"] {
        let d = dir.path().join(format!("p-{fmt}.vmdk"));
        ok(vmkfstools(&[&"-c", &"4M", &"-d", &fmt, &d]));
        let zeros = dir.path().join("zeros.bin");
        std::fs::write(&zeros, vec![0u8; 2 << 20]).unwrap();
        let data = dir.path().join("data.bin");
        std::fs::write(&data, vec![0x5au8; 100_000]).unwrap();
        ok(vcb(&[&"disk", &"write", &d, &"0", &zeros]));
        ok(vcb(&[&"disk", &"write", &d, &"3M", &data]));
        let file_bytes = |d: &Path| -> u64 {
            let info: serde_json::Value =
                serde_json::from_str(&ok(vcb(&[&"disk", &"info", &d, &"--json"]))).unwrap();
            info["chain"][0]["file_bytes"].as_u64().unwrap()
        };
        let before = file_bytes(&d);
        let out = ok(vmkfstools(&[&"-K", &d]));
        assert!(out.contains("freed"), "{out}");
        let after = file_bytes(&d);
        assert!(
            after + (1 << 20) < before,
            "{fmt}: {before} -> {after} bytes on disk"
        );
        let back = vcb(&[&"disk", &"read", &d, &"3M", &"100000"]);
        assert!(ok(back).bytes().all(|b| b == 0x5a), "{fmt}: data kept");
        ok(vmkfstools(&[&"-x", &"check", &d]));
    }
}
