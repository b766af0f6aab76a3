//! Tree checks and walks over a snapshot list, iterative so a deep chain cannot overflow
//! the stack.

use std::collections::HashMap;

use super::Snapshot;
use crate::Error;

/// Checks that uids are unique, every parent exists, and no snapshot is its own
/// ancestor.
pub(super) fn validate(snapshots: &[Snapshot]) -> Result<(), Error> {
    let mut parent_of: HashMap<u64, Option<u64>> = HashMap::with_capacity(snapshots.len());
    for s in snapshots {
        if parent_of.insert(s.uid, s.parent).is_some() {
            return Err(Error::DuplicateSnapshotUid { uid: s.uid });
        }
    }
    for s in snapshots {
        if let Some(parent) = s.parent {
            if !parent_of.contains_key(&parent) {
                return Err(Error::UnknownParent { uid: s.uid, parent });
            }
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: HashMap<u64, Mark> = HashMap::with_capacity(snapshots.len());
    for s in snapshots {
        let mut path = Vec::new();
        let mut next = Some(s.uid);
        while let Some(uid) = next {
            match marks.get(&uid) {
                Some(Mark::Done) => break,
                Some(Mark::OnPath) => return Err(Error::SnapshotCycle { uid }),
                None => {}
            }
            marks.insert(uid, Mark::OnPath);
            path.push(uid);
            next = parent_of.get(&uid).copied().flatten();
        }
        for uid in path {
            marks.insert(uid, Mark::Done);
        }
    }
    Ok(())
}

/// Depth-first pre-order from the roots, siblings in list order, with depths.
pub(super) fn walk(snapshots: &[Snapshot]) -> Vec<(usize, &Snapshot)> {
    let mut children: HashMap<Option<u64>, Vec<&Snapshot>> = HashMap::new();
    for s in snapshots {
        children.entry(s.parent).or_default().push(s);
    }
    let mut out = Vec::with_capacity(snapshots.len());
    let mut stack: Vec<(usize, &Snapshot)> = Vec::new();
    if let Some(roots) = children.get(&None) {
        stack.extend(roots.iter().rev().map(|&s| (0, s)));
    }
    while let Some((depth, s)) = stack.pop() {
        out.push((depth, s));
        if let Some(kids) = children.get(&Some(s.uid)) {
            stack.extend(kids.iter().rev().map(|&k| (depth + 1, k)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(uid: u64, parent: Option<u64>) -> Snapshot {
        Snapshot {
            uid,
            parent,
            ..Snapshot::default()
        }
    }

    #[test]
    fn walk_is_preorder_with_depths() {
        let list = [
            snap(1, None),
            snap(2, Some(1)),
            snap(3, Some(2)),
            snap(4, Some(1)),
            snap(5, None),
        ];
        validate(&list).unwrap();
        let order: Vec<(usize, u64)> = walk(&list).into_iter().map(|(d, s)| (d, s.uid)).collect();
        assert_eq!(order, [(0, 1), (1, 2), (2, 3), (1, 4), (0, 5)]);
    }

    #[test]
    fn deep_chains_do_not_recurse() {
        let list: Vec<Snapshot> = (1..=200_000u64)
            .map(|uid| snap(uid, uid.checked_sub(1).filter(|&p| p > 0)))
            .collect();
        validate(&list).unwrap();
        assert_eq!(walk(&list).last().map(|(d, _)| *d), Some(199_999));
    }

    #[test]
    fn error_snapshot_cycle() {
        let list = [
            snap(1, None),
            snap(2, Some(3)),
            snap(3, Some(4)),
            snap(4, Some(2)),
        ];
        assert!(matches!(validate(&list), Err(Error::SnapshotCycle { .. })));
        let selfish = [snap(7, Some(7))];
        assert!(matches!(
            validate(&selfish),
            Err(Error::SnapshotCycle { uid: 7 })
        ));
    }

    #[test]
    fn error_duplicate_snapshot_uid() {
        let list = [snap(1, None), snap(1, None)];
        assert!(matches!(
            validate(&list),
            Err(Error::DuplicateSnapshotUid { uid: 1 })
        ));
    }

    #[test]
    fn error_unknown_parent() {
        let list = [snap(1, Some(9))];
        assert!(matches!(
            validate(&list),
            Err(Error::UnknownParent { uid: 1, parent: 9 })
        ));
    }
}
