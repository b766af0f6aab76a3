//! QMP from a monitor socket: the greeting, answers and events are the fuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let sock = dir.path().join("qmp.sock");
    let Ok(listener) = std::os::unix::net::UnixListener::bind(&sock) else { return };
    let bytes = data.to_vec();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&bytes);
        }
    });
    if let Ok(mut q) = runtime::Qmp::connect(&sock, Duration::from_millis(200)) {
        let _ = q.execute_within("query-status", serde_json::Value::Null, Duration::from_millis(100));
        let _ = q.take_events();
    }
    let _ = server.join();
});
