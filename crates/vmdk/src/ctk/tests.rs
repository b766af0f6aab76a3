use super::*;

fn tracking() -> Tracking {
    Tracking::new(10 * 1024 * 1024 + 512, "vm.vmdk", 0x1234_5678)
}

#[test]
fn change_ids_round_trip_through_text() {
    let id = tracking().current();
    let text = id.to_string();
    assert_eq!(text.len(), 36 + 2);
    assert_eq!(text.parse::<ChangeId>().unwrap(), id);
    for bad in [
        "",
        "*",
        "abc/1",
        "00000000-0000-0000-0000-000000000000",
        "0000000000000000000000000000000000000/1",
        "00000000-0000-0000-0000-00000000000g/1",
        "00000000-0000-0000-0000-000000000000/x",
    ] {
        assert!(bad.parse::<ChangeId>().is_err(), "{bad}");
    }
}

#[test]
fn writes_after_a_checkpoint_are_changed_since_it() {
    let mut t = tracking();
    t.mark(0, 1);
    let first = t.checkpoint();
    t.mark(3 * MIN_BLOCK + 5, MIN_BLOCK);
    t.mark(10 * 1024 * 1024, 512);
    let second = t.checkpoint();
    t.mark(MIN_BLOCK, 1);
    assert_eq!(
        t.changed_since(&first).unwrap(),
        vec![
            (MIN_BLOCK, MIN_BLOCK),
            (3 * MIN_BLOCK, 2 * MIN_BLOCK),
            (10 * 1024 * 1024, 512)
        ]
    );
    assert_eq!(
        t.changed_since(&second).unwrap(),
        vec![(MIN_BLOCK, MIN_BLOCK)]
    );
    assert!(t.changed_since(&t.current()).is_err(), "never handed out");
    let other = tracking();
    assert!(t
        .changed_since(&other.current())
        .unwrap_err()
        .to_string()
        .contains("another tracking epoch"));
}

#[test]
fn marks_past_the_end_are_clipped() {
    let mut t = tracking();
    let id = t.checkpoint();
    t.mark(t.capacity() - 1, 1 << 40);
    // Found by the ctk_file fuzz target: a length reaching past u64::MAX overflowed.
    t.mark(t.capacity() / 2, u64::MAX);
    t.mark(t.capacity() - 1, u64::MAX);
    t.mark(t.capacity(), 10);
    t.mark(0, 0);
    assert_eq!(
        t.changed_since(&id).unwrap(),
        vec![(5 * 1024 * 1024, 5 * 1024 * 1024 + 512)]
    );
}

#[test]
fn files_round_trip_and_damage_is_refused() {
    let mut t = tracking();
    t.mark(MIN_BLOCK * 7, 9);
    t.checkpoint();
    t.state = State::Live {
        session: "s1".into(),
    };
    let bytes = t.to_bytes().unwrap();
    assert_eq!(Tracking::parse(&bytes).unwrap(), t);
    for i in [0, 9, 13, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(Tracking::parse(&bad).is_err(), "flip at {i}");
    }
    for n in [0, 3, 8, 20, bytes.len() - 1] {
        assert!(Tracking::parse(&bytes[..n]).is_err(), "cut at {n}");
    }
}

#[test]
fn validity_names_the_reason() {
    let mut t = tracking();
    let cap = t.capacity();
    assert_eq!(t.invalid_reason("vm.vmdk", 0x1234_5678, cap), None);
    assert!(t
        .invalid_reason("vm-000001.vmdk", 0x1234_5678, cap)
        .unwrap()
        .contains("belongs to vm.vmdk"));
    assert!(t
        .invalid_reason("vm.vmdk", 1, cap)
        .unwrap()
        .contains("without tracking"));
    assert!(t
        .invalid_reason("vm.vmdk", 0x1234_5678, cap * 2)
        .unwrap()
        .contains("size changed"));
    t.state = State::Writing { pid: 7 };
    assert!(t
        .invalid_reason("vm.vmdk", 0x1234_5678, cap)
        .unwrap()
        .contains("process 7"));
}

#[test]
fn big_disks_get_bigger_blocks() {
    assert_eq!(block_size_for(8 << 30), MIN_BLOCK);
    assert_eq!(block_size_for(2 << 40), 2 << 20);
    assert!((2u64 << 40).div_ceil(block_size_for(2 << 40)) <= MAX_BLOCKS);
}

#[test]
fn names() {
    assert_eq!(
        ctk_path(Path::new("/a/vm-000001.vmdk")),
        Path::new("/a/vm-000001-ctk.vmdk")
    );
    assert!(is_ctk_name("vm-ctk.vmdk"));
    assert!(!is_ctk_name("vm.vmdk"));
}
