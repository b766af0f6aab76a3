//! Bytes an NBD server sends (a hostile or broken server, or QEMU's own replies): the
//! client's handshake, option replies, structured block-status and read replies must
//! fail cleanly, never panic or allocate without bound.
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
        // Read replies (structured data and hole chunks, errors) of a hostile server.
        let mut buf = vec![0u8; (size as usize).min(64 << 10)];
        let _ = c.read_at(0, &mut buf);
        let _ = c.write_at(0, &buf[..buf.len().min(512)]);
        c.close();
    }
    let _ = feeder.join();
});
