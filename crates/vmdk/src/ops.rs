//! Whole-disk operations: commit, extend, rename, delete, inflate, punch zeros.

use crate::create::{split_name, CreateSpec, DiskFormat, PROVISIONING_KEY};
use crate::descriptor::{CreateType, ExtentType};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::extent::BlockState;
use crate::fileio::{is_zero, PathFile};
use crate::link::{read_descriptor, write_descriptor, Link, OpenOptions};
use crate::progress::Progress;
use fsio::sync_dir;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Commit the top link of the chain at `child` into its parent, then delete the child's files.
///
/// `above`, when given, is a disk whose parent is `child`: it is re-pointed at the parent
/// (parentFileNameHint and parentCID). The parent keeps its CID, so at every moment of a
/// crash the chain still reads the same: first the parent holds the child's data under
/// the child, then `above` skips the child, then the child goes. Returns the parent's path.
///
/// The caller guarantees the parent has no other children (it is written).
pub fn commit(
    child: &Path,
    above: Option<&Path>,
    opts: &OpenOptions,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let mut src = Disk::open(
        child,
        &OpenOptions {
            writable: false,
            ..opts.clone()
        },
    )?;
    let Some(parent_link) = src.links().get(1) else {
        return Err(Error::InvalidArgument(format!(
            "{}: has no parent to commit into",
            child.display()
        )));
    };
    let parent_path = parent_link.path().to_path_buf();
    if let Some(f) = crate::busy::locked_file(&parent_path)? {
        return Err(Error::DiskBusy {
            path: parent_path,
            reason: format!(
                "cannot commit into it: {} is open in a running VM",
                f.display()
            ),
        });
    }
    let me = std::fs::canonicalize(child).map_err(|e| Error::io(child, "resolve", e))?;
    if let Some(other) = crate::busy::children_in_folder(&parent_path)?
        .into_iter()
        .find(|c| std::fs::canonicalize(c).ok().as_ref() != Some(&me))
    {
        return Err(Error::DiskBusy {
            path: parent_path,
            reason: format!(
                "cannot commit into it: {} is another child of it (a shared parent is never written)",
                other.display()
            ),
        });
    }
    let mut dst = Disk::open(
        &parent_path,
        &OpenOptions {
            writable: true,
            ..opts.clone()
        },
    )?;
    dst.keep_cid();
    let capacity = src.capacity();
    progress.start(capacity);
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    while pos < capacity {
        let run = src.map_top(pos, buf.len() as u64)?;
        let n = usize::try_from(run.len).unwrap_or(buf.len()).min(buf.len());
        match run.state {
            BlockState::Data => {
                src.read_at(pos, &mut buf[..n])?;
                dst.write_at(pos, &buf[..n])?;
            }
            BlockState::Zero => zero_range(&mut dst, pos, n as u64, &mut buf)?,
            BlockState::Unallocated => {}
        }
        pos += n as u64;
        if progress.advance(n as u64) == ControlFlow::Break(()) {
            return Err(Error::Cancelled);
        }
    }
    dst.close()?;
    if let Some(above) = above {
        let (mut d, store) = read_descriptor(above)?;
        let (pd, _) = read_descriptor(&parent_path)?;
        d.parent_cid = pd.cid;
        d.parent_file_name_hint = Some(crate::create::relative_hint(above, &parent_path)?);
        write_descriptor(above, store, &d)?;
    }
    let files = src.links()[0].files();
    drop(src);
    remove_files(&files)?;
    progress.finish();
    Ok(parent_path)
}

/// Make `[offset, offset+len)` read as zeros in `disk`, writing only where it does not already.
fn zero_range(disk: &mut Disk, offset: u64, len: u64, buf: &mut [u8]) -> Result<()> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let run = disk.map(pos, end - pos)?;
        if run.state == BlockState::Data {
            let n = usize::try_from(run.len).unwrap_or(buf.len()).min(buf.len());
            buf[..n].fill(0);
            disk.write_at(pos, &buf[..n])?;
            pos += n as u64;
        } else {
            pos += run.len;
        }
    }
    Ok(())
}

fn remove_files(files: &[PathBuf]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(f, "remove", e)),
        }
        let dir = f
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    Ok(dirs.iter().try_for_each(|d| sync_dir(d))?)
}

