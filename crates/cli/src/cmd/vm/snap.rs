//! `vcb vm snapshot|snapshots|revert|remove-snapshot|consolidate`.

use super::lock_mode;
use crate::output::Bar;
use anyhow::{bail, Result};
use clap::Args;
use host::{Cleanup, Host};
use std::path::Path;

/// `vcb vm snapshot VM`.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The VM: a display name or a specifier.
    vm: String,
    /// The snapshot's name (default: "Snapshot N").
    #[arg(long)]
    name: Option<String>,
    /// A description.
    #[arg(long, default_value = "")]
    description: String,
    /// Also save the running VM's memory (`<vm>-Snapshot<uid>.vmem`): reverting to the
    /// snapshot then leaves the VM suspended in that state.
    #[arg(long)]
    memory: bool,
    /// Wait for the VM's lock instead of failing when it is busy.
    #[arg(long)]
    wait: bool,
}

/// `vcb vm snapshots VM`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// The VM: a display name or a specifier.
    vm: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `vcb vm revert VM SNAP`.
#[derive(Args, Debug)]
pub struct RevertArgs {
    /// The VM: a display name or a specifier.
    vm: String,
    /// The snapshot: its name or uid.
    snap: String,
    /// Wait for the VM's lock instead of failing when it is busy.
    #[arg(long)]
    wait: bool,
}

/// `vcb vm remove-snapshot VM SNAP|--all`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The VM: a display name or a specifier.
    vm: String,
    /// The snapshot: its name or uid.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    snap: Option<String>,
    /// Remove every snapshot, committing everything into the base disks.
    #[arg(long)]
    all: bool,
    /// Wait for the VM's lock instead of failing when it is busy.
    #[arg(long)]
    wait: bool,
}

/// `vcb vm consolidate VM`.
#[derive(Args, Debug)]
pub struct ConsolidateArgs {
    /// The VM: a display name or a specifier.
    vm: String,
    /// Wait for the VM's lock instead of failing when it is busy.
    #[arg(long)]
    wait: bool,
}

pub(super) fn snapshot(h: &Host, a: SnapshotArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.wait))?;
    let next = locked
        .snapshots()
        .snapshots()
        .iter()
        .map(|s| s.uid)
        .fold(locked.snapshots().last_uid(), u64::max)
        + 1;
    let name = a.name.unwrap_or_else(|| format!("Snapshot {next}"));
    let made = if a.memory {
        locked.create_snapshot_with_memory(&name, &a.description)?
    } else {
        locked.create_snapshot(&name, &a.description)?
    };
    println!(
        "Created snapshot {name:?} (uid {}) of {}",
        made.uid,
        vm.name()
    );
    if let Some(m) = &made.memory {
        println!(
            "  memory  {} ({} MiB, guest paused {:.2?})",
            file_name(&m.path),
            m.size_bytes >> 20,
            m.guest_paused
        );
    }
    for d in &made.disks {
        println!(
            "  {}  {} -> {}",
            d.node,
            file_name(&d.base),
            file_name(&d.redo)
        );
    }
    for (node, why) in &made.skipped {
        eprintln!("note: {node} not snapshotted: {why}");
    }
    Ok(())
}

pub(super) fn list(h: &Host, a: ListArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let db = host::read_vmsd(&vm.vmsd_path())?;
    if a.json {
        let rows: Vec<serde_json::Value> = db
            .walk()
            .iter()
            .map(|(depth, s)| {
                let disks: Vec<serde_json::Value> = s
                    .disks
                    .iter()
                    .map(|(node, file)| serde_json::json!({ "node": node.to_string(), "file": file }))
                    .collect();
                serde_json::json!({
                    "uid": s.uid, "name": s.display_name, "description": s.description,
                    "parent": s.parent, "depth": depth, "created_micros": s.create_time_micros,
                    "current": db.current() == Some(s.uid), "disks": disks,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if db.snapshots().is_empty() {
        println!("{} has no snapshots", vm.name());
        return Ok(());
    }
    for (depth, s) in db.walk() {
        let here = if db.current() == Some(s.uid) {
            "  <- you are here"
        } else {
            ""
        };
        let desc = if s.description.is_empty() {
            String::new()
        } else {
            format!(": {}", s.description)
        };
        println!(
            "{}{} [uid {}] {}{desc}{here}",
            "  ".repeat(depth),
            s.display_name,
            s.uid,
            utc(s.create_time_micros)
        );
    }
    Ok(())
}

pub(super) fn revert(h: &Host, a: RevertArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.wait))?;
    let uid = locked.find_snapshot(&a.snap)?;
    let out = locked.revert_to_snapshot(uid, &mut Bar::new("Committing"))?;
    println!(
        "Reverted {} to snapshot {:?} (uid {uid})",
        vm.name(),
        a.snap
    );
    report(&out);
    Ok(())
}

pub(super) fn remove(h: &Host, a: RemoveArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.wait))?;
    let mut bar = Bar::new("Committing");
    let out = match (&a.snap, a.all) {
        (_, true) => {
            let out = locked.remove_all_snapshots(&mut bar)?;
            println!("Removed every snapshot of {}", vm.name());
            out
        }
        (Some(snap), false) => {
            let uid = locked.find_snapshot(snap)?;
            let out = locked.remove_snapshot(uid, &mut bar)?;
            println!("Removed snapshot {snap:?} (uid {uid}) of {}", vm.name());
            out
        }
        (None, false) => bail!("name a snapshot or pass --all"),
    };
    report(&out);
    Ok(())
}

pub(super) fn consolidate(h: &Host, a: ConsolidateArgs) -> Result<()> {
    let vm = h.find_vm(&a.vm)?;
    let mut locked = h.lock_vm(vm.moref, lock_mode(a.wait))?;
    let out = locked.consolidate(&mut Bar::new("Committing"))?;
    if out.merged.is_empty() && out.deleted.is_empty() {
        println!("Consolidated {}: nothing to do", vm.name());
    } else {
        println!("Consolidated {}", vm.name());
    }
    report(&out);
    Ok(())
}

/// Prints what a clean-up merged and deleted, and its notes on stderr.
fn report(out: &Cleanup) {
    for (child, parent) in &out.merged {
        println!(
            "  committed {} into {}",
            file_name(child),
            file_name(parent)
        );
    }
    for f in &out.deleted {
        println!("  deleted {}", file_name(f));
    }
    for n in &out.notes {
        eprintln!("note: {n}");
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` for microseconds since the Unix epoch.
fn utc(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_732_535_445_000_000), "2024-11-25 11:50:45 UTC");
    }
}
