//! The demo's file-level part: the VM's second disk holds an MBR partition with an ext4
//! file system (made by `mkfs.ext4 -d` from a small tree), and the demo ends by restoring
//! one file out of the backup folder with `vcb files get`, without restoring a disk.

use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Size of the demo's data disk.
pub(super) const DATA_DISK_BYTES: u64 = 32 << 20;
const PART_START: u64 = 1 << 20;
/// The file the demo restores, and what it holds.
pub(super) const FILE: &str = "docs/quarterly-report.txt";

fn report() -> String {
    "Quarterly report of demo-vm\n".repeat(200)
}

/// The data disk's bytes, or `None` (with the reason printed) when mkfs.ext4 is missing.
pub(super) fn data_disk(work: &Path) -> Result<Option<Vec<u8>>> {
    let tree = work.join("guest-tree");
    std::fs::create_dir_all(tree.join("docs")).context("create the demo's guest tree")?;
    std::fs::create_dir_all(tree.join("etc"))?;
    std::fs::write(tree.join(FILE), report())?;
    std::fs::write(
        tree.join("docs/notes.md"),
        "# Notes\nrestore me with vcb files get\n",
    )?;
    std::fs::write(tree.join("etc/hostname"), "demo-vm\n")?;
    std::os::unix::fs::symlink("../docs/notes.md", tree.join("etc/motd"))?;
    let img = work.join("data.ext4");
    std::fs::File::create(&img)?.set_len(DATA_DISK_BYTES - PART_START)?;
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "demo-data", "-d"])
        .arg(&tree)
        .arg(&img)
        .output();
    let fs = match made {
        Ok(o) if o.status.success() => std::fs::read(&img)?,
        Ok(o) => {
            println!(
                "   (no file system on the data disk: mkfs.ext4 failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Ok(None);
        }
        Err(e) => {
            println!("   (no file system on the data disk: mkfs.ext4: {e}; Debian: e2fsprogs)");
            return Ok(None);
        }
    };
    std::fs::remove_dir_all(&tree).ok();
    std::fs::remove_file(&img).ok();
    let mut disk = vec![0u8; DATA_DISK_BYTES as usize];
    // A DOS partition table with one Linux partition from 1 MiB to the end.
    let entry = &mut disk[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&((PART_START / 512) as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(((DATA_DISK_BYTES - PART_START) / 512) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[PART_START as usize..].copy_from_slice(&fs);
    Ok(Some(disk))
}

/// Restore [`FILE`] from the backup folder `backup` into `to` and check it.
pub(super) fn restore_one(backup: &Path, to: &Path) -> Result<()> {
    let args = crate::cmd::files::GetArgs {
        source: backup.display().to_string(),
        paths: vec![format!("1/{FILE}")],
        to: to.to_path_buf(),
    };
    crate::cmd::files::get(&args)?;
    let name = Path::new(FILE).file_name().unwrap_or_default();
    let got = std::fs::read(to.join(name))
        .with_context(|| format!("read {}", to.join(name).display()))?;
    ensure!(
        got == report().as_bytes(),
        "the restored file differs from the guest's"
    );
    Ok(())
}