/// The files of the disk at `path` (its own link only: descriptor and extents).
pub fn link_files(path: &Path) -> Result<Vec<PathBuf>> {
    let (d, store) = read_descriptor(path)?;
    let mut files = vec![path.to_path_buf()];
    if store == crate::link::DescriptorStore::Embedded {
        return Ok(files);
    }
    for e in &d.extents {
        if let Some(name) = &e.file {
            let f = crate::confine::resolve_extent(path, e.kind, name, &OpenOptions::default())?;
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    Ok(files)
}

/// Delete a disk: its descriptor and every extent file (never its parents; a device behind
/// a mapping file is not touched, only the mapping).
/// The caller makes sure nothing uses the disk (the host layer deletes the redo log a
/// live commit just merged while QEMU still closes it); tools check with
/// [`refuse_busy`](crate::refuse_busy) first.
pub fn delete(path: &Path) -> Result<()> {
    remove_files(&link_files(path)?)?;
    crate::ctk::forget(path)
}

/// Rename a disk and its extent files, rewriting its descriptor. Extents whose names start
/// with the old base name get the new one (`old-flat.vmdk` → `new-flat.vmdk`).
///
/// Crash-safe: a one-file disk (embedded descriptor) is renamed in one step; a disk with
/// a descriptor file is swapped under a journal (see [`crate::replace`]): its extents are
/// hard-linked under the new names, a descriptor naming them is written, and the old
/// names go, so a crash leaves the disk under the old name or the new one, never half.
/// A disk with separate extent files is renamed within its folder only.
pub fn rename(old: &Path, new: &Path) -> Result<()> {
    crate::busy::refuse_busy(old, "rename")?;
    // Tracking names the link it belongs to: a renamed disk starts untracked.
    crate::ctk::forget(old)?;
    let (old_dir, old_stem) = split_name(old)?;
    let (new_dir, new_stem) = split_name(new)?;
    if new.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists {
            path: new.to_path_buf(),
        });
    }
    let (mut d, store) = read_descriptor(old)?;
    if store == crate::link::DescriptorStore::Embedded {
        // One file; the name inside it is not used by any reader.
        fsio::rename_noreplace(old, new).map_err(|e| match e {
            fsio::Error::Exists { path } => Error::AlreadyExists { path },
            e => e.into(),
        })?;
        sync_dir(&new_dir)?;
        if crate::confine::canonical_dir(old)? != crate::confine::canonical_dir(new)? {
            sync_dir(&old_dir)?;
        }
        return Ok(());
    }
    if crate::confine::canonical_dir(old)? != crate::confine::canonical_dir(new)? {
        return Err(Error::unsupported(
            old,
            "a disk with separate extent files is renamed within its folder only (copy it with -i to move it)",
        ));
    }
    let _lock = crate::replace::FolderLock::take(&crate::confine::canonical_dir(new)?, true)?;
    // Every staged file (links, descriptor) starts with one hidden prefix, recorded
    // before the first is made.
    let prefix = new_dir.join(format!(
        ".{new_stem}.vcb-rename-{:08x}",
        rand::random::<u32>()
    ));
    let staging = crate::replace::begin_staging(new, std::slice::from_ref(&prefix))?;
    let mut swap = fsio::swap::Swap::new(&crate::replace::journal_of(new));
    let mut staged = Vec::new();
    let result = (|| {
        for e in d.extents.iter_mut() {
            let Some(name) = e.file.clone() else { continue };
            let from = crate::confine::resolve_extent(old, e.kind, &name, &OpenOptions::default())?;
            let new_name = match name.strip_prefix(&old_stem) {
                Some(rest) => format!("{new_stem}{rest}"),
                None => name.clone(),
            };
            let to = new_dir.join(&new_name);
            if to.symlink_metadata().is_ok() && from != to {
                return Err(Error::AlreadyExists { path: to });
            }
            let link = PathBuf::from(format!("{}-{}", prefix.display(), staged.len()));
            std::fs::hard_link(&from, &link).map_err(|e| Error::io(&from, "link", e))?;
            staged.push(link.clone());
            swap.replace(&to, &link);
            if from != to {
                swap.remove(&from);
            }
            e.file = Some(new_name);
        }
        let desc = PathBuf::from(format!("{}-descriptor", prefix.display()));
        fsio::write_atomic(&desc, d.to_text().as_bytes())?;
        staged.push(desc.clone());
        swap.replace(new, &desc);
        swap.remove(old);
        Ok(())
    })();
    if let Err(e) = result {
        for f in &staged {
            let _ = std::fs::remove_file(f);
        }
        let _ = staging.done();
        return Err(e);
    }
    swap.commit()?;
    Ok(staging.done()?)
}

fn refuse_children_and_chains(
    path: &Path,
    d: &crate::descriptor::Descriptor,
    what: &str,
) -> Result<()> {
    if d.has_parent() {
        return Err(Error::unsupported(
            path,
            format!("cannot {what} a disk that has a parent (a snapshot redo log)"),
        ));
    }
    Ok(())
}

