//! Output of the `vcb repo` commands: aligned text for people, JSON (`--json`) for
//! scripts. Commands that find damage print it all, then fail with one line.

use super::Common;
use crate::output::human_bytes;
use anyhow::{bail, Result};
use serde_json::json;

/// Local time as `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(secs: u64) -> String {
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: localtime_r fills the zeroed struct we own; both pointers are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(super) fn initialized(r: &repo::Repository, as_json: bool) -> Result<()> {
    let c = r.config();
    if as_json {
        return print_json(c);
    }
    println!(
        "Created repository {} at {} (encryption {}, chunks {}, zstd level {})",
        c.id,
        r.location(),
        c.encryption,
        human_bytes(u64::from(c.chunk_size)),
        c.zstd_level
    );
    if c.encryption != "none" {
        println!("Keep the passphrase safe: without it (or the paper key, `vcb repo key paper`) the backups cannot be read.");
    }
    Ok(())
}

fn point_json(r: &repo::Repository, p: &repo::Point) -> serde_json::Value {
    let verified = r.verify_record(&p.id).ok().flatten();
    json!({
        "id": p.id,
        "vm": p.vm.name,
        "uuid": p.vm.uuid,
        "time": p.time,
        "host": p.host,
        "hostname": p.hostname,
        "quiesced": p.quiesced,
        "power_state": p.power_state,
        "parent": p.parent,
        "files": p.files.len(),
        "disks": p.disks.iter().map(|d| json!({
            "node": d.node, "name": d.name, "capacity": d.capacity, "data_bytes": d.data_bytes,
        })).collect::<Vec<_>>(),
        "stats": p.stats,
        "verified": verified,
    })
}

pub(super) fn list(r: &repo::Repository, vm: Option<&str>, as_json: bool) -> Result<()> {
    let (points, bad) = r.points()?;
    let points: Vec<&repo::Point> = points
        .iter()
        .filter(|p| vm.is_none_or(|v| p.vm.name == v || p.vm.uuid.as_deref() == Some(v)))
        .collect();
    for e in &bad {
        eprintln!("warning: {e}");
    }
    if as_json {
        let v: Vec<serde_json::Value> = points.iter().map(|p| point_json(r, p)).collect();
        return print_json(&v);
    }
    println!(
        "{:<16}  {:<19}  {:<20}  {:<9}  {:<10}  {:>10}  {:>10}  VERIFIED",
        "ID", "TIME", "VM", "QUIESCED", "STATE", "DATA", "NEW"
    );
    for p in &points {
        let data: u64 = p.disks.iter().map(|d| d.data_bytes).sum();
        let verified = match r.verify_record(&p.id) {
            Ok(Some(v)) if v.ok => format!("ok {}", local_time(v.time)),
            Ok(Some(v)) => format!("FAILED {}", local_time(v.time)),
            Ok(None) => "-".into(),
            Err(e) => format!("? ({e})"),
        };
        println!(
            "{:<16}  {:<19}  {:<20}  {:<9}  {:<10}  {:>10}  {:>10}  {verified}",
            p.id,
            local_time(p.time),
            p.vm.name,
            if p.quiesced { "yes" } else { "no" },
            p.power_state,
            human_bytes(data),
            human_bytes(p.stats.new_bytes),
        );
    }
    println!("{} points", points.len());
    Ok(())
}

