//! Whole small images through guestfs's volumes reader: no panic, bounded work.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestfs::fuzzing::contain_ntfs_crate_panics();
    guestfs::fuzzing::exercise(guestfs::fuzzing::Reader::Volumes, data);
});

