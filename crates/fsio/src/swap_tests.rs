use super::*;

/// Old files a, b, c; new files a, b, d (c removed). Returns the folder.
fn setup(dir: &Path) -> Swap {
    for (n, t) in [("a", "old-a"), ("b", "old-b"), ("c", "old-c")] {
        std::fs::write(dir.join(n), t).unwrap();
    }
    let mut s = Swap::new(&dir.join(".journal"));
    for n in ["a", "b", "d"] {
        let staged = dir.join(format!(".{n}.new"));
        std::fs::write(&staged, format!("new-{n}")).unwrap();
        s.replace(&dir.join(n), &staged);
    }
    s.remove(&dir.join("c"));
    s
}

fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn commit_replaces_everything() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path()).commit().unwrap();
    assert_eq!(
        contents(dir.path()),
        pairs(&[("a", "new-a"), ("b", "new-b"), ("d", "new-d")])
    );
}

#[test]
fn a_crash_at_every_step_leaves_old_or_new_after_recovery() {
    let old = pairs(&[("a", "old-a"), ("b", "old-b"), ("c", "old-c")]);
    let new = pairs(&[("a", "new-a"), ("b", "new-b"), ("d", "new-d")]);
    let mut saw = BTreeSet::new();
    for n in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let swap = setup(dir.path());
        CRASH_AFTER.with(|c| c.set(Some(n)));
        let r = swap.commit();
        CRASH_AFTER.with(|c| c.set(None));
        let journal = dir.path().join(".journal");
        let outcome = recover(&journal, &|p| p.starts_with(dir.path())).unwrap();
        let got = contents(dir.path());
        if r.is_ok() {
            assert_eq!(outcome, Recovered::Nothing);
            assert_eq!(got, new, "step {n}");
        } else {
            assert!(got == old || got == new, "step {n}: {got:?}");
            saw.insert(got == new);
        }
        // Recovery is repeatable.
        assert_eq!(recover(&journal, &|_| true).unwrap(), Recovered::Nothing);
    }
    assert_eq!(
        saw.len(),
        2,
        "crashes were seen both before and after the commit point"
    );
}

#[test]
fn recovery_refuses_foreign_paths() {
    let dir = tempfile::tempdir().unwrap();
    let swap = setup(dir.path());
    CRASH_AFTER.with(|c| c.set(Some(2)));
    assert!(swap.commit().is_err());
    CRASH_AFTER.with(|c| c.set(None));
    let journal = dir.path().join(".journal");
    let e = recover(&journal, &|_| false).unwrap_err();
    assert!(matches!(e, Error::BadJournal { .. }), "{e}");
    // A staged name outside the target's folder is refused whatever accept says.
    let text = std::fs::read_to_string(&journal).unwrap();
    let evil = text.replace("/.a.new", "/../.a.new");
    std::fs::write(&journal, evil).unwrap();
    let e = recover(&journal, &|_| true).unwrap_err();
    assert!(e.to_string().contains("not a hidden file beside"), "{e}");
    std::fs::write(&journal, "{ not json").unwrap();
    assert!(matches!(
        recover(&journal, &|_| true),
        Err(Error::BadJournal { .. })
    ));
}

#[test]
fn staging_records_remove_what_a_killed_stager_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("keep.vmdk"), "x").unwrap();
    let record = d.join(".stage.json");
    let st = Staging::begin(&record, &[d.join(".vm.vcb-new-1234")]).unwrap();
    std::fs::write(d.join(".vm.vcb-new-1234.vmdk"), "staged").unwrap();
    std::fs::write(d.join(".vm.vcb-new-1234-flat.vmdk"), "staged").unwrap();
    drop(st); // killed: done() never ran
    assert_eq!(recover_staging(&record, &|p| p.starts_with(d)).unwrap(), 2);
    assert_eq!(contents(d), pairs(&[("keep.vmdk", "x")]));
    assert_eq!(recover_staging(&record, &|_| true).unwrap(), 0);
    // A prefix that is not hidden, or in a folder not accepted, is refused.
    Staging::begin(&record, &[d.join("keep")]).unwrap();
    assert!(recover_staging(&record, &|_| true).is_err());
    assert!(d.join("keep.vmdk").exists());
    Staging::begin(&record, &[d.join(".vm.vcb-new-9")]).unwrap();
    assert!(recover_staging(&record, &|_| false).is_err());
}
