//! LVM2 metadata text through guestfs's parser: no panic, bounded depth.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = guestfs::lvm::parse(text);
    }
});
