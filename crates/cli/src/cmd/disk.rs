//! `vcb disk ...`: virtual disk operations. `vmkfstools` calls the same functions.

use crate::output::{human_bytes, Bar};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use vmdk::{AdapterType, CreateSpec, Disk, DiskFormat, OpenOptions};

mod changed;
mod guard;

/// Options shared by every disk command.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Permit descriptor file names (extents, parents) outside the disk's folder (and
    /// outside the host's datastores). Only for descriptors you trust.
    #[arg(long, global = true, alias = "allow-outside-paths")]
    pub allow_outside_extents: bool,
}

impl Common {
    fn open_options(&self, disk: &Path, writable: bool) -> OpenOptions {
        guard::open_options(disk, writable, self.allow_outside_extents)
    }
}

/// Virtual disk commands.
#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// Create a new virtual disk.
    Create {
        /// Descriptor path of the new disk.
        disk: PathBuf,
        /// Capacity, e.g. 10G, 512m, 100k.
        #[arg(long, short = 's')]
        size: String,
        /// Format (zeroedthick, eagerzeroedthick, thin, 2gbsparse, monosparse, monoflat, 2gbflat, streamoptimized).
        #[arg(long, short = 'd', default_value = "zeroedthick")]
        format: String,
        /// Adapter type recorded in the disk (ide, buslogic, lsilogic, legacyESX).
        #[arg(long, short = 'a', default_value = "lsilogic")]
        adapter: String,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Copy/convert a disk, chain or raw image (.img, .raw) into a new disk.
    #[command(alias = "convert", alias = "clone")]
    Import {
        /// Source disk (any VMDK, or a raw image).
        src: PathBuf,
        /// Destination descriptor path.
        dst: PathBuf,
        /// Destination format.
        #[arg(long, short = 'd', default_value = "zeroedthick")]
        format: String,
        /// Adapter type of the new disk (default: the source's).
        #[arg(long, short = 'a')]
        adapter: Option<String>,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Delete a disk and all its extent files.
    Delete {
        /// The disk.
        disk: PathBuf,
    },
    /// Rename a disk and its extents.
    Rename {
        /// Current descriptor path.
        old: PathBuf,
        /// New descriptor path.
        new: PathBuf,
    },
    /// Grow a disk (never shrinks).
    Extend {
        /// The disk.
        disk: PathBuf,
        /// New capacity, e.g. 20G.
        size: String,
    },
    /// Turn a thin disk into eagerzeroedthick.
    Inflate {
        /// The disk.
        disk: PathBuf,
    },
    /// Deallocate all-zero blocks.
    PunchZero {
        /// The disk.
        disk: PathBuf,
    },
    /// Create a raw device mapping file.
    CreateRdm {
        /// Device (or file) to map.
        device: PathBuf,
        /// Mapping descriptor to create.
        map: PathBuf,
        /// Physical compatibility (pass-through) instead of virtual.
        #[arg(long)]
        passthrough: bool,
    },
    /// Show the device a mapping file stands for.
    QueryRdm {
        /// Mapping descriptor.
        map: PathBuf,
    },
    /// Check a snapshot chain: parents present, CIDs linked, capacities equal.
    ChainCheck {
        /// Top of the chain.
        disk: PathBuf,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Check (or repair) a disk's metadata.
    Check {
        /// The disk.
        disk: PathBuf,
        /// Repair what can be repaired.
        #[arg(long)]
        repair: bool,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Show format, capacity, chain and allocation.
    Info {
        /// The disk.
        disk: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// List the disk's data / zero / unallocated ranges merged across the chain.
    Map {
        /// The disk.
        disk: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Write a file's bytes at a byte offset (into the top link of the chain).
    Write {
        /// The disk.
        disk: PathBuf,
        /// Byte offset (suffixes allowed: 1M).
        offset: String,
        /// File whose bytes are written ("-" for stdin).
        file: PathBuf,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Write bytes at an offset to standard output.
    Read {
        /// The disk.
        disk: PathBuf,
        /// Byte offset (suffixes allowed).
        offset: String,
        /// Number of bytes (suffixes allowed).
        length: String,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Create a redo log (snapshot child) of a disk.
    Snapshot {
        /// Parent disk (left untouched).
        parent: PathBuf,
        /// Child descriptor to create.
        child: PathBuf,
        /// Hosted (monolithicSparse) child instead of an ESX vmfsSparse redo log.
        #[arg(long)]
        hosted: bool,
    },
    /// The areas changed since a change ID (`vcb vm ctk status` shows the next one; `*`
    /// lists every allocated area), as VMware's QueryChangedDiskAreas.
    ChangedAreas {
        /// The disk (the link the VM writes).
        disk: PathBuf,
        /// A change ID (UUID/SEQUENCE) or `*`.
        #[arg(long)]
        since: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
    /// Commit a redo log into its parent and delete it.
    Commit {
        /// The child disk.
        child: PathBuf,
        /// Options shared by disk commands.
        #[command(flatten)]
        common: Common,
    },
}

/// Run a `vcb disk` command.
pub fn run(cmd: DiskCmd) -> Result<()> {
    match cmd {
        DiskCmd::Create {
            disk,
            size,
            format,
            adapter,
            ..
        } => create(&disk, &size, &format, &adapter),
        DiskCmd::Import {
            src,
            dst,
            format,
            adapter,
            common,
        } => import(&src, &dst, &format, adapter.as_deref(), &common),
        DiskCmd::Delete { disk } => delete(&disk),
        DiskCmd::Rename { old, new } => rename(&old, &new),
        DiskCmd::Extend { disk, size } => extend(&disk, &size),
        DiskCmd::Inflate { disk } => inflate(&disk),
        DiskCmd::PunchZero { disk } => punch_zero(&disk),
        DiskCmd::CreateRdm {
            device,
            map,
            passthrough,
        } => create_rdm(&device, &map, passthrough),
        DiskCmd::QueryRdm { map } => query_rdm(&map),
        DiskCmd::ChainCheck { disk, common } => chain_check(&disk, &common),
        DiskCmd::Check {
            disk,
            repair,
            common,
        } => check(&disk, repair, &common),
        DiskCmd::Info { disk, json, common } => info(&disk, json, &common),
        DiskCmd::Map { disk, json, common } => map(&disk, json, &common),
        DiskCmd::Write {
            disk,
            offset,
            file,
            common,
        } => write(&disk, &offset, &file, &common),
        DiskCmd::Read {
            disk,
            offset,
            length,
            common,
        } => read(&disk, &offset, &length, &common),
        DiskCmd::Snapshot {
            parent,
            child,
            hosted,
        } => {
            let format = if hosted {
                vmdk::ChildFormat::HostedSparse
            } else {
                vmdk::ChildFormat::VmfsSparse
            };
            Ok(vmdk::create_child(&parent, &child, format)?)
        }
        DiskCmd::Commit { child, common } => commit(&child, &common),
        DiskCmd::ChangedAreas {
            disk,
            since,
            json,
            common,
        } => changed::changed_areas(&disk, &since, json, &common),
    }
}

/// Delete a disk and its extents.
pub fn delete(disk: &Path) -> Result<()> {
    let _guard = guard::write_guard(disk, None)?;
    vmdk::refuse_busy(disk, "delete")?;
    Ok(vmdk::delete(disk)?)
}

/// Rename a disk and its extents.
pub fn rename(old: &Path, new: &Path) -> Result<()> {
    let _guard = guard::write_guard(old, None)?;
    Ok(vmdk::rename(old, new)?)
}

/// Write every hole of a thin disk with zeros.
pub fn inflate(disk: &Path) -> Result<()> {
    let _guard = guard::write_guard(disk, None)?;
    Ok(vmdk::inflate(
        disk,
        &mut Bar::new(format!("Inflating \"{}\"", disk.display())),
    )?)
}

/// Commit a redo log into its parent (which no other chain may use).
pub fn commit(child: &Path, common: &Common) -> Result<()> {
    let opts = common.open_options(child, false);
    let chain = vmdk::chain_consistent(child, &opts)?;
    let Some(parent) = chain.get(1) else {
        bail!("{}: has no parent to commit into", child.display());
    };
    let _child_guard = guard::write_guard(child, None)?;
    let same_vm = parent.parent() == child.parent();
    let _parent_guard = if same_vm {
        None
    } else {
        Some(guard::write_guard(parent, Some(child))?)
    };
    if same_vm {
        // Still refuse a parent other chains use, under the lock already held.
        if let Some(h) = guard::local_host() {
            h.check_shared_parent(parent, Some(child))?;
        }
    }
    let parent = vmdk::commit(
        child,
        None,
        &opts,
        &mut Bar::new(format!("Committing \"{}\"", child.display())),
    )?;
    println!("committed {} into {}", child.display(), parent.display());
    Ok(())
}

/// Create a disk of `size` in `format`.
pub fn create(disk: &Path, size: &str, format: &str, adapter: &str) -> Result<()> {
    let capacity = vmdk::parse_size(size)?;
    let format = DiskFormat::parse(format)?;
    let mut spec = CreateSpec::new(capacity, format);
    spec.adapter = AdapterType::parse(adapter)?;
    vmdk::create(disk, &spec).with_context(|| format!("cannot create {}", disk.display()))
}

/// Open a conversion source: a raw image by extension, else a VMDK chain (read-only).
pub fn open_source(src: &Path, common: &Common) -> Result<Disk> {
    let ext = src
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(ext.as_deref(), Some("img" | "raw" | "bin" | "iso")) {
        return Ok(Disk::open_raw(src)?);
    }
    Ok(Disk::open(src, &common.open_options(src, false))?)
}

/// Copy/convert `src` into a new disk at `dst`.
pub fn import(
    src: &Path,
    dst: &Path,
    format: &str,
    adapter: Option<&str>,
    common: &Common,
) -> Result<()> {
    let format = DiskFormat::parse(format)?;
    let mut source = open_source(src, common)?;
    let adapter = match adapter {
        Some(a) => AdapterType::parse(a)?,
        None => source.links()[0]
            .descriptor()
            .ddb_value("ddb.adapterType")
            .and_then(|a| AdapterType::parse(a).ok())
            .unwrap_or_default(),
    };
    let spec = CreateSpec {
        capacity_bytes: 0,
        format,
        adapter,
        extra_ddb: Vec::new(),
    };
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bar = Bar::new(format!("Cloning \"{}\" to \"{name}\"", src.display()));
    vmdk::convert(&mut source, dst, &spec, &mut bar)?;
    Ok(())
}

/// Grow a disk.
pub fn extend(disk: &Path, size: &str) -> Result<()> {
    let capacity = vmdk::parse_size(size)?;
    let _guard = guard::write_guard(disk, None)?;
    vmdk::extend(
        disk,
        capacity,
        &mut Bar::new(format!("Extending \"{}\"", disk.display())),
    )?;
    Ok(())
}

/// Deallocate zero blocks and say how much was freed.
pub fn punch_zero(disk: &Path) -> Result<()> {
    let _guard = guard::write_guard(disk, None)?;
    let freed = vmdk::punch_zero(
        disk,
        &mut Bar::new(format!("Punching zeros in \"{}\"", disk.display())),
    )?;
    println!("{}: {} freed", disk.display(), human_bytes(freed));
    Ok(())
}

/// Create a mapping file for `device`.
pub fn create_rdm(device: &Path, map: &Path, passthrough: bool) -> Result<()> {
    let format = if passthrough {
        DiskFormat::RdmPassthrough(device.to_path_buf())
    } else {
        DiskFormat::Rdm(device.to_path_buf())
    };
    vmdk::create(map, &CreateSpec::new(0, format))
        .with_context(|| format!("cannot create mapping {}", map.display()))
}

/// Print what a mapping file maps.
pub fn query_rdm(map: &Path) -> Result<()> {
    let (mode, target) = vmdk::rdm_target(map)?;
    let kind = match mode {
        vmdk::RdmMode::Virtual => "a Non-passthrough Raw Device Mapping",
        vmdk::RdmMode::Physical => "a Passthrough Raw Device Mapping",
        vmdk::RdmMode::Raw => "a Raw Device",
    };
    println!("Disk {} is {kind}", map.display());
    println!("Maps to: {}", target.display());
    Ok(())
}

/// Verify a chain and print its links.
pub fn chain_check(disk: &Path, common: &Common) -> Result<()> {
    let links = vmdk::chain_consistent(disk, &common.open_options(disk, false))?;
    println!(
        "Disk chain is consistent ({} link{}):",
        links.len(),
        if links.len() == 1 { "" } else { "s" }
    );
    for l in links {
        println!("  {}", l.display());
    }
    Ok(())
}

/// Check or repair; a problem left unrepaired is an error.
pub fn check(disk: &Path, repair: bool, common: &Common) -> Result<()> {
    let _guard = if repair {
        Some(guard::write_guard(disk, None)?)
    } else {
        None
    };
    let report = vmdk::check(disk, repair, &common.open_options(disk, false))?;
    for p in &report.problems {
        println!("problem: {p}");
    }
    for r in &report.repaired {
        println!("repaired: {r}");
    }
    if report.problems.is_empty() {
        println!("{}: no errors found", disk.display());
    } else if !report.is_clean() {
        bail!(
            "{}: {} problem(s) found",
            disk.display(),
            report.problems.len() - report.repaired.len()
        );
    }
    Ok(())
}

/// Print `info`.
pub fn info(disk: &Path, json: bool, common: &Common) -> Result<()> {
    let info = vmdk::info(disk, &common.open_options(disk, false))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "Disk:       {}", info.path.display())?;
    writeln!(
        out,
        "Format:     {} (createType {})",
        info.format.as_deref().unwrap_or("-"),
        info.create_type
    )?;
    writeln!(
        out,
        "Capacity:   {} ({} bytes)",
        human_bytes(info.capacity),
        info.capacity
    )?;
    writeln!(
        out,
        "Allocated:  {} ({} bytes of data)",
        human_bytes(info.allocated),
        info.allocated
    )?;
    if let Some(a) = &info.adapter {
        writeln!(out, "Adapter:    {a}")?;
    }
    writeln!(out, "Chain:")?;
    for (i, l) in info.chain.iter().enumerate() {
        writeln!(
            out,
            "  {i}: {} ({}, CID {}, parentCID {}, {} on disk)",
            l.path.display(),
            l.create_type,
            l.cid,
            l.parent_cid,
            human_bytes(l.file_bytes)
        )?;
    }
    Ok(())
}

/// Print the allocation map.
pub fn map(disk: &Path, json: bool, common: &Common) -> Result<()> {
    let mut d = Disk::open(disk, &common.open_options(disk, false))?;
    let runs = d.allocation()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &runs)?;
        writeln!(out)?;
    } else {
        for r in runs {
            writeln!(out, "{:>16} {:>16} {:?}", r.offset, r.len, r.state)?;
        }
    }
    Ok(())
}

/// Write a file's bytes into the disk at an offset.
pub fn write(disk: &Path, offset: &str, file: &Path, common: &Common) -> Result<()> {
    let offset = vmdk::parse_size(offset)?;
    let data = if file == Path::new("-") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
        v
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let _guard = guard::write_guard(disk, None)?;
    let mut d = Disk::open_exclusive(disk, &common.open_options(disk, true))?;
    d.write_at(offset, &data)?;
    d.close()?;
    Ok(())
}

/// Copy bytes from the disk to stdout.
pub fn read(disk: &Path, offset: &str, length: &str, common: &Common) -> Result<()> {
    let offset = vmdk::parse_size(offset)?;
    let length = vmdk::parse_size(length)?;
    let mut d = Disk::open(disk, &common.open_options(disk, false))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < length {
        let n = (length - pos).min(buf.len() as u64) as usize;
        d.read_at(offset + pos, &mut buf[..n])?;
        out.write_all(&buf[..n])?;
        pos += n as u64;
    }
    out.flush()?;
    Ok(())
}
