//! `vcb demo`: the main job end to end on a throw-away host, in seconds.
//!
//! Creates a host with two datastores, a VM whose disk holds recognisable text, backs it
//! up with vcbMounter's code, changes the VM, restores the backup onto the second
//! datastore under a new folder and resource pool (through an edited copy of the
//! catalog, as the seed describes), and checks the restored disk byte for byte; then
//! restores one file of the guest's ext4 data disk from the backup (`vcb files get`),
//! and backs the VM up once more from a backup proxy through the host agent.

use super::render::Render;
use super::{backup_options, run_backup, run_restore};
use crate::tools::conf::ToolConf;
use anyhow::{bail, ensure, Context, Result};
use backup::{ConflictPolicy, ExportFormat, RestoreOptions};
use clap::Args;
use std::path::{Path, PathBuf};

/// `vcb demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the demo host (replaced when it holds an earlier demo).
    #[arg(long, value_name = "DIR", default_value = "vcb-demo")]
    pub root: PathBuf,
}

/// Marks a folder as made by `vcb demo`, so a rerun may replace it.
const MARKER: &str = ".vcb-demo";
pub(super) const VM: &str = "demo-vm";
const DISK_BYTES: u64 = 64 << 20;
/// Recognisable blocks are written every this many bytes.
const STRIDE: u64 = 4 << 20;

/// Run the demo.
pub fn demo(a: DemoArgs) -> Result<()> {
    let root = std::path::absolute(&a.root).context("resolve --root")?;
    prepare(&root)?;
    let mut host = host::Host::init(&root, "demo-host")?;
    let ds2 = root.join("volumes/datastore2");
    std::fs::create_dir_all(&ds2).with_context(|| format!("create {}", ds2.display()))?;
    host.add_datastore("datastore2", &ds2)?;
    host.create_container(host::ContainerKind::Folder, "/Restored")?;
    host.create_container(host::ContainerKind::Pool, "/Demo")?;
    let mut render = Render::new(3);

    let mut spec = host::VmSpec::new(VM);
    spec.disks.push(host::DiskSource::New {
        capacity_bytes: DISK_BYTES,
    });
    let data = super::demo_files::data_disk(&root)?;
    if data.is_some() {
        spec.disks.push(host::DiskSource::New {
            capacity_bytes: super::demo_files::DATA_DISK_BYTES,
        });
    }
    spec.format = vmdk::DiskFormat::Thin;
    spec.ip = Some("10.17.5.37".into());
    let vm = host.create_vm(&spec, &mut ())?;
    let mut disks = vm.disks(&host)?;
    let disk = disks.remove(0).path;
    write_content(&disk)?;
    println!(
        "1. Created host {} and VM {VM} with a 64 MiB thin disk holding recognisable text:",
        root.display()
    );
    println!("   {}", disk.display());
    if let (Some(bytes), Some(d)) = (&data, disks.first()) {
        let mut w = vmdk::Disk::open(&d.path, &vmdk::OpenOptions::writable())?;
        w.write_at(0, bytes)?;
        w.close()?;
        println!("   and a 32 MiB data disk with an MBR partition holding ext4 (mkfs.ext4 -d):");
        println!("   {}", d.path.display());
    }

    let backups = root.join("backups");
    std::fs::create_dir_all(&backups).with_context(|| format!("create {}", backups.display()))?;
    let dest = backups.join(VM);
    println!(
        "2. Backing up {VM} (vcbMounter -a name:{VM} -r {}):",
        dest.display()
    );
    let opts = backup_options(ExportFormat::Split2Gb, false, &ToolConf::default());
    run_backup(
        &host,
        &format!("name:{VM}"),
        &dest.display().to_string(),
        &super::RemoteArgs::default(),
        &backup::RemoteOptions::default(),
        &opts,
        &mut render,
    )?;

    let mut d = vmdk::Disk::open(&disk, &vmdk::OpenOptions::writable())?;
    d.write_at(0, b"CHANGED AFTER THE BACKUP")?;
    d.close()?;
    println!("3. Changed the VM's disk after the backup");

    let alt = backups.join("catalog-restore");
    write_alternate_catalog(&dest.join(backup::CATALOG_NAME), &alt)?;
    println!("4. Restoring to [datastore2] {VM}-restored/ in folder /Restored, pool /Demo (vcbRestore -s {} -a {}):", dest.display(), alt.display());
    let ropts = RestoreOptions {
        alternate_catalog: Some(super::read_alternate_catalog(&alt)?),
        policy: ConflictPolicy::Abort,
        ..RestoreOptions::default()
    };
    run_restore(
        &mut host,
        &dest.display().to_string(),
        &super::RemoteArgs::default(),
        &backup::RemoteOptions::default(),
        &ropts,
        &mut render,
    )?;

    let restored = ds2.join(format!("{VM}-restored/{VM}.vmdk"));
    let backup_disk = dest.join(format!("scsi0-0-0-{VM}.vmdk"));
    let same = compare(&restored, &backup_disk)?;
    ensure!(same, "the restored disk differs from the backup");
    let head = read_head(&restored)?;
    ensure!(
        head.starts_with(&block_text(0)),
        "the restored disk does not start with the content written before the backup"
    );
    println!("5. Verified: the restored disk equals the backup byte for byte ({} MiB) and holds the content from before the change", DISK_BYTES >> 20);
    let repo_dir = super::demo_repo::run(&mut host, &root, vm.moref, &disk, &mut render)?;
    let files_to = root.join("restored-files");
    if data.is_some() {
        println!("10. Restoring one file from the backup, no disk restored (vcb files get {} 1/{} --to {}):", dest.display(), super::demo_files::FILE, files_to.display());
        super::demo_files::restore_one(&dest, &files_to)?;
        println!("   Verified: the restored file equals the guest's");
    }
    let proxy_dest = super::demo_proxy::run(&root, &backups, VM, vm.moref, &disk)?;

    println!();
    println!("Where things are:");
    println!("  host           {}", root.display());
    println!("  original VM    {}", vm.dir.display());
    println!(
        "  backup         {}  (catalog, .vmx, scsi0-0-0-{VM}.vmdk ...)",
        dest.display()
    );
    println!("  alt. catalog   {}", alt.display());
    if data.is_some() {
        println!("  restored file  {}", files_to.display());
    }
    println!("  proxy backup   {}", proxy_dest.display());
    println!(
        "  repository     {}  (passphrase in {})",
        repo_dir.display(),
        root.join(super::demo_repo::PASSPHRASE_FILE).display()
    );
    println!(
        "  restored VM    {}",
        restored.parent().unwrap_or(&ds2).display()
    );
    println!(
        "Try: cargo run --bin vcbRestore -- --root {} -s {} -l prompt",
        root.display(),
        dest.display()
    );
    Ok(())
}

