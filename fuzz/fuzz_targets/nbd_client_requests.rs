//! Bytes an NBD client sends to the host agent's server (any peer can connect): option
//! haggling, then requests against a small read-only or writable export. The server must
//! answer or hang up, never panic, never allocate beyond the advertised limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

struct Mem {
    data: Vec<u8>,
    writable: bool,
}

impl nbd::Export for Mem {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn writable(&self) -> bool {
        self.writable
    }
    fn open(&self) -> std::io::Result<Box<dyn nbd::Backend>> {
        Ok(Box::new(MemBackend(self.data.clone())))
    }
}

struct MemBackend(Vec<u8>);

impl nbd::Backend for MemBackend {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
    fn extents(&mut self, offset: u64, len: u64) -> std::io::Result<Vec<(u64, u32)>> {
        let half = self.0.len() as u64 / 2;
        Ok(if offset < half {
            vec![((half - offset).min(len), 0)]
        } else {
            vec![(len, nbd::STATE_HOLE | nbd::STATE_ZERO)]
        })
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let at = offset as usize;
        self.0[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

struct Table;

impl nbd::Exports for Table {
    fn find(&self, name: &str) -> Option<Arc<dyn nbd::Export>> {
        let writable = match name {
            "ro" => false,
            "rw" => true,
            _ => return None,
        };
        Some(Arc::new(Mem {
            data: vec![7u8; 1 << 16],
            writable,
        }))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((server, mut client)) = UnixStream::pair() else { return };
    let config = nbd::ServerConfig {
        negotiation_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let worker = std::thread::spawn(move || {
        let _ = nbd::serve_unix(server, &config, &Table);
    });
    let bytes = data.to_vec();
    let _ = client.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = client.write_all(&bytes);
    let _ = client.shutdown(std::net::Shutdown::Write);
    // Drain what the server answers so it never blocks on a full socket.
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 65536];
    while let Ok(n) = client.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    let _ = worker.join();
});
