//! ssh_config files: Host blocks, patterns, quoting, Include lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for alias in ["nas", "backup-7", ""] {
        sftp::fuzzing::ssh_config(&text, alias);
    }
});
