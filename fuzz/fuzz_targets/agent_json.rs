//! A guest agent's answers (a hostile guest writes them): the sync, the address list and
//! a command's reply, read from a socket that serves the fuzzer's bytes and closes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let sock = dir.path().join("qga.sock");
    let Ok(listener) = std::os::unix::net::UnixListener::bind(&sock) else { return };
    let bytes = data.to_vec();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&bytes);
        }
    });
    runtime::fuzzing::agent_session(&sock, Duration::from_millis(200));
    let _ = server.join();
});
