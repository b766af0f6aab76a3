//! `vcb vm`: create, register, list, show and destroy VMs; snapshots (in `vm/snap.rs`);
//! power operations (in `vm/power.rs`).

mod ctk;
pub mod power;
mod snap;

use crate::cmd::host::RootArg;
use crate::output::Bar;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use host::{ContainerKind, DiskSource, Host, LockMode, Vm, VmSpec};
use std::path::PathBuf;

/// `vcb vm ...`.
#[derive(Args, Debug)]
pub struct VmArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(subcommand)]
    cmd: VmCmd,
}

#[derive(Subcommand, Debug)]
enum VmCmd {
    /// Create a VM folder with a .vmx, NVRAM and disks on a datastore, and register it.
    Create(CreateArgs),
    /// Register an existing .vmx: `vcb vm register "[datastore1] vm37/vm37.vmx"`.
    Register {
        /// The .vmx as a datastore path.
        vmx: String,
        /// VM folder (default: the root folder).
        #[arg(long)]
        folder: Option<String>,
        /// Resource pool (default: the root pool).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Remove a VM from the inventory; its files stay.
    Unregister {
        /// The VM: a display name or a specifier (name:, uuid:, moref:, ipaddr:).
        vm: String,
        /// Wait for a backup or snapshot operation holding the VM's lock.
        #[arg(long)]
        wait: bool,
    },
    /// List the registered VMs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one VM: settings, disks with their chains, snapshots.
    Show {
        /// The VM: a display name or a specifier.
        vm: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unregister a VM and delete its files.
    Destroy {
        /// The VM: a display name or a specifier.
        vm: String,
        /// Wait for the VM's lock instead of failing when it is busy.
        #[arg(long)]
        wait: bool,
    },
    /// Take a snapshot: a redo log per disk, recorded in the .vmsd.
    Snapshot(snap::SnapshotArgs),
    /// Print the snapshot tree.
    Snapshots(snap::ListArgs),
    /// Revert to a snapshot (the current state is discarded).
    Revert(snap::RevertArgs),
    /// Remove a snapshot (or all) and commit the redo logs no longer needed.
    RemoveSnapshot(snap::RemoveArgs),
    /// Commit redo logs no snapshot owns and delete leftovers of interrupted runs.
    Consolidate(snap::ConsolidateArgs),
    /// Power the VM on under QEMU (a suspended VM is resumed).
    PowerOn(power::PowerArgs),
    /// Power the VM off hard (the guest gets no warning).
    PowerOff(power::PowerArgs),
    /// Shut the guest down: ACPI power button, then wait for it to power off.
    Shutdown(power::ShutdownArgs),
    /// Reset the VM (the guest reboots at once).
    Reset(power::PowerArgs),
    /// Suspend the VM: memory and device state to <vm>.vmss, then stop QEMU.
    Suspend(power::PowerArgs),
    /// Resume a suspended VM from its .vmss.
    Resume(power::PowerArgs),
    /// Changed-block tracking: `vcb vm ctk enable|disable|status VM`.
    Ctk(ctk::CtkArgs),
}

/// `vcb vm create`.
#[derive(Args, Debug)]
struct CreateArgs {
    /// Display name; also the VM folder's and the files' base name.
    name: String,
    /// Datastore (default: datastore1).
    #[arg(long)]
    datastore: Option<String>,
    /// A new disk of SIZE (10G, 512m...); repeat for more disks.
    #[arg(long = "disk", value_name = "SIZE")]
    disks: Vec<String>,
    /// A disk imported from an existing VMDK (any format) or raw image; attached after
    /// the --disk disks.
    #[arg(long = "disk-from", value_name = "SRC")]
    disks_from: Vec<PathBuf>,
    /// Let a --disk-from descriptor name extent or parent files outside its own folder
    /// (refused otherwise: a descriptor can name any file of this machine).
    #[arg(long)]
    allow_outside_extents: bool,
    /// A raw device mapping (virtual compatibility; `DEVICE:physical` for pass-through);
    /// attached last.
    #[arg(long = "rdm", value_name = "DEVICE[:physical]")]
    rdms: Vec<String>,
    /// Provisioning of new and imported disks: thin, zeroedthick or eagerzeroedthick.
    #[arg(long, default_value = "zeroedthick")]
    format: String,
    /// VM folder (default: the root folder).
    #[arg(long)]
    folder: Option<String>,
    /// Resource pool (default: the root pool).
    #[arg(long)]
    pool: Option<String>,
    /// Guest OS identifier (guestOS).
    #[arg(long, default_value = "otherGuest")]
    guest_os: String,
    /// Memory in MB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// The guest's IP address (guestinfo.ip).
    #[arg(long)]
    ip: Option<String>,
}

/// Runs `vcb vm ...`.
pub fn run(a: VmArgs) -> Result<()> {
    let mut h = a.root.open()?;
    match a.cmd {
        VmCmd::Create(c) => create(&mut h, c),
        VmCmd::Register { vmx, folder, pool } => {
            let dp: vmx::DatastorePath = vmx.parse()?;
            let vm = h.register_vm(&dp, folder.as_deref(), pool.as_deref())?;
            println!(
                "Registered {} as moref {} ({})",
                vm.name(),
                vm.moref,
                vm.vmx
            );
            Ok(())
        }
        VmCmd::Unregister { vm, wait } => {
            let vm = h.find_vm(&vm)?;
            h.unregister_vm(vm.moref, lock_mode(wait))?;
            println!("Unregistered {} ({}); its files stay", vm.name(), vm.vmx);
            Ok(())
        }
        VmCmd::List { json } => list(&h, json),
        VmCmd::Show { vm, json } => show(&h, &h.find_vm(&vm)?, json),
        VmCmd::Destroy { vm, wait } => {
            let vm = h.find_vm(&vm)?;
            let out = h.destroy_vm(vm.moref, lock_mode(wait))?;
            println!(
                "Destroyed {}: {} files deleted",
                vm.name(),
                out.deleted.len()
            );
            for f in out.left {
                eprintln!("note: left {}", f.display());
            }
            Ok(())
        }
        VmCmd::Snapshot(s) => snap::snapshot(&h, s),
        VmCmd::Snapshots(s) => snap::list(&h, s),
        VmCmd::Revert(s) => snap::revert(&h, s),
        VmCmd::RemoveSnapshot(s) => snap::remove(&h, s),
        VmCmd::Consolidate(s) => snap::consolidate(&h, s),
        VmCmd::PowerOn(a) => power::power(&h, power::Op::PowerOn, a),
        VmCmd::PowerOff(a) => power::power(&h, power::Op::PowerOff, a),
        VmCmd::Shutdown(a) => power::shutdown(&h, a),
        VmCmd::Reset(a) => power::power(&h, power::Op::Reset, a),
        VmCmd::Suspend(a) => power::power(&h, power::Op::Suspend, a),
        VmCmd::Resume(a) => power::power(&h, power::Op::Resume, a),
        VmCmd::Ctk(a) => ctk::run(&h, a),
    }
}

/// `--wait` to a lock mode.
pub(crate) fn lock_mode(wait: bool) -> LockMode {
    if wait {
        LockMode::Wait
    } else {
        LockMode::NoWait
    }
}

fn create(h: &mut Host, c: CreateArgs) -> Result<()> {
    let mut spec = VmSpec::new(&c.name);
    spec.datastore = c.datastore;
    spec.format = vmdk::DiskFormat::parse(&c.format)?;
    spec.folder = c.folder;
    spec.pool = c.pool;
    spec.guest_os = c.guest_os;
    spec.memory_mb = c.memory;
    spec.cpus = c.cpus;
    spec.ip = c.ip;
    spec.allow_outside_extents = c.allow_outside_extents;
    for size in &c.disks {
        let capacity_bytes = vmdk::parse_size(size).with_context(|| format!("--disk {size}"))?;
        spec.disks.push(DiskSource::New { capacity_bytes });
    }
    spec.disks.extend(
        c.disks_from
            .into_iter()
            .map(|source| DiskSource::Import { source }),
    );
    for r in &c.rdms {
        let (device, physical) = match r.rsplit_once(':') {
            Some((d, mode)) if mode.eq_ignore_ascii_case("physical") => (d, true),
            Some((d, mode)) if mode.eq_ignore_ascii_case("virtual") => (d, false),
            _ => (r.as_str(), false),
        };
        if device.is_empty() {
            bail!("--rdm {r:?}: no device");
        }
        spec.disks.push(DiskSource::Rdm {
            device: PathBuf::from(device),
            physical,
        });
    }
    let mut bar = Bar::new(format!("Creating {}", c.name));
    let vm = h.create_vm(&spec, &mut bar)?;
    println!("Created {} (moref {}) at {}", vm.name(), vm.moref, vm.vmx);
    Ok(())
}

fn list(h: &Host, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for (moref, entry) in h.entries() {
        let folder = h
            .config()
            .display_container(ContainerKind::Folder, &entry.folder);
        let pool = h
            .config()
            .display_container(ContainerKind::Pool, &entry.pool);
        let row = match h.vm(moref) {
            Ok(vm) => {
                let ips = vm.guest_ips(h);
                serde_json::json!({
                    "moref": moref.0, "name": vm.name(), "state": vm.power_state(h).to_string(),
                    "uuid": vm.uuid().map(|u| u.to_string()), "ip": ips.first(), "ips": ips,
                    "folder": folder, "pool": pool, "vmx": entry.vmx,
                })
            }
            Err(e) => serde_json::json!({
                "moref": moref.0, "name": null, "state": "invalid", "error": e.to_string(),
                "folder": folder, "pool": pool, "vmx": entry.vmx,
            }),
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let cell = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("-").to_owned();
    let table: Vec<[String; 7]> = std::iter::once(
        ["MOREF", "NAME", "STATE", "IP", "FOLDER", "POOL", "VMX"].map(String::from),
    )
    .chain(rows.iter().map(|r| {
        [
            r["moref"].to_string(),
            cell(r, "name"),
            cell(r, "state"),
            cell(r, "ip"),
            cell(r, "folder"),
            cell(r, "pool"),
            cell(r, "vmx"),
        ]
    }))
    .collect();
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for r in rows.iter().filter(|r| r.get("error").is_some()) {
        eprintln!("warning: moref {}: {}", r["moref"], cell(r, "error"));
    }
    Ok(())
}

fn show(h: &Host, vm: &Vm, json: bool) -> Result<()> {
    let chains = vm.disk_chains(h)?;
    let db = host::read_vmsd(&vm.vmsd_path())?;
    let current = db
        .current()
        .and_then(|u| db.get(u))
        .map(|s| s.display_name.clone());
    let disks: Vec<serde_json::Value> = chains
        .iter()
        .map(|(node, links)| serde_json::json!({ "node": node.to_string(), "chain": links }))
        .collect();
    let folder = h
        .config()
        .display_container(ContainerKind::Folder, &vm.folder);
    let pool = h.config().display_container(ContainerKind::Pool, &vm.pool);
    let state = vm.power_state(h);
    let ips = vm.guest_ips(h);
    if json {
        let v = serde_json::json!({
            "moref": vm.moref.0, "name": vm.name(), "state": state.to_string(),
            "uuid": vm.uuid().map(|u| u.to_string()), "ip": ips.first(), "ips": ips,
            "guest_os": vm.config.guest_os(), "memory_mb": vm.config.memsize_mb(), "cpus": vm.config.num_vcpus(),
            "folder": folder, "pool": pool, "vmx": vm.vmx.to_string(), "vmx_path": vm.vmx_path,
            "disks": disks, "snapshots": db.snapshots().len(), "current_snapshot": current,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    println!("moref:      {}", vm.moref);
    println!("name:       {}", vm.name());
    println!("state:      {state}");
    println!("uuid:       {}", opt(vm.uuid().map(|u| u.to_string())));
    println!(
        "ip:         {}",
        opt(Some(ips.join(", ")).filter(|s| !s.is_empty()))
    );
    println!(
        "guest os:   {}",
        opt(vm.config.guest_os().map(str::to_owned))
    );
    println!(
        "memory:     {}",
        opt(vm.config.memsize_mb().map(|m| format!("{m} MB")))
    );
    println!(
        "cpus:       {}",
        opt(vm.config.num_vcpus().map(|n| n.to_string()))
    );
    println!("folder:     {folder}");
    println!("pool:       {pool}");
    println!("vmx:        {} ({})", vm.vmx, vm.vmx_path.display());
    println!(
        "snapshots:  {} (current: {})",
        db.snapshots().len(),
        opt(current)
    );
    println!("disks:");
    for (node, links) in &chains {
        let names: Vec<String> = links
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        println!("  {node}  {}", names.join(" -> "));
    }
    Ok(())
}
