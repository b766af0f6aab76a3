//! known_hosts files (plain, hashed, markers, patterns): looked up without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for name in ["nas", "[127.0.0.1]:2222", "host.example.com"] {
        sftp::fuzzing::known_hosts(&text, name);
    }
});
