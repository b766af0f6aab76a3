//! `vcb disk changed-areas DISK --since CHANGEID|*`: VMware's QueryChangedDiskAreas.

use super::Common;
use anyhow::{bail, Result};
use std::io::Write;
use std::path::Path;
use vmdk::ctk::{self, ChangeId, Status};
use vmdk::{BlockState, Disk};

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    /// The disk's capacity, bytes.
    length: u64,
    /// The change ID a checkpoint now would hand out (absent when untracked).
    #[serde(skip_serializing_if = "Option::is_none")]
    change_id: Option<String>,
    changed_area: Vec<Area>,
}

#[derive(serde::Serialize)]
struct Area {
    start: u64,
    length: u64,
}

/// Prints the areas of `disk` changed since `since` (`*`: every allocated area).
pub fn changed_areas(disk: &Path, since: &str, json: bool, common: &Common) -> Result<()> {
    let status = ctk::status(disk)?;
    let (areas, change_id, length) = if since == "*" {
        let mut d = Disk::open(disk, &common.open_options(disk, false))?;
        let areas = d
            .allocation()?
            .into_iter()
            .filter(|r| r.state == BlockState::Data)
            .map(|r| (r.offset, r.len))
            .collect();
        let id = match &status {
            Status::Valid(t) => Some(t.current().to_string()),
            _ => None,
        };
        (areas, id, d.capacity())
    } else {
        let since: ChangeId = since.parse()?;
        let t = match status {
            Status::Valid(t) => t,
            Status::Untracked => bail!(
                "{}: no change tracking (vcb vm ctk enable VM turns it on)",
                disk.display()
            ),
            Status::Invalid(why) => bail!(
                "{}: change tracking was lost ({why}); ask with --since '*'",
                disk.display()
            ),
        };
        (
            t.changed_since(&since)?,
            Some(t.current().to_string()),
            t.capacity(),
        )
    };
    let mut out = std::io::stdout().lock();
    if json {
        let answer = Answer {
            length,
            change_id,
            changed_area: areas
                .iter()
                .map(|&(start, length)| Area { start, length })
                .collect(),
        };
        serde_json::to_writer_pretty(&mut out, &answer)?;
        writeln!(out)?;
    } else {
        for (start, len) in &areas {
            writeln!(out, "{start:>16} {len:>16}")?;
        }
        let total: u64 = areas.iter().map(|a| a.1).sum();
        eprintln!("{} areas, {} of {} bytes", areas.len(), total, length);
    }
    Ok(())
}
