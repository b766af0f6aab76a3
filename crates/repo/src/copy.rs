//! `copy`: points of one repository into another (an off-site copy).
//!
//! Each point the target lacks (by point id) is written there by an ordinary
//! [`BackupWriter`], with the target's latest point of the same VM as its base, so only
//! chunks the target lacks travel. When both repositories share their master key
//! (`init --from`), chunk ids agree and chunks the target has are not even read from the
//! source; otherwise every chunk is read, authenticated, re-identified and re-encrypted
//! under the target's key. The copy keeps the point's id, time and catalog.

use crate::error::{Error, Result};
use crate::point::{Point, Stats};
use crate::reader::BlobReader;
use crate::repository::Repository;
use crate::writer::{Advance, BackupWriter, PointInfo, StoreProgress, WriterOptions};
use crate::Progress;
use std::collections::HashSet;
use std::ops::ControlFlow;

/// What a copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// Points copied (ids).
    pub copied: Vec<String>,
    /// Points the target had already.
    pub present: Vec<String>,
    /// Totals of the copied points.
    pub stats: Stats,
}

/// Copy the points of `src` (only those of VM `vm` when given) into `dst`.
///
/// # Errors
/// Damaged or missing objects of the source (the point being copied is then not
/// written), backend errors, [`Error::Cancelled`].
pub fn copy(
    src: &Repository,
    dst: &Repository,
    vm: Option<&str>,
    progress: &mut dyn Progress,
) -> Result<CopyReport> {
    let (points, bad) = src.points()?;
    if let Some(e) = bad.into_iter().next() {
        return Err(e);
    }
    let have: HashSet<String> = dst
        .point_names()?
        .into_iter()
        .filter_map(|n| n.rsplit('/').next().map(str::to_owned))
        .collect();
    let mut report = CopyReport::default();
    for p in points
        .iter()
        .filter(|p| vm.is_none_or(|v| p.vm.name == v || p.vm.uuid.as_deref() == Some(v)))
    {
        if have.contains(&p.id) {
            report.present.push(p.id.clone());
            continue;
        }
        let total = p.disks.iter().map(|d| d.capacity).sum();
        progress.phase(&format!("{} {}", p.vm.name, p.id), Some(total));
        let copied = copy_point(src, dst, p, progress)?;
        report.stats.add(&copied.stats);
        report.copied.push(copied.id);
    }
    Ok(report)
}

fn copy_point(
    src: &Repository,
    dst: &Repository,
    p: &Point,
    progress: &mut dyn Progress,
) -> Result<Point> {
    let opts = WriterOptions {
        point_id: Some(p.id.clone()),
        no_base: false,
        purpose: "copy".into(),
    };
    let mut w = BackupWriter::begin(dst, p.vm.clone(), &opts, Box::new(|| false))?;
    let written = (|| {
        for f in &p.files {
            w.put_file(&f.name, &mut BlobReader::new(src, f))?;
        }
        for d in &p.disks {
            let mut bytes = Bytes(progress);
            w.copy_disk(src, d, &mut bytes)?;
        }
        Ok::<(), Error>(())
    })();
    if let Err(e) = written {
        w.abort();
        return Err(e);
    }
    w.finish(PointInfo {
        time: p.time,
        written_ns: Some(p.written_ns),
        host: p.host.clone(),
        quiesced: p.quiesced,
        power_state: p.power_state.clone(),
        catalog: p.catalog.clone(),
        tool_version: p.tool_version.clone(),
    })
}

/// Forwards covered bytes to a [`Progress`].
struct Bytes<'a>(&'a mut dyn Progress);

impl StoreProgress for Bytes<'_> {
    fn advance(&mut self, step: &Advance) -> ControlFlow<()> {
        self.0.advance(step.covered);
        if self.0.cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}
