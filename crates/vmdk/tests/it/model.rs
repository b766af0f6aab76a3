//! Property test: random writes through random chains (create child, write, commit,
//! convert) always read back equal to a plain in-memory model.

use proptest::prelude::*;
use vmdk::{ChildFormat, CreateSpec, Disk, DiskFormat, OpenOptions};

const CAPACITY: usize = 3 << 20;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: usize, len: usize, byte: u8 },
    Child(bool),
    CommitTop,
    Convert(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..CAPACITY, 1..300_000usize, any::<u8>()).prop_map(|(o, l, b)| {
            let l = l.min(CAPACITY - o);
            Op::Write { offset: o, len: l.max(1).min(CAPACITY - o), byte: b }
        }),
        2 => any::<bool>().prop_map(Op::Child),
        1 => Just(Op::CommitTop),
        1 => (0u8..6).prop_map(Op::Convert),
    ]
}

fn format_of(i: u8) -> DiskFormat {
    match i {
        0 => DiskFormat::Thin,
        1 => DiskFormat::ZeroedThick,
        2 => DiskFormat::MonoSparse,
        3 => DiskFormat::TwoGbSparse,
        4 => DiskFormat::MonoFlat,
        _ => DiskFormat::TwoGbFlat,
    }
}

fn read_all(top: &std::path::Path) -> Vec<u8> {
    let mut d = Disk::open(top, &OpenOptions::read_only()).expect("open chain");
    let mut v = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut v).expect("read chain");
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn chains_behave_like_a_flat_model(base in 0u8..6, ops in proptest::collection::vec(op(), 1..14)) {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        let name = |n: &mut u32| { *n += 1; dir.path().join(format!("d{n}.vmdk")) };
        let mut top = name(&mut n);
        vmdk::create(&top, &CreateSpec::new(CAPACITY as u64, format_of(base))).unwrap();
        let mut chain = vec![top.clone()];
        let mut model = vec![0u8; CAPACITY];
        for op in ops {
            match op {
                Op::Write { offset, len, byte } => {
                    let mut d = Disk::open(&top, &OpenOptions::writable()).unwrap();
                    d.write_at(offset as u64, &vec![byte; len]).unwrap();
                    d.close().unwrap();
                    model[offset..offset + len].fill(byte);
                }
                Op::Child(hosted) => {
                    let child = name(&mut n);
                    let f = if hosted { ChildFormat::HostedSparse } else { ChildFormat::VmfsSparse };
                    vmdk::create_child(&top, &child, f).unwrap();
                    chain.push(child.clone());
                    top = child;
                }
                Op::CommitTop => {
                    if chain.len() > 1 {
                        let parent = vmdk::commit(&top, None, &OpenOptions::read_only(), &mut ()).unwrap();
                        chain.pop();
                        prop_assert_eq!(&parent, chain.last().unwrap());
                        top = parent;
                    }
                }
                Op::Convert(f) => {
                    let dst = name(&mut n);
                    let mut src = Disk::open(&top, &OpenOptions::read_only()).unwrap();
                    vmdk::convert(&mut src, &dst, &CreateSpec::new(0, format_of(f)), &mut ()).unwrap();
                    chain = vec![dst.clone()];
                    top = dst;
                }
            }
            prop_assert!(read_all(&top) == model, "chain {:?} differs from the model", chain);
        }
    }
}
