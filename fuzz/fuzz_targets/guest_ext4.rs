//! Whole small images through guestfs's ext4 reader: no panic, bounded work.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestfs::fuzzing::exercise(guestfs::fuzzing::Reader::Ext4, data);
});
