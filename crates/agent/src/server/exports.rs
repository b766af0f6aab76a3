//! The NBD exports of live sessions: each named by a random ticket, each reading one
//! static VMDK chain (a fresh `vmdk::Disk` per connection).

use nbd::{Backend, Export, Exports, STATE_HOLE, STATE_ZERO};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Every export of every live session.
#[derive(Default)]
pub(crate) struct ExportTable {
    exports: Mutex<HashMap<String, Arc<dyn Export>>>,
}

impl ExportTable {
    /// Adds `export` under a new ticket and returns the ticket.
    pub(crate) fn add(&self, export: Arc<dyn Export>) -> String {
        let name = crate::server::random_token();
        if let Ok(mut m) = self.exports.lock() {
            m.insert(name.clone(), export);
        }
        name
    }

    /// Removes the exports `names` (connections already open keep reading until they
    /// close; the session removes the snapshot only after they are told to go).
    pub(crate) fn remove(&self, names: &[String]) {
        if let Ok(mut m) = self.exports.lock() {
            for n in names {
                m.remove(n);
            }
        }
    }
}

impl Exports for ExportTable {
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.exports.lock().ok()?.get(name).cloned()
    }
}

/// A static VMDK chain, read-only.
pub(crate) struct VmdkExport {
    pub(crate) path: PathBuf,
    pub(crate) options: vmdk::OpenOptions,
    pub(crate) size: u64,
}

impl Export for VmdkExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn open(&self) -> io::Result<Box<dyn Backend>> {
        let disk = vmdk::Disk::open(&self.path, &self.options).map_err(io::Error::other)?;
        Ok(Box::new(DiskBackend { disk }))
    }
}

pub(crate) struct DiskBackend {
    pub(crate) disk: vmdk::Disk,
}

impl Backend for DiskBackend {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.disk.read_at(offset, buf).map_err(io::Error::other)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.disk.write_at(offset, data).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush().map_err(io::Error::other)
    }

    fn extents(&mut self, offset: u64, len: u64) -> io::Result<Vec<(u64, u32)>> {
        let mut out: Vec<(u64, u32)> = Vec::new();
        let (mut pos, end) = (offset, offset + len);
        while pos < end && out.len() < 4096 {
            let run = self.disk.map(pos, end - pos).map_err(io::Error::other)?;
            if run.len == 0 {
                break;
            }
            let flags = match run.state {
                vmdk::BlockState::Data => 0,
                vmdk::BlockState::Zero => STATE_ZERO,
                vmdk::BlockState::Unallocated => STATE_HOLE | STATE_ZERO,
            };
            match out.last_mut() {
                Some(last) if last.1 == flags => last.0 += run.len,
                _ => out.push((run.len, flags)),
            }
            pos += run.len;
        }
        Ok(out)
    }
}
