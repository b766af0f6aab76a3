//! qemu interop (qemu-img and qemu-io read and write our deltas) and ignored measurements.

use super::tests::*;
use super::*;
use crate::extent::{BlockState, Extent};
use std::path::Path;
use std::process::{Command, Output};
use testkit::tools::require_tool;

// ---- qemu interop ----

/// Run `tool args` in `dir`; on failure dump everything needed to reproduce.
fn run(dir: &Path, tool: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn");
    if !out.status.success() {
        let listing: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        format!(
                            "{} {}",
                            e.file_name().to_string_lossy(),
                            e.metadata().map(|m| m.len()).unwrap_or(0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "command failed: {tool} {args:?}\ncwd: {}\nfiles: {listing:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

const PARENT_DESCRIPTOR: &str = "# Disk DescriptorFile
version=1
encoding=\"UTF-8\"
CID=aaaaaaaa
parentCID=ffffffff
isNativeSnapshot=\"no\"
createType=\"vmfs\"

# Extent description
RW 16384 VMFS \"p-flat.vmdk\"

# The Disk Data Base
#DDB

ddb.adapterType = \"lsilogic\"
ddb.geometry.cylinders = \"1\"
ddb.geometry.heads = \"255\"
ddb.geometry.sectors = \"63\"
";

const CHILD_DESCRIPTOR: &str = "# Disk DescriptorFile
version=1
encoding=\"UTF-8\"
CID=bbbbbbbb
parentCID=aaaaaaaa
isNativeSnapshot=\"no\"
createType=\"vmfsSparse\"
parentFileNameHint=\"p.vmdk\"
# Extent description
RW 16384 VMFSSPARSE \"c-delta.vmdk\"

# The Disk Data Base
#DDB

ddb.longContentID = \"0123456789abcdef0123456789abcdef\"
";

fn qemu_convert(dir: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(dir.join("out.raw"));
    run(
        dir,
        "qemu-img",
        &["convert", "-f", "vmdk", "-O", "raw", "c.vmdk", "out.raw"],
    );
    std::fs::read(dir.join("out.raw")).expect("read out.raw")
}

fn qemu_round_trip(gran: u64) {
    const CAP: u64 = 8 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let delta = d.join("c-delta.vmdk");
    let parent = noise(0xfeed + gran, small(CAP));
    std::fs::write(d.join("p-flat.vmdk"), &parent).expect("write parent");
    std::fs::write(d.join("p.vmdk"), PARENT_DESCRIPTOR).expect("write parent descriptor");
    create(&delta, CAP, gran).expect("create");
    std::fs::write(d.join("c.vmdk"), CHILD_DESCRIPTOR).expect("write child descriptor");

    // vcb writes; qemu reads. Stay clear of [0, 8K) and [1M - 8K, 1M + 72K): qemu writes there.
    let mut model = parent.clone();
    let mut ext = CowdExtent::open(&delta, CAP, true).expect("open");
    let mut x = noise(gran, 8 * 40);
    for (i, w) in x.chunks_exact_mut(8).enumerate() {
        let r = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let len = 1 + r % 70_000;
        let off = (8192 + (r >> 20) % (CAP - 8192 - len)).min(CAP - len);
        if off < MIB + 73_728 && off + len > MIB - 8192 {
            continue;
        }
        let data = noise(r ^ i as u64, small(len));
        ext.write_at(off, &data, &mut VecBacking(&parent))
            .expect("write");
        model[small(off)..small(off + len)].copy_from_slice(&data);
    }
    // One write across the GT 0 / GT 1 boundary at 2 MiB (512-byte grains).
    let data = noise(77, 100_000);
    ext.write_at(2 * MIB - 50_000, &data, &mut VecBacking(&parent))
        .expect("write");
    model[small(2 * MIB - 50_000)..small(2 * MIB + 50_000)].copy_from_slice(&data);
    ext.close().expect("close");
    drop(ext);

    run(d, "qemu-img", &["check", "-f", "vmdk", "c.vmdk"]);
    assert_same("qemu-img convert of vcb's delta", &qemu_convert(d), &model);

    // qemu writes; vcb reads.
    if !require_tool("qemu-io") {
        return;
    }
    run(
        d,
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0xab 1M 64k", "c.vmdk"],
    );
    run(
        d,
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0xcd 3000 1000", "c.vmdk"],
    );
    model[small(MIB)..small(MIB + 65_536)].fill(0xab);
    model[3000..4000].fill(0xcd);
    let mut ext = CowdExtent::open(&delta, CAP, false).expect("open after qemu");
    assert_same(
        "vcb read of qemu's writes",
        &chain_read(&mut ext, &parent),
        &model,
    );
    drop(ext);
    let report = check(&delta, false).expect("check");
    assert!(
        report.problems.iter().any(|p| p.contains("freeSector")),
        "qemu leaves freeSector stale: {report:?}"
    );
    assert_eq!(report.problems.len(), 1, "{report:?}");

    // vcb writes again after qemu: appends past qemu's grains, both stay intact.
    let mut ext = CowdExtent::open(&delta, CAP, true).expect("open writable after qemu");
    let data = noise(99, 200_000);
    ext.write_at(6 * MIB, &data, &mut VecBacking(&parent))
        .expect("write");
    model[small(6 * MIB)..small(6 * MIB + 200_000)].copy_from_slice(&data);
    ext.close().expect("close");
    drop(ext);
    assert!(check(&delta, false).expect("check").is_clean());
    run(d, "qemu-img", &["check", "-f", "vmdk", "c.vmdk"]);
    assert_same(
        "qemu-img convert after both wrote",
        &qemu_convert(d),
        &model,
    );
}

#[test]
fn qemu_reads_our_delta_and_we_read_qemus_writes() {
    if !require_tool("qemu-img") {
        return;
    }
    for gran in [ESX_GRANULARITY_SECTORS, 8, 128] {
        qemu_round_trip(gran);
    }
}

// ---- measurement ----

/// map() over an empty, large delta: every preallocated GT is read (as a hole).
/// Run: `cargo test -p vmdk --lib cowd -- --ignored --nocapture measure`.
#[test]
#[ignore = "measurement, prints timings"]
#[allow(clippy::print_stderr)]
fn measure_map_of_empty_256gib_delta() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big-delta.vmdk");
    let cap = 256 << 30;
    create(&path, cap, ESX_GRANULARITY_SECTORS).expect("create");
    let mut ext = CowdExtent::open(&path, cap, false).expect("open");
    let t = std::time::Instant::now();
    assert_eq!(
        ext.map(0, cap).expect("map"),
        (BlockState::Unallocated, cap)
    );
    let map_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = std::time::Instant::now();
    assert!(check(&path, false).expect("check").is_clean());
    eprintln!(
        "check of the same: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    eprintln!(
        "map of an empty 256 GiB delta (131072 preallocated GTs): {map_ms:.1} ms, file {} MiB logical, {} KiB allocated",
        std::fs::metadata(&path).expect("stat").len() >> 20,
        ext.allocated_file_bytes() >> 10
    );
}

/// 64 MiB through map + read_at for several grain sizes and layouts.
/// Run: `cargo test -p vmdk --lib cowd -- --ignored --nocapture measure`.
#[test]
#[ignore = "measurement, prints timings"]
#[allow(clippy::print_stderr)]
fn measure_sequential_read_64mib() {
    const CAP: u64 = 64 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = noise(5, small(CAP));
    for gran in [1u64, 8, 128] {
        for scattered in [false, true] {
            let path = dir.path().join(format!("b{gran}{scattered}-delta.vmdk"));
            create(&path, CAP, gran).expect("create");
            let mut ext = CowdExtent::open(&path, CAP, true).expect("open");
            let gb = gran * SECTOR;
            let t = std::time::Instant::now();
            if scattered {
                // One grain per write, last grain first: no two grains adjacent in the file.
                for g in (0..CAP / gb).rev() {
                    let r = small(g * gb)..small((g + 1) * gb);
                    ext.write_at(g * gb, &data[r], &mut crate::extent::ZeroBacking)
                        .expect("write");
                }
            } else {
                for chunk in 0..CAP / MIB {
                    let r = small(chunk * MIB)..small((chunk + 1) * MIB);
                    ext.write_at(chunk * MIB, &data[r], &mut crate::extent::ZeroBacking)
                        .expect("write");
                }
            }
            ext.close().expect("close");
            let write = t.elapsed();
            drop(ext);
            let mut ext = CowdExtent::open(&path, CAP, false).expect("open");
            let t = std::time::Instant::now();
            let mut buf = vec![0u8; small(MIB)];
            let mut off = 0;
            while off < CAP {
                let (state, n) = ext.map(off, MIB.min(CAP - off)).expect("map");
                assert_eq!(state, BlockState::Data);
                ext.read_at(off, &mut buf[..small(n)]).expect("read");
                assert!(buf[..small(n)] == data[small(off)..small(off + n)]);
                off += n;
            }
            let read = t.elapsed();
            eprintln!(
                "granularity {gran:>3} sectors, {:<10} write {:>7.1} ms, map+read 64 MiB {:>7.1} ms ({:.0} MiB/s), file {} KiB",
                if scattered { "scattered" } else { "sequential" },
                write.as_secs_f64() * 1e3,
                read.as_secs_f64() * 1e3,
                64.0 / read.as_secs_f64(),
                std::fs::metadata(&path).expect("stat").len() / 1024
            );
        }
    }
}
