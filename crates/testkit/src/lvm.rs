//! LVM2 volume groups on byte ranges of a disk image, made by lvm2's own tools: pvcreate
//! and vgcreate on loop devices, then `vgcfgrestore` of metadata with the logical volumes
//! written in (this kernel has no device-mapper, so LVs are never activated: tests place
//! file systems at the offsets the metadata gives).

use crate::tools::run;
use std::path::Path;
use std::process::Command;

/// A logical volume segment: `extents` extents from extent `start` of the LV, striped over
/// `stripes` (physical volume index, first extent there) in `stripe_kib` KiB chunks.
pub struct Segment {
    /// First extent of the LV.
    pub start: u64,
    /// Extents.
    pub extents: u64,
    /// (PV index, first physical extent).
    pub stripes: Vec<(usize, u64)>,
    /// Stripe size in KiB (ignored for one stripe).
    pub stripe_kib: u64,
}

/// Make volume group `vg` of one PV per `(start, len)` byte range of `disk`, with the
/// logical volumes `lvs`; returns each PV's first data byte on the disk and the extent size
/// in bytes.
pub fn make_vg(
    disk: &Path,
    vg: &str,
    pvs: &[(u64, u64)],
    lvs: &[(&str, Vec<Segment>)],
) -> (Vec<u64>, u64) {
    let etc = tempfile::tempdir().unwrap();
    let loops: Vec<String> = pvs
        .iter()
        .map(|(start, len)| {
            run(Command::new("losetup")
                .args([
                    "-f",
                    "--show",
                    "-o",
                    &start.to_string(),
                    "--sizelimit",
                    &len.to_string(),
                ])
                .arg(disk))
            .trim()
            .to_string()
        })
        .collect();
    let filter: Vec<String> = loops.iter().map(|l| format!("\"a|^{l}$|\"")).collect();
    std::fs::write(
        etc.path().join("lvm.conf"),
        format!(
            "devices {{ obtain_device_list_from_udev=0 filter=[{}, \"r|.*|\"] }}\nactivation {{ udev_sync=0 udev_rules=0 }}\nbackup {{ backup=0 archive=0 }}\n",
            filter.join(", ")
        ),
    )
    .unwrap();
    let lvm = |args: &[&str]| {
        run(Command::new(args[0])
            .args(&args[1..])
            .env("LVM_SYSTEM_DIR", etc.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    };
    let result = std::panic::catch_unwind(|| {
        for l in &loops {
            lvm(&["pvcreate", "-q", "-y", "--nolocking", l]);
        }
        let mut args = vec!["vgcreate", "-q", "--nolocking", "-s", "1m", vg];
        args.extend(loops.iter().map(String::as_str));
        lvm(&args);
        let meta = etc.path().join("meta");
        lvm(&[
            "vgcfgbackup",
            "-q",
            "--nolocking",
            "-f",
            meta.to_str().unwrap(),
            vg,
        ]);
        let text = std::fs::read_to_string(&meta).unwrap();
        let mut sections = String::from("\n\tlogical_volumes {\n");
        for (i, (name, segs)) in lvs.iter().enumerate() {
            sections.push_str(&format!("\t\t{name} {{\n\t\t\tid = \"lvlvlv-{i:04}-0000-0000-0000-0000-000000\"\n\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = {}\n", segs.len()));
            for (k, s) in segs.iter().enumerate() {
                let stripes: Vec<String> = s
                    .stripes
                    .iter()
                    .map(|(pv, pe)| format!("\"pv{pv}\", {pe}"))
                    .collect();
                let size = if s.stripes.len() > 1 {
                    format!("\t\t\t\tstripe_size = {}\n", s.stripe_kib * 2)
                } else {
                    String::new()
                };
                sections.push_str(&format!(
                    "\t\t\tsegment{} {{\n\t\t\t\tstart_extent = {}\n\t\t\t\textent_count = {}\n\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = {}\n{size}\t\t\t\tstripes = [{}]\n\t\t\t}}\n",
                    k + 1, s.start, s.extents, s.stripes.len(), stripes.join(", ")
                ));
            }
            sections.push_str("\t\t}\n");
        }
        sections.push_str("\t}\n");
        let end = text.trim_end().rfind('}').unwrap();
        let text = format!("{}{sections}{}", &text[..end], &text[end..]).replacen(
            "seqno = 1",
            "seqno = 2",
            1,
        );
        std::fs::write(&meta, &text).unwrap();
        lvm(&[
            "vgcfgrestore",
            "-q",
            "--nolocking",
            "-f",
            meta.to_str().unwrap(),
            vg,
        ]);
        let pe_start = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("pe_start = "))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 512;
        (
            pvs.iter().map(|(s, _)| s + pe_start).collect::<Vec<_>>(),
            1u64 << 20,
        )
    });
    for l in &loops {
        let _ = Command::new("losetup").args(["-d", l]).status();
    }
    result.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Write `img` into a striped area: chunk `k` of `stripe` bytes goes to stripe `k % n`.
pub fn write_striped(disk: &Path, img: &Path, stripe_starts: &[u64], stripe: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let data = std::fs::read(img).unwrap();
    let n = stripe_starts.len() as u64;
    for (k, chunk) in data.chunks(stripe as usize).enumerate() {
        let k = k as u64;
        let at = stripe_starts[(k % n) as usize] + (k / n) * stripe;
        std::os::unix::fs::FileExt::write_all_at(&f, chunk, at).unwrap();
    }
}
