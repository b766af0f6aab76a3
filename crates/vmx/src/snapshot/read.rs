//! Reading a .vmsd dictionary into a [`SnapshotDb`].

use std::collections::{BTreeMap, HashMap};

use super::{group_key, tree, Snapshot, SnapshotDb};
use crate::{Dict, DiskNode, Error};

/// One `snapshotN.suffix = value` entry.
struct Field<'a> {
    line: usize,
    key: &'a str,
    suffix: &'a str,
    value: &'a str,
}

/// The entries of one `snapshotN` group, looked up by lowercased suffix.
#[derive(Default)]
struct Group<'a> {
    fields: Vec<Field<'a>>,
    by_suffix: HashMap<String, usize>,
    used: Vec<bool>,
}

impl<'a> Group<'a> {
    fn push(&mut self, field: Field<'a>) {
        self.by_suffix
            .insert(field.suffix.to_ascii_lowercase(), self.fields.len());
        self.fields.push(field);
        self.used.push(false);
    }

    /// The field with `suffix` (any case), marked as used.
    fn take(&mut self, suffix: &str) -> Option<&Field<'a>> {
        let i = *self.by_suffix.get(&suffix.to_ascii_lowercase())?;
        if let Some(u) = self.used.get_mut(i) {
            *u = true;
        }
        self.fields.get(i)
    }

    fn required(&mut self, n: u32, suffix: &str) -> Result<&Field<'a>, Error> {
        self.take(suffix)
            .ok_or_else(|| Error::missing(format!("snapshot{n}.{suffix}")))
    }

    /// Fields not taken, in file order.
    fn unused(&self) -> Vec<(String, String)> {
        self.fields
            .iter()
            .zip(&self.used)
            .filter(|(_, used)| !**used)
            .map(|(f, _)| (f.suffix.to_owned(), f.value.to_owned()))
            .collect()
    }
}

fn number<T: std::str::FromStr>(field: &Field<'_>, expected: &str) -> Result<T, Error> {
    field
        .value
        .trim()
        .parse()
        .map_err(|_| Error::invalid_value(field.line, field.key, field.value, expected))
}

pub(super) fn from_dict(dict: &Dict) -> Result<SnapshotDb, Error> {
    let mut groups: BTreeMap<u32, Group<'_>> = BTreeMap::new();
    for (line, key, value) in dict.iter_lines() {
        match group_key(key) {
            None => {}
            Some(Err(())) => {
                let reason = "expected snapshot<N>.<field> with a decimal N";
                return Err(Error::invalid_value(line, key, value, reason));
            }
            Some(Ok((n, suffix))) => groups.entry(n).or_default().push(Field {
                line,
                key,
                suffix,
                value,
            }),
        }
    }
    let found = u64::try_from(groups.len()).unwrap_or(u64::MAX);
    if let Some(declared) = dict.get_u64("snapshot.numSnapshots")? {
        if declared != found {
            return Err(Error::SnapshotCountMismatch { declared, found });
        }
    }
    let mut snapshots = Vec::with_capacity(groups.len());
    let mut extras = HashMap::new();
    for (n, mut group) in groups {
        let snapshot = read_snapshot(n, &mut group)?;
        let unused = group.unused();
        if !unused.is_empty() {
            extras.insert(snapshot.uid, unused);
        }
        snapshots.push(snapshot);
    }
    tree::validate(&snapshots)?;
    let current = match dict.get_u64("snapshot.current")? {
        None | Some(0) => None,
        Some(uid) if snapshots.iter().any(|s| s.uid == uid) => Some(uid),
        Some(uid) => return Err(Error::UnknownSnapshot { uid }),
    };
    Ok(SnapshotDb {
        dict: dict.clone(),
        last_uid: dict.get_u64("snapshot.lastUID")?.unwrap_or(0),
        current,
        snapshots,
        extras,
    })
}

fn read_snapshot(n: u32, group: &mut Group<'_>) -> Result<Snapshot, Error> {
    let uid = number(group.required(n, "uid")?, "expected an unsigned integer")?;
    let filename = group.required(n, "filename")?.value.to_owned();
    let text = |g: &mut Group<'_>, suffix| g.take(suffix).map(|f| f.value.to_owned());
    let display_name = text(group, "displayName").unwrap_or_default();
    let description = text(group, "description").unwrap_or_default();
    let parent = match group.take("parent") {
        Some(f) => Some(number(f, "expected an unsigned integer")?),
        None => None,
    };
    let high: u64 = match group.take("createTimeHigh") {
        Some(f) => number::<u32>(f, "expected an unsigned 32-bit integer")?.into(),
        None => 0,
    };
    let low: u64 = match group.take("createTimeLow") {
        Some(f) => {
            let low: i64 = number(f, "expected a 32-bit integer")?;
            if low < i64::from(i32::MIN) || low > i64::from(u32::MAX) {
                return Err(Error::invalid_value(
                    f.line,
                    f.key,
                    f.value,
                    "expected a 32-bit integer",
                ));
            }
            // The low word is written signed or unsigned; keep its 32 bits.
            u64::try_from(low & 0xFFFF_FFFF).unwrap_or_default()
        }
        None => 0,
    };
    let total_fields = group.fields.len();
    let num_disks: usize = match group.take("numDisks") {
        Some(f) => {
            let count: usize = number(f, "expected an unsigned integer")?;
            // Every disk needs two entries; a larger count cannot be satisfied.
            if count > total_fields {
                return Err(Error::invalid_value(
                    f.line,
                    f.key,
                    f.value,
                    "more disks than entries",
                ));
            }
            count
        }
        None => 0,
    };
    let mut disks = Vec::with_capacity(num_disks);
    for m in 0..num_disks {
        let file = group
            .required(n, &format!("disk{m}.fileName"))?
            .value
            .to_owned();
        let f = group.required(n, &format!("disk{m}.node"))?;
        let node: DiskNode = f
            .value
            .parse()
            .map_err(|e| Error::invalid_value(f.line, f.key, f.value, e))?;
        disks.push((node, file));
    }
    Ok(Snapshot {
        uid,
        display_name,
        description,
        parent,
        create_time_micros: high << 32 | low,
        filename,
        disks,
    })
}
