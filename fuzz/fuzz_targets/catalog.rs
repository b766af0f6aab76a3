//! Backup catalogs: parse, render, parse again (untrusted: they come with the backup).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dict) = vmx::Dict::parse_bytes(data) else { return };
    let Ok(c) = vmx::Catalog::from_dict(&dict) else { return };
    let rendered = c.to_dict().expect("a parsed catalog renders").to_string();
    let again = vmx::Dict::parse(&rendered).expect("rendered catalog parses");
    let c2 = vmx::Catalog::from_dict(&again).expect("rendered catalog is a catalog");
    assert_eq!(c2.files, c.files);
    assert_eq!(c2.disks, c.disks);
});
