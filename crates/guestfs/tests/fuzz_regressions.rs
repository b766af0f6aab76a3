//! Inputs the fuzz targets once crashed on (`tests/fuzz/<reader>-crash-*`): each must now
//! be read without a panic.

use guestfs::fuzzing::{exercise, Reader};

#[test]
fn former_fuzz_crashes_are_read_without_panicking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let reader = match name.split('-').next().unwrap() {
            "ext4" => Reader::Ext4,
            "xfs" => Reader::Xfs,
            "fat" => Reader::Fat,
            "ntfs" => Reader::Ntfs,
            "volumes" => Reader::Volumes,
            other => panic!("{name}: unknown reader {other}"),
        };
        exercise(reader, &std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 3, "the regression inputs are there");
}
