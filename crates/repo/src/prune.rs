//! `prune`: keep points by a grandfather-father-son policy, per VM group.
//!
//! The rules are restic's and Proxmox Backup's: within each VM group, points are taken
//! newest first; `--keep-last N` keeps the N newest; `--keep-hourly N` keeps the newest
//! point of each of the N most recent hours that have one, and likewise for days, ISO
//! weeks, months and years (local time). A point kept by any rule stays. Pruning removes
//! only manifests (and their verify records); `gc` then frees the chunks nobody uses.

use crate::error::{Error, Result};
use crate::point::Point;
use crate::repository::Repository;
use crate::Progress;
use std::collections::{BTreeMap, HashSet};

/// How many points of each kind to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: Option<u32>,
    /// One per hour, for the N most recent hours with a point.
    pub hourly: Option<u32>,
    /// One per day.
    pub daily: Option<u32>,
    /// One per ISO week.
    pub weekly: Option<u32>,
    /// One per month.
    pub monthly: Option<u32>,
    /// One per year.
    pub yearly: Option<u32>,
}

impl KeepPolicy {
    /// True when no rule is set (pruning would remove everything: refused).
    pub fn is_empty(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .all(Option::is_none)
    }
}

/// One point's fate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    /// Point id.
    pub id: String,
    /// VM name.
    pub vm: String,
    /// Time.
    pub time: u64,
    /// Kept?
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`...).
    pub reasons: Vec<&'static str>,
}

/// Decide which of one group's points stay. `points` in any order; the result is newest
/// first.
pub fn decide(points: &[Point], policy: &KeepPolicy) -> Vec<Decision> {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by(|a, b| b.order_key().cmp(&a.order_key()));
    let mut out: Vec<Decision> = sorted
        .iter()
        .map(|p| Decision {
            id: p.id.clone(),
            vm: p.vm.name.clone(),
            time: p.time,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    if let Some(n) = policy.last {
        for d in out.iter_mut().take(n as usize) {
            d.keep = true;
            d.reasons.push("last");
        }
    }
    let rules: [(Option<u32>, &'static str, Bucket); 5] = [
        (policy.hourly, "hourly", |t| (t.year, t.yday, t.hour, 0)),
        (policy.daily, "daily", |t| (t.year, t.yday, 0, 0)),
        (policy.weekly, "weekly", |t| {
            let (y, w) = t.iso_week();
            (y, w, 0, 0)
        }),
        (policy.monthly, "monthly", |t| (t.year, t.month, 0, 0)),
        (policy.yearly, "yearly", |t| (t.year, 0, 0, 0)),
    ];
    for (count, name, bucket) in rules {
        let Some(n) = count else { continue };
        let mut seen = HashSet::new();
        for d in &mut out {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(&Tm::local(d.time))) {
                d.keep = true;
                d.reasons.push(name);
            }
        }
    }
    out
}

/// Apply `policy` to every group of `repo` (or only points of VM `vm`, by name or
/// uuid). With `dry_run` nothing is removed.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty policy; backend errors.
pub fn prune(
    repo: &Repository,
    vm: Option<&str>,
    policy: &KeepPolicy,
    dry_run: bool,
    progress: &mut dyn Progress,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::InvalidArgument(
            "no --keep-* rule given: prune would remove every point (refused)".into(),
        ));
    }
    let (points, bad) = repo.points()?;
    if let Some(e) = bad.into_iter().next() {
        // A point that cannot be read cannot be placed in its group's history.
        return Err(e);
    }
    let mut groups: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for p in points {
        if vm.is_none_or(|v| p.vm.name == v || p.vm.uuid.as_deref() == Some(v)) {
            groups.entry(p.group.clone()).or_default().push(p);
        }
    }
    let mut all = Vec::new();
    for (group, pts) in groups {
        let decisions = decide(&pts, policy);
        progress.phase(
            "removing points",
            Some(decisions.iter().filter(|d| !d.keep).count() as u64),
        );
        for d in decisions.iter().filter(|d| !d.keep) {
            if !dry_run {
                repo.backend().delete(&Point::object_name(&group, &d.id))?;
                repo.backend().delete(&format!("verify/{}", d.id))?;
            }
            progress.advance(1);
        }
        all.extend(decisions);
    }
    Ok(all)
}

/// The calendar bucket a time falls in, for one rule.
type Bucket = fn(&Tm) -> (i32, i32, i32, i32);

/// Broken-down local time.
#[derive(Debug, Clone, Copy)]
struct Tm {
    year: i32,
    month: i32,
    yday: i32,
    wday: i32,
    hour: i32,
}

impl Tm {
    fn local(secs: u64) -> Tm {
        let t = libc::time_t::try_from(secs).unwrap_or(0);
        // SAFETY: localtime_r writes into the zeroed struct we own.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        unsafe { libc::localtime_r(&t, &mut tm) };
        Tm {
            year: tm.tm_year + 1900,
            month: tm.tm_mon,
            yday: tm.tm_yday,
            wday: tm.tm_wday,
            hour: tm.tm_hour,
        }
    }

    /// ISO 8601 (year, week): the week belongs to the year holding its Thursday.
    fn iso_week(&self) -> (i32, i32) {
        let days_in = |y: i32| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        };
        let monday_based = (self.wday + 6) % 7;
        let mut thursday = self.yday - monday_based + 3;
        let mut year = self.year;
        if thursday < 0 {
            year -= 1;
            thursday += days_in(year);
        } else if thursday >= days_in(year) {
            thursday -= days_in(year);
            year += 1;
        }
        (year, thursday / 7 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, time: u64) -> Point {
        Point {
            version: 1,
            id: id.into(),
            group: "g".into(),
            vm: crate::point::VmInfo {
                name: "vm".into(),
                uuid: None,
            },
            time,
            written_ns: 0,
            host: None,
            hostname: String::new(),
            quiesced: false,
            power_state: "poweredOff".into(),
            catalog: String::new(),
            files: vec![],
            disks: vec![],
            parent: None,
            stats: Default::default(),
            tool_version: String::new(),
        }
    }

    #[test]
    fn gfs_keeps_the_newest_of_each_bucket() {
        std::env::set_var("TZ", "UTC");
        let day = 86_400u64;
        // Two points a day for 40 days, starting 2026-01-01 00:00 UTC.
        let base = 1_767_225_600u64;
        let pts: Vec<Point> = (0..80)
            .map(|i| point(&format!("{i:02}"), base + (i / 2) * day + (i % 2) * 3600))
            .collect();
        let keep = |p: KeepPolicy| -> Vec<String> {
            decide(&pts, &p)
                .into_iter()
                .filter(|d| d.keep)
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(
            keep(KeepPolicy {
                last: Some(3),
                ..Default::default()
            }),
            ["79", "78", "77"]
        );
        // The newest of each of the last 3 days.
        assert_eq!(
            keep(KeepPolicy {
                daily: Some(3),
                ..Default::default()
            }),
            ["79", "77", "75"]
        );
        // Months: February (last point) and January (its newest: day 30, the 2nd point).
        assert_eq!(
            keep(KeepPolicy {
                monthly: Some(5),
                ..Default::default()
            }),
            ["79", "61"]
        );
        let both = keep(KeepPolicy {
            last: Some(1),
            weekly: Some(2),
            ..Default::default()
        });
        assert_eq!(both[0], "79");
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(KeepPolicy::default().is_empty());
    }

    #[test]
    fn iso_weeks_match_known_dates() {
        std::env::set_var("TZ", "UTC");
        // 2026-01-01 is a Thursday: week 1 of 2026. 2027-01-01 (Friday): week 53 of 2026.
        assert_eq!(Tm::local(1_767_225_600).iso_week(), (2026, 1));
        assert_eq!(Tm::local(1_798_761_600).iso_week(), (2026, 53));
        // 2024-12-30 (Monday): week 1 of 2025.
        assert_eq!(Tm::local(1_735_516_800).iso_week(), (2025, 1));
    }
}