pub(super) fn point(r: &repo::Repository, spec: &str, as_json: bool) -> Result<()> {
    let p = r.find_point(spec)?;
    if as_json {
        let mut v = point_json(r, &p);
        v["catalog"] = json!(p.catalog);
        v["files"] = json!(p
            .files
            .iter()
            .map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256}))
            .collect::<Vec<_>>());
        return print_json(&v);
    }
    println!("Point     {}", p.id);
    println!(
        "VM        {} (uuid {})",
        p.vm.name,
        p.vm.uuid.as_deref().unwrap_or("-")
    );
    println!("Time      {}", local_time(p.time));
    println!(
        "Host      {} (backed up from {})",
        p.host.as_deref().unwrap_or("-"),
        p.hostname
    );
    println!(
        "State     {}, quiesced {}",
        p.power_state,
        if p.quiesced { "yes" } else { "no" }
    );
    println!("Parent    {}", p.parent.as_deref().unwrap_or("-"));
    for f in &p.files {
        println!("File      {} ({})", f.name, human_bytes(f.size));
    }
    for d in &p.disks {
        println!(
            "Disk      {} {} ({}, {} data)",
            d.node,
            d.name,
            human_bytes(d.capacity),
            human_bytes(d.data_bytes)
        );
    }
    let s = &p.stats;
    println!(
        "Stored    read {}, new {} (stored {}), reused {}, zero {}",
        human_bytes(s.read_bytes),
        human_bytes(s.new_bytes),
        human_bytes(s.stored_bytes),
        human_bytes(s.reused_bytes),
        human_bytes(s.zero_bytes)
    );
    if let Some(v) = r.verify_record(&p.id)? {
        println!(
            "Verified  {} at {} ({}% of chunks, {} read)",
            if v.ok { "ok" } else { "FAILED" },
            local_time(v.time),
            v.percent,
            v.chunks_checked
        );
    }
    Ok(())
}

pub(super) fn verify(
    r: &repo::Repository,
    specs: &[String],
    percent: u32,
    as_json: bool,
) -> Result<()> {
    let points = if specs.is_empty() {
        let (points, bad) = r.points()?;
        if let Some(e) = bad.into_iter().next() {
            return Err(e.into());
        }
        points
    } else {
        specs
            .iter()
            .map(|s| r.find_point(s))
            .collect::<repo::Result<_>>()?
    };
    let opts = repo::verify::VerifyOptions {
        percent,
        record: true,
    };
    let mut bar = crate::output::Counter::new("Verifying chunks");
    let report = repo::verify::verify(r, &points, &opts, &mut bar)?;
    drop(bar);
    if as_json {
        print_json(&report)?;
    } else {
        for d in &report.damage {
            println!(
                "DAMAGED {}: {} (breaks {})",
                d.object,
                d.error,
                d.points.join(", ")
            );
        }
        println!(
            "Verified {} points: {} chunks read ({}), {}",
            report.points.len(),
            report.chunks_checked,
            human_bytes(report.bytes_checked),
            if report.ok() {
                "no damage".to_owned()
            } else {
                format!("{} damaged or missing", report.damage.len())
            }
        );
    }
    if !report.ok() {
        let broken: Vec<&str> = report
            .points
            .iter()
            .filter(|p| !p.ok)
            .map(|p| p.id.as_str())
            .collect();
        bail!(
            "{}: {} damaged or missing objects break points {}",
            r.location(),
            report.damage.len(),
            broken.join(", ")
        );
    }
    Ok(())
}

pub(super) fn check(r: &repo::Repository, as_json: bool) -> Result<()> {
    let mut bar = crate::output::Counter::new("Checking");
    let report = repo::check::check(r, &mut bar)?;
    drop(bar);
    if as_json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            let breaks = if p.points.is_empty() {
                String::new()
            } else {
                format!(" (breaks {})", p.points.join(", "))
            };
            println!("PROBLEM {}: {}{breaks}", p.object, p.error);
        }
        println!(
            "{} keys, {} points, {} indexes, {} chunks referenced, {} stored ({} unused), {} sessions: {}",
            report.keys,
            report.points,
            report.indexes,
            report.chunks_referenced,
            report.chunks_stored,
            report.chunks_unused,
            report.sessions,
            if report.ok() { "no errors".to_owned() } else { format!("{} problems", report.problems.len()) }
        );
    }
    if !report.ok() {
        bail!("{}: {} problems found", r.location(), report.problems.len());
    }
    Ok(())
}

