//! `vmkfstools`: the ESX virtual disk tool's options over `vcb disk`'s code.
//!
//! ```text
//! vmkfstools -c 10G [-d thin] [-a lsilogic] disk.vmdk
//! vmkfstools -i src.vmdk dst.vmdk [-d 2gbsparse]
//! vmkfstools -U disk.vmdk | -E old.vmdk new.vmdk | -X 20G disk.vmdk
//! vmkfstools -j disk.vmdk | -K disk.vmdk | -e disk.vmdk | -x check|repair disk.vmdk
//! vmkfstools -r /dev/sdb map.vmdk | -z /dev/sdb map.vmdk | -q map.vmdk
//! ```

use crate::cmd::disk::{self, Common};
use anyhow::{bail, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// vmkfstools: create, import, convert, extend and check virtual disks.
#[derive(Parser, Debug)]
#[command(name = "vmkfstools", version, about, disable_help_flag = false)]
#[command(
    after_help = "Formats (-d): zeroedthick (default, \"preallocated\"), eagerzeroedthick, thin, 2gbsparse, monosparse, monoflat, rdm:<device>, rdmp:<device>, raw:<device>.\nSizes: 10G, 512m, 100k, or bytes."
)]
struct Args {
    /// Create a virtual disk of SIZE (e.g. 10G, 512m, 100k) at the path given last.
    #[arg(short = 'c', long = "createvirtualdisk", value_name = "SIZE")]
    create: Option<String>,
    /// Import (copy/convert) SRC to the destination given last.
    #[arg(short = 'i', long = "importfile", value_name = "SRC")]
    import: Option<PathBuf>,
    /// Disk format for -c and -i.
    #[arg(short = 'd', long = "diskformat", value_name = "FORMAT")]
    format: Option<String>,
    /// Adapter type for -c (buslogic, lsilogic, ide, legacyESX).
    #[arg(short = 'a', long = "adaptertype", value_name = "ADAPTER")]
    adapter: Option<String>,
    /// Delete a virtual disk and all its extent files.
    #[arg(short = 'U', long = "deletevirtualdisk", value_name = "DISK")]
    delete: Option<PathBuf>,
    /// Rename OLD to the path given last.
    #[arg(short = 'E', long = "renamevirtualdisk", value_name = "OLD")]
    rename: Option<PathBuf>,
    /// Extend the disk given last to SIZE.
    #[arg(short = 'X', long = "extendvirtualdisk", value_name = "SIZE")]
    extend: Option<String>,
    /// Inflate a thin disk to eagerzeroedthick.
    #[arg(short = 'j', long = "inflatedisk", value_name = "DISK")]
    inflate: Option<PathBuf>,
    /// Deallocate all-zero blocks.
    #[arg(short = 'K', long = "punchzero", value_name = "DISK")]
    punch: Option<PathBuf>,
    /// Create a virtual-compatibility RDM of DEVICE at the mapping file given last.
    #[arg(short = 'r', long = "createrdm", value_name = "DEVICE")]
    rdm: Option<PathBuf>,
    /// Create a physical-compatibility (pass-through) RDM of DEVICE at the mapping file given last.
    #[arg(short = 'z', long = "createrdmpassthru", value_name = "DEVICE")]
    rdmp: Option<PathBuf>,
    /// Print the device a mapping file maps.
    #[arg(short = 'q', long = "queryrdm", value_name = "MAPFILE")]
    query: Option<PathBuf>,
    /// Check a snapshot chain for consistency.
    #[arg(short = 'e', long = "chainConsistent", value_name = "DISK")]
    chain: Option<PathBuf>,
    /// Check or repair disk metadata (check | repair) of the disk given last.
    #[arg(short = 'x', long = "fix", value_name = "check|repair")]
    fix: Option<String>,
    /// Verbosity level.
    #[arg(short = 'v', long = "verbose", value_name = "LEVEL")]
    verbose: Option<u32>,
    /// Permit descriptor file names outside the disk's folder (only for descriptors
    /// you trust).
    #[arg(long, alias = "allow-outside-paths")]
    allow_outside_extents: bool,
    /// The target disk (destination, new name, or disk to act on).
    target: Option<PathBuf>,
}

/// Entry point of the `vmkfstools` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::output::exit_with(run(args))
}

fn run(a: Args) -> Result<()> {
    let common = Common {
        allow_outside_extents: a.allow_outside_extents,
    };
    let actions = [
        a.create.is_some(),
        a.import.is_some(),
        a.delete.is_some(),
        a.rename.is_some(),
        a.extend.is_some(),
        a.inflate.is_some(),
        a.punch.is_some(),
        a.rdm.is_some(),
        a.rdmp.is_some(),
        a.query.is_some(),
        a.chain.is_some(),
        a.fix.is_some(),
    ];
    match actions.iter().filter(|&&x| x).count() {
        0 => bail!("no operation given (one of -c -i -U -E -X -j -K -r -z -q -e -x; see --help)"),
        1 => {}
        _ => bail!("give one operation at a time (see --help)"),
    }
    let target = || -> Result<PathBuf> {
        a.target
            .clone()
            .ok_or_else(|| anyhow::anyhow!("missing the target disk path (given last)"))
    };
    let no_target = |what: &str| -> Result<()> {
        match &a.target {
            Some(t) => bail!("unexpected argument {} after {what}", t.display()),
            None => Ok(()),
        }
    };
    if a.format.is_some() && a.create.is_none() && a.import.is_none() {
        bail!("-d/--diskformat applies only to -c and -i");
    }
    let format = a.format.clone().unwrap_or_else(|| "zeroedthick".into());
    if let Some(size) = &a.create {
        return disk::create(
            &target()?,
            size,
            &format,
            a.adapter.as_deref().unwrap_or("lsilogic"),
        );
    }
    if let Some(src) = &a.import {
        return disk::import(src, &target()?, &format, a.adapter.as_deref(), &common);
    }
    if let Some(d) = &a.delete {
        no_target("-U")?;
        return disk::delete(d);
    }
    if let Some(old) = &a.rename {
        return disk::rename(old, &target()?);
    }
    if let Some(size) = &a.extend {
        return disk::extend(&target()?, size);
    }
    if let Some(d) = &a.inflate {
        no_target("-j")?;
        return disk::inflate(d);
    }
    if let Some(d) = &a.punch {
        no_target("-K")?;
        return disk::punch_zero(d);
    }
    if let Some(dev) = &a.rdm {
        return disk::create_rdm(dev, &target()?, false);
    }
    if let Some(dev) = &a.rdmp {
        return disk::create_rdm(dev, &target()?, true);
    }
    if let Some(m) = &a.query {
        no_target("-q")?;
        return disk::query_rdm(m);
    }
    if let Some(d) = &a.chain {
        no_target("-e")?;
        return disk::chain_check(d, &common);
    }
    if let Some(mode) = &a.fix {
        let repair = match mode.as_str() {
            "check" => false,
            "repair" => true,
            other => bail!("-x takes check or repair, not {other:?}"),
        };
        return disk::check(&target()?, repair, &common);
    }
    let _ = a.verbose;
    bail!("no operation given")
}
