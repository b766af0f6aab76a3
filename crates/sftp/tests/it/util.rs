//! Helpers shared by the tests: random data, digests, progress recording, deadlines.

use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

/// `len` bytes of random data.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    data
}

/// Hex SHA-256.
pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Records every progress call.
#[derive(Debug, Default)]
pub struct Recorder {
    pub started: Option<Option<u64>>,
    pub advanced: u64,
    pub calls: usize,
    pub finished: bool,
    /// Stop (Break) once this many bytes were reported.
    pub cancel_after: Option<u64>,
}

impl sftp::Progress for Recorder {
    fn start(&mut self, total_bytes: Option<u64>) {
        self.started = Some(total_bytes);
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.advanced += bytes;
        self.calls += 1;
        match self.cancel_after {
            Some(limit) if self.advanced >= limit => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
    fn finish(&mut self) {
        self.finished = true;
    }
}

/// Run `f` on a thread and fail the test if it does not return within `secs`.
pub fn within<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {secs} s (hang)"),
    }
}