/// Make `root` an empty folder for the demo, replacing an earlier demo's.
fn prepare(root: &Path) -> Result<()> {
    if root.exists() {
        let empty = std::fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            if !root.join(MARKER).exists() {
                bail!(
                    "{} exists and was not made by `vcb demo`: choose another --root",
                    root.display()
                );
            }
            std::fs::remove_dir_all(root)
                .with_context(|| format!("remove earlier demo {}", root.display()))?;
        }
    }
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    std::fs::write(
        root.join(MARKER),
        "made by vcb demo; removed by the next `vcb demo`\n",
    )
    .with_context(|| format!("write {}", root.join(MARKER).display()))
}

fn block_text(i: u64) -> Vec<u8> {
    format!("vcb demo: block {i} of {VM}, written before the backup. ")
        .repeat(64)
        .into_bytes()
}

fn write_content(disk: &Path) -> Result<()> {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::writable())?;
    for i in 0..DISK_BYTES / STRIDE {
        d.write_at(i * STRIDE, &block_text(i))?;
    }
    d.close()?;
    Ok(())
}

fn read_head(disk: &Path) -> Result<Vec<u8>> {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only())?;
    let mut buf = vec![0u8; block_text(0).len()];
    d.read_at(0, &mut buf)?;
    Ok(buf)
}

/// Whether two disks read the same, byte for byte.
pub(super) fn compare(a: &Path, b: &Path) -> Result<bool> {
    let mut da = vmdk::Disk::open(a, &vmdk::OpenOptions::read_only())?;
    let mut db = vmdk::Disk::open(b, &vmdk::OpenOptions::read_only())?;
    if da.capacity() != db.capacity() {
        return Ok(false);
    }
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < da.capacity() {
        let n = (da.capacity() - pos).min(ba.len() as u64) as usize;
        da.read_at(pos, &mut ba[..n])?;
        db.read_at(pos, &mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// The seed's "copy the catalog and edit it": datastore paths to datastore2 under a new
/// VM folder, folder /Restored, pool /Demo.
fn write_alternate_catalog(original: &Path, alt: &Path) -> Result<()> {
    let bytes = std::fs::read(original).with_context(|| format!("read {}", original.display()))?;
    relocated_catalog(&bytes, original, &format!("{VM}-restored"), alt)
}

/// `catalog` (read from `origin`) moved to `[datastore2] <folder>/`, folder /Restored,
/// pool /Demo, written to `alt`.
pub(super) fn relocated_catalog(
    catalog: &[u8],
    origin: &Path,
    folder: &str,
    alt: &Path,
) -> Result<()> {
    let mut c = backup::restore::parse_catalog(catalog, origin)?;
    let folder = vmx::DatastorePath::new("datastore2", &format!("{folder}/"))?;
    c.config_vmx = Some(folder.join(&format!("{VM}.vmx"))?);
    c.config_suspend_dir = Some(folder.clone());
    c.config_log_dir = Some(folder.clone());
    for d in &mut c.disks {
        if let Some(name) = d
            .diskname
            .as_ref()
            .and_then(|p| p.file_name().map(str::to_owned))
        {
            d.diskname = Some(folder.join(&name)?);
        }
    }
    c.folder_path = Some("/ha-datacenter/vm/Restored".into());
    c.resource_pool = Some("/ha-datacenter/host/demo-host/Resources/Demo".into());
    let text = c.to_dict()?.to_string();
    std::fs::write(alt, text).with_context(|| format!("write {}", alt.display()))
}
