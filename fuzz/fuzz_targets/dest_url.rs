//! Destination strings as users and catalogs give them: paths, file://, scp://, sftp://.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(url) = sftp::RemoteUrl::parse(text) {
        let _ = url.join("catalog");
        let _ = url.to_string();
    }
    let _ = backup::LocalDir::parse(text);
    let _ = text.parse::<vmx::DatastorePath>();
});