/// Grow a disk to `new_capacity` bytes (never shrink). Flat layouts grow in place; sparse
/// ones are rewritten into a larger disk of the same format which then replaces the old.
pub fn extend(path: &Path, new_capacity: u64, progress: &mut dyn Progress) -> Result<()> {
    crate::busy::refuse_busy(path, "extend")?;
    let (mut d, store) = read_descriptor(path)?;
    refuse_children_and_chains(path, &d, "extend")?;
    let old = d.capacity_bytes();
    if !new_capacity.is_multiple_of(512) {
        return Err(Error::InvalidArgument(format!(
            "new size {new_capacity} is not a multiple of 512 bytes"
        )));
    }
    if new_capacity < old {
        return Err(Error::InvalidArgument(format!(
            "{}: new size {new_capacity} is smaller than the current {old} bytes: disks are never shrunk",
            path.display()
        )));
    }
    if new_capacity > crate::magic::MAX_CAPACITY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "new size {new_capacity} exceeds the 64 TiB limit"
        )));
    }
    if new_capacity == old {
        return Ok(());
    }
    let format = DiskFormat::of_descriptor(&d).ok_or_else(|| {
        Error::unsupported(path, format!("cannot extend a {} disk", d.create_type))
    })?;
    match format {
        DiskFormat::ZeroedThick
        | DiskFormat::EagerZeroedThick
        | DiskFormat::Thin
        | DiskFormat::MonoFlat
            if d.extents.len() == 1 =>
        {
            let name = d.extents[0].file.clone().unwrap_or_default();
            let flat =
                crate::link::resolve_name(path, &name, "extent", &crate::OpenOptions::default())?;
            let f = PathFile::open(&flat, true)?;
            let base = d.extents[0].offset_sectors.saturating_mul(512);
            match format {
                DiskFormat::ZeroedThick => {
                    f.set_len(base + new_capacity)?;
                    crate::flat::preallocate(&f, base + new_capacity)?
                }
                DiskFormat::EagerZeroedThick => {
                    let zeros = vec![0u8; 1 << 20];
                    let mut pos = base + old;
                    while pos < base + new_capacity {
                        let n = (base + new_capacity - pos).min(zeros.len() as u64);
                        f.write_all_at(&zeros[..n as usize], pos)?;
                        pos += n;
                    }
                }
                _ => f.set_len(base + new_capacity)?,
            }
            f.sync_all()?;
            d.extents[0].sectors = new_capacity / 512;
            update_geometry(&mut d, new_capacity);
            write_descriptor(path, store, &d)
        }
        _ => rewrite_as(
            path,
            &CreateSpec {
                capacity_bytes: new_capacity,
                ..spec_of(&d, format)
            },
            progress,
        ),
    }
}

fn spec_of(d: &crate::descriptor::Descriptor, format: DiskFormat) -> CreateSpec {
    let adapter = d
        .ddb_value("ddb.adapterType")
        .and_then(|a| crate::create::AdapterType::parse(a).ok())
        .unwrap_or_default();
    CreateSpec {
        capacity_bytes: d.capacity_bytes(),
        format,
        adapter,
        extra_ddb: Vec::new(),
    }
}