pub(super) fn prune(
    r: &repo::Repository,
    vm: Option<&str>,
    policy: &repo::prune::KeepPolicy,
    dry_run: bool,
    as_json: bool,
) -> Result<()> {
    let decisions = repo::prune::prune(r, vm, policy, dry_run, &mut ())?;
    if as_json {
        return print_json(&decisions);
    }
    for d in &decisions {
        let what = if d.keep {
            format!("keep ({})", d.reasons.join(", "))
        } else if dry_run {
            "would remove".into()
        } else {
            "removed".into()
        };
        println!(
            "{:<16}  {:<19}  {:<20}  {what}",
            d.id,
            local_time(d.time),
            d.vm
        );
    }
    let gone = decisions.iter().filter(|d| !d.keep).count();
    println!(
        "{} {gone} of {} points{}",
        if dry_run { "Would remove" } else { "Removed" },
        decisions.len(),
        if dry_run || gone == 0 {
            ""
        } else {
            " (run `vcb repo gc` to free their chunks)"
        }
    );
    Ok(())
}

pub(super) fn gc(
    r: &repo::Repository,
    grace: std::time::Duration,
    dry_run: bool,
    as_json: bool,
) -> Result<()> {
    let mut bar = crate::output::Counter::new("Collecting");
    let report = repo::gc::gc(r, &repo::gc::GcOptions { grace, dry_run }, &mut bar)?;
    drop(bar);
    if as_json {
        return print_json(&report);
    }
    println!(
        "{} {} unused objects ({}); kept {} in use and {} younger than the grace period; {} dead sessions {}",
        if dry_run { "Would remove" } else { "Removed" },
        report.removed_objects,
        human_bytes(report.removed_bytes),
        report.kept_objects,
        report.young_objects,
        report.stale_sessions,
        if dry_run { "found" } else { "cleared" }
    );
    Ok(())
}

pub(super) fn copy(
    src: &repo::Repository,
    dst: &repo::Repository,
    vm: Option<&str>,
    as_json: bool,
) -> Result<()> {
    let mut bar = crate::output::Counter::new("Copying");
    let report = repo::copy::copy(src, dst, vm, &mut bar)?;
    drop(bar);
    if as_json {
        return print_json(&report);
    }
    println!(
        "Copied {} points ({} already there): read {}, sent {} new ({} stored), {} reused",
        report.copied.len(),
        report.present.len(),
        human_bytes(report.stats.read_bytes),
        human_bytes(report.stats.new_bytes),
        human_bytes(report.stats.stored_bytes),
        human_bytes(report.stats.reused_bytes)
    );
    Ok(())
}

pub(super) fn export(
    r: &repo::Repository,
    spec: &str,
    dir: &str,
    monolithic: bool,
    common: &Common,
) -> Result<()> {
    let remote = backup::RemoteOptions {
        identity_file: common.remote.identity.clone(),
        accept_new_host_key: common.remote.accept_new_host_key,
        tempdir: None,
    };
    let mut dest = backup::dest::open_with(dir, &remote)?;
    let format = if monolithic {
        backup::ExportFormat::Monolithic
    } else {
        backup::ExportFormat::Split2Gb
    };
    let mut render = crate::cmd::backup::render::Render::new(if common.json { 0 } else { 3 });
    let catalog = backup::export_point(r, spec, dest.as_mut(), format, &mut render)?;
    if common.json {
        return print_json(&json!({"dir": dest.location(), "files": catalog.files.len()}));
    }
    println!(
        "Exported {} to {} ({} files)",
        catalog.display_name,
        dest.location(),
        catalog.files.len()
    );
    Ok(())
}

pub(super) fn key_added(kf: &repo::keys::KeyFile, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({"id": kf.id}));
    }
    println!("Added key {}", kf.id);
    Ok(())
}

pub(super) fn keys(r: &repo::Repository, as_json: bool) -> Result<()> {
    let keys = r.keys()?;
    if as_json {
        let v: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| json!({"id": k.id, "created": k.created, "user": k.user, "hostname": k.hostname, "label": k.label, "kdf": k.kdf_params}))
            .collect();
        return print_json(&v);
    }
    println!(
        "{:<16}  {:<19}  {:<12}  {:<16}  LABEL",
        "ID", "CREATED", "USER", "HOST"
    );
    for k in keys {
        println!(
            "{:<16}  {:<19}  {:<12}  {:<16}  {}",
            k.id,
            local_time(k.created),
            k.user,
            k.hostname,
            k.label
        );
    }
    Ok(())
}
