//! Bytes an NBD server sends (a hostile or broken server, or QEMU's own replies): the
//! client's handshake, option replies and structured block-status replies must fail
//! cleanly, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let Ok((client, mut server)) = UnixStream::pair() else { return };
    let bytes = data.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = server.write_all(&bytes);
        // Closing the server's end turns the client's next read into an error.
    });
    if let Ok(mut c) = nbd::Client::over(client, "vcb-ctk", "qemu:dirty-bitmap:vcb-ctk-1") {
        let size = c.size().min(1 << 30);
        let _ = c.block_status(0, size);
        c.close();
    }
    let _ = feeder.join();
});