fn update_geometry(d: &mut crate::descriptor::Descriptor, capacity: u64) {
    let heads = d
        .ddb_value("ddb.geometry.heads")
        .and_then(|h| h.parse::<u64>().ok())
        .filter(|&h| h > 0)
        .unwrap_or(255);
    let sectors = d
        .ddb_value("ddb.geometry.sectors")
        .and_then(|h| h.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(63);
    let cylinders = (capacity / 512 / (heads * sectors)).clamp(1, 65535);
    d.set_ddb("ddb.geometry.cylinders", cylinders.to_string());
}

/// Replace the disk at `path` by a converted copy made per `spec` (same name afterwards):
/// the copy is built under a staged name and swapped in under a journal, so a crash
/// leaves the old disk or the new one (see [`crate::replace`]).
fn rewrite_as(path: &Path, spec: &CreateSpec, progress: &mut dyn Progress) -> Result<()> {
    let staged = crate::replace::staged_name(path)?;
    let mut src = Disk::open(path, &OpenOptions::read_only())?;
    let _lock = crate::replace::FolderLock::take(&crate::confine::canonical_dir(path)?, true)?;
    let staging = crate::replace::begin_staging(path, &[crate::replace::staged_prefix(&staged)])?;
    if let Err(e) = crate::convert::convert(&mut src, &staged, spec, progress) {
        if staged.symlink_metadata().is_ok() {
            let _ = delete(&staged);
        }
        let _ = staging.done();
        return Err(e);
    }
    drop(src);
    crate::replace::replace_locked(path, &staged)?;
    Ok(staging.done()?)
}

/// Turn a thin disk into an eagerzeroedthick one: every hole is written with zeros.
pub fn inflate(path: &Path, progress: &mut dyn Progress) -> Result<()> {
    crate::busy::refuse_busy(path, "inflate")?;
    let (mut d, store) = read_descriptor(path)?;
    let format = DiskFormat::of_descriptor(&d);
    if !matches!(
        format,
        Some(DiskFormat::Thin | DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick)
    ) {
        return Err(Error::unsupported(
            path,
            format!("inflate works on vmfs flat disks, not {}", d.create_type),
        ));
    }
    let mut link = Link::open(path, true, &OpenOptions::writable())?;
    let capacity = link.capacity();
    progress.start(capacity);
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < capacity {
        let (state, len) = link.map(pos, zeros.len() as u64)?;
        if state != BlockState::Data {
            link.write_extent(pos, &zeros[..len as usize], &mut crate::extent::ZeroBacking)?;
        }
        pos += len;
        if progress.advance(len) == ControlFlow::Break(()) {
            link.flush()?;
            return Err(Error::Cancelled);
        }
    }
    link.close()?;
    d.ddb
        .retain(|(k, _)| !k.eq_ignore_ascii_case("ddb.thinProvisioned"));
    d.set_ddb(PROVISIONING_KEY, "eagerzeroedthick");
    write_descriptor(path, store, &d)?;
    progress.finish();
    Ok(())
}

/// Deallocate all-zero blocks. Flat files get holes punched (64 KiB granularity); a sparse
/// disk without a parent is rewritten compacted. Returns the bytes freed on the host.
pub fn punch_zero(path: &Path, progress: &mut dyn Progress) -> Result<u64> {
    crate::busy::refuse_busy(path, "punch zeros in")?;
    let (d, _) = read_descriptor(path)?;
    refuse_children_and_chains(path, &d, "punch zeros in")?;
    let before = Disk::open(path, &OpenOptions::read_only())?.links()[0].allocated_file_bytes();
    let flat = d
        .extents
        .iter()
        .all(|e| matches!(e.kind, ExtentType::Flat | ExtentType::Vmfs));
    if flat {
        let mut link = Link::open(path, false, &OpenOptions::read_only())?;
        let extents = open_flat_extents(path, &d)?;
        let capacity = link.capacity();
        progress.start(capacity);
        let block = 64u64 << 10;
        let mut buf = vec![0u8; block as usize];
        let mut pos = 0;
        while pos < capacity {
            let (state, len) = link.map(pos, block - pos % block)?;
            if state == BlockState::Data {
                let n = len as usize;
                link.read_data(pos, &mut buf[..n])?;
                if is_zero(&buf[..n]) {
                    punch_in_extents(&extents, pos, len)?;
                }
            }
            pos += len;
            if progress.advance(len) == ControlFlow::Break(()) {
                return Err(Error::Cancelled);
            }
        }
        progress.finish();
    } else {
        let format = DiskFormat::of_descriptor(&d).ok_or_else(|| {
            Error::unsupported(
                path,
                format!("cannot punch zeros in a {} disk", d.create_type),
            )
        })?;
        if d.create_type == CreateType::StreamOptimized {
            return Err(Error::unsupported(
                path,
                "streamOptimized disks are write-once",
            ));
        }
        rewrite_as(path, &spec_of(&d, format), progress)?;
    }
    let after = Disk::open(path, &OpenOptions::read_only())?.links()[0].allocated_file_bytes();
    Ok(before.saturating_sub(after))
}

/// A flat extent opened for punching: its disk range and where it starts in its file.
struct FlatFile {
    disk_start: u64,
    len: u64,
    file_offset: u64,
    file: PathFile,
}

/// Open every extent file of a flat descriptor once, writable, for hole punching.
fn open_flat_extents(path: &Path, d: &crate::descriptor::Descriptor) -> Result<Vec<FlatFile>> {
    let mut out = Vec::with_capacity(d.extents.len());
    let mut disk_start = 0u64;
    for e in &d.extents {
        let len = e.sectors * 512;
        let name = e.file.clone().unwrap_or_default();
        let file = PathFile::open(
            &crate::link::resolve_name(path, &name, "extent", &crate::OpenOptions::default())?,
            true,
        )?;
        out.push(FlatFile {
            disk_start,
            len,
            file_offset: e.offset_sectors * 512,
            file,
        });
        disk_start += len;
    }
    Ok(out)
}

/// Punch `[offset, offset+len)` of the disk, which lies within one extent.
fn punch_in_extents(extents: &[FlatFile], offset: u64, len: u64) -> Result<()> {
    match extents.iter().find(|e| offset < e.disk_start + e.len) {
        Some(e) => crate::flat::punch_hole(&e.file, e.file_offset + (offset - e.disk_start), len),
        None => Ok(()),
    }
}
