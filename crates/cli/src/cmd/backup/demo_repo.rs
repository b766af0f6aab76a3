//! The repository part of `vcb demo`: the demo VM backed up twice into an encrypted
//! local repository with changed-block tracking on (the second backup reads and stores
//! only what changed), then its first point
//! restored elsewhere and checked byte for byte.

use super::demo::{compare, relocated_catalog, VM};
use super::render::Render;
use super::{backup_options, run_backup, run_restore, RemoteArgs};
use crate::tools::conf::ToolConf;
use anyhow::{ensure, Context, Result};
use backup::{ConflictPolicy, ExportFormat, RestoreOptions};
use std::path::{Path, PathBuf};

/// The demo repository's passphrase file, in the demo root.
pub(super) const PASSPHRASE_FILE: &str = "repository-passphrase";

/// Steps 6 to 9 of the demo; returns the repository's folder.
pub(super) fn run(
    host: &mut host::Host,
    root: &Path,
    vm: host::VmRef,
    disk: &Path,
    render: &mut Render,
) -> Result<PathBuf> {
    // The folder restore made a second VM of the same name: name this one by moref.
    let who = format!("moref:{vm}");
    let repo_dir = root.join("repository");
    let pass = root.join(PASSPHRASE_FILE);
    fsio::write_private(&pass, b"correct horse battery staple\n")?;
    let mut remote = RemoteArgs::default();
    remote.repo.password_file = Some(pass.clone());
    let spec = repo_dir.display().to_string();
    let access = crate::cmd::repo::access::RepoAccess::new(&spec, &remote);
    let repo = access.init(repo::InitOptions::default(), true)?;
    println!(
        "6. Created an encrypted repository (AES-256-GCM, argon2id key) at {} (vcb repo init)",
        repo_dir.display()
    );
    let opts = backup_options(ExportFormat::Split2Gb, false, &ToolConf::default());
    let target = format!("repo:{spec}");
    let backup_once = |host: &host::Host, render: &mut Render| {
        let local = backup::RemoteOptions::default();
        run_backup(host, &who, &target, &remote, &local, &opts, render)
    };
    host.lock_vm(vm, host::LockMode::Wait)?
        .set_change_tracking(true)?;
    println!("   Changed-block tracking on for {VM} (vcb vm ctk enable): later backups read only what changed");
    println!("7. First backup into the repository (vcbMounter -a {who} -r {target}):");
    backup_once(host, render)?;
    let first = repo.find_point(VM)?;
    let before = snapshot_copy(disk, root)?;
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::writable())?;
    d.write_at(
        20 << 20,
        b"A SECOND CHANGE, BETWEEN THE TWO REPOSITORY BACKUPS",
    )?;
    d.close()?;
    println!("8. Changed 1 block of the disk and backed up again: only that chunk is new:");
    backup_once(host, render)?;
    let second = repo.find_point(VM)?;
    ensure!(
        second.stats.new_bytes <= (4 << 20) + (64 << 10),
        "the second backup stored {} new bytes; expected one chunk",
        second.stats.new_bytes
    );
    ensure!(
        second.stats.read_bytes <= (4 << 20) + (64 << 10),
        "the second backup read {} bytes; change tracking should have limited it to one chunk",
        second.stats.read_bytes
    );
    println!(
        "   second point {} read {} from the disk and took {} over from the first",
        second.id,
        crate::output::human_bytes(second.stats.read_bytes),
        crate::output::human_bytes(second.stats.reused_bytes)
    );
    let alt = root.join("backups/catalog-from-repository");
    let folder = format!("{VM}-from-repository");
    relocated_catalog(
        first.catalog.as_bytes(),
        Path::new("point catalog"),
        &folder,
        &alt,
    )?;
    println!(
        "9. Restoring the first point to [datastore2] {folder}/ (vcbRestore -s repo:{spec}#{} -a {}):",
        first.id,
        alt.display()
    );
    let ropts = RestoreOptions {
        alternate_catalog: Some(super::read_alternate_catalog(&alt)?),
        policy: ConflictPolicy::Abort,
        ..RestoreOptions::default()
    };
    let src = format!("repo:{spec}#{}", first.id);
    run_restore(
        host,
        &src,
        &remote,
        &backup::RemoteOptions::default(),
        &ropts,
        render,
    )?;
    let restored = root.join(format!("volumes/datastore2/{folder}/{VM}.vmdk"));
    ensure!(
        compare(&restored, &before)?,
        "the disk restored from the repository differs from the disk at its backup"
    );
    std::fs::remove_file(&before).ok();
    println!("   Verified: the disk restored from the repository equals the disk at the first repository backup, byte for byte");
    Ok(repo_dir)
}

/// A raw copy of `disk` as it is now (to compare a restore against), in `root`.
fn snapshot_copy(disk: &Path, root: &Path) -> Result<PathBuf> {
    let copy = root.join("backups/disk-at-first-repository-backup.vmdk");
    let mut src = vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only())?;
    vmdk::convert(
        &mut src,
        &copy,
        &vmdk::CreateSpec::new(0, vmdk::DiskFormat::MonoSparse),
        &mut (),
    )
    .with_context(|| format!("copy {}", disk.display()))?;
    Ok(copy)
}
