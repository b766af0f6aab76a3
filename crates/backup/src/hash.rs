//! SHA-256 of files and streams, as the catalog records them.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// A SHA-256 digest.
pub type Sha256Sum = [u8; 32];

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far and the SHA-256 of them.
    pub fn finish(self) -> (u64, Sha256Sum) {
        (self.bytes, self.hasher.finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Size and SHA-256 of everything `r` yields; `what` names the source in errors.
pub fn hash_reader(r: &mut dyn Read, what: &Path) -> Result<(u64, Sha256Sum)> {
    let mut h = HashingReader::new(r);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match h.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(what, "read", e)),
        }
    }
}

/// Size and SHA-256 of the file at `path`.
pub fn hash_file(path: &Path) -> Result<(u64, Sha256Sum)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    hash_reader(&mut f, path)
}

/// 64 lowercase hex digits.
pub fn to_hex(sum: &Sha256Sum) -> String {
    hex::encode(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        let (n, sum) = hash_reader(&mut &b"abc"[..], Path::new("x")).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            to_hex(&sum),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
