//! Reading a point back: disks as [`vmdk::DiskSource`]s, files as readers.
//!
//! A restore reads a disk front to back; [`RepoDisk`] keeps a few fetch threads working
//! ahead of the reader (download, authenticate, decompress), so the copy is bound by the
//! slower of the storage and the target disk rather than by one thread's decoding.

use crate::crypto::Id;
use crate::error::{Error, Result};
use crate::index::{DiskIndex, Entry};
use crate::point::{DiskEntry, FileEntry};
use crate::repository::Repository;
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Chunks fetched ahead of the reader (local: as many as there are cores to decrypt
/// them; remote: enough requests in flight to hide round trips).
fn read_ahead(repo: &Repository) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    if repo.backend().is_remote() {
        (cores * 4).clamp(8, 16)
    } else {
        cores.clamp(2, 8)
    }
}

/// A fetch request to the pool: entry `i`'s chunk `id`, answered on the sender.
type Job = (usize, Id, Sender<(usize, Result<Vec<u8>>)>);

/// A disk of a backup point.
pub struct RepoDisk {
    index: Arc<DiskIndex>,
    adapter: vmdk::AdapterType,
    jobs: Option<Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    answers: Receiver<(usize, Result<Vec<u8>>)>,
    answer_tx: Sender<(usize, Result<Vec<u8>>)>,
    /// Chunks fetched ahead.
    ahead: usize,
    /// Fetches asked for and not received, and chunks received and not used yet.
    pending: VecDeque<usize>,
    ready: HashMap<usize, Result<Vec<u8>>>,
    /// The chunk read last.
    current: Option<(usize, Vec<u8>)>,
}

impl std::fmt::Debug for RepoDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoDisk({} bytes)", self.index.capacity)
    }
}

impl RepoDisk {
    /// Open the disk `entry` of a point of `repo`.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`] for its index; [`Error::Corrupt`] when the
    /// index disagrees with the point.
    pub fn open(repo: &Repository, entry: &DiskEntry) -> Result<RepoDisk> {
        let index = repo.load_index(&entry.index)?;
        if index.capacity != entry.capacity {
            return Err(Error::corrupt(
                format!("indexes/{}", entry.index),
                format!(
                    "maps {} bytes where the point says {}",
                    index.capacity, entry.capacity
                ),
            ));
        }
        let adapter = vmdk::AdapterType::parse(&entry.adapter).unwrap_or_default();
        let (jobs, job_rx) = channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let ahead = read_ahead(repo);
        let workers = (0..ahead)
            .map(|_| {
                let (rx, repo) = (Arc::clone(&job_rx), repo.clone());
                std::thread::spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        guard.recv()
                    };
                    let Ok((i, id, answer)) = job else { return };
                    if answer.send((i, repo.read_chunk(&id))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        let (answer_tx, answers) = channel();
        Ok(RepoDisk {
            index: Arc::new(index),
            adapter,
            jobs: Some(jobs),
            workers,
            answers,
            answer_tx,
            ahead,
            pending: VecDeque::new(),
            ready: HashMap::new(),
            current: None,
        })
    }

    /// The index.
    pub fn index(&self) -> &DiskIndex {
        &self.index
    }

    /// Ask for entry `i` (and those after it) to be fetched.
    fn prefetch(&mut self, i: usize) {
        let Some(jobs) = &self.jobs else { return };
        let mut j = i;
        let mut asked = 0;
        while j < self.index.entries.len() && asked < self.ahead {
            if let Entry::Data(id) = self.index.entries[j] {
                let known = self.pending.contains(&j)
                    || self.ready.contains_key(&j)
                    || self.current.as_ref().is_some_and(|c| c.0 == j);
                if !known {
                    if jobs.send((j, id, self.answer_tx.clone())).is_err() {
                        return;
                    }
                    self.pending.push_back(j);
                }
                asked += 1;
            }
            j += 1;
        }
    }

    /// The data of entry `i` (a data entry).
    fn chunk(&mut self, i: usize) -> Result<&[u8]> {
        if self.current.as_ref().is_none_or(|c| c.0 != i) {
            // Chunks asked for before `i` and never used (a reader skipping ahead) are
            // dropped as they arrive.
            self.ready.retain(|&k, _| k > i);
            self.prefetch(i);
            let data = loop {
                if let Some(r) = self.ready.remove(&i) {
                    break r?;
                }
                let (k, r) = self
                    .answers
                    .recv()
                    .map_err(|_| Error::InvalidArgument("chunk fetch threads stopped".into()))?;
                self.pending.retain(|&p| p != k);
                if k >= i {
                    self.ready.insert(k, r);
                }
            };
            let (start, end) = self.index.range(i);
            if data.len() as u64 != end - start {
                let Entry::Data(id) = self.index.entries[i] else {
                    unreachable!("only data entries are fetched")
                };
                return Err(Error::corrupt(
                    id.chunk_name(),
                    format!(
                        "holds {} bytes where the index needs {}",
                        data.len(),
                        end - start
                    ),
                ));
            }
            self.current = Some((i, data));
            self.prefetch(i + 1);
        }
        Ok(self.current.as_ref().map(|c| c.1.as_slice()).unwrap_or(&[]))
    }
}

impl Drop for RepoDisk {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl vmdk::DiskSource for RepoDisk {
    fn capacity(&self) -> u64 {
        self.index.capacity
    }

    fn map(&mut self, offset: u64, max_len: u64) -> vmdk::Result<vmdk::Run> {
        let cap = self.index.capacity;
        let max_len = max_len.min(cap.saturating_sub(offset));
        if max_len == 0 {
            return Ok(vmdk::Run {
                offset,
                len: 0,
                state: vmdk::BlockState::Unallocated,
            });
        }
        let cs = u64::from(self.index.chunk_size);
        let state_of = |e: &Entry| match e {
            Entry::Unallocated => vmdk::BlockState::Unallocated,
            Entry::Zero => vmdk::BlockState::Zero,
            Entry::Data(_) => vmdk::BlockState::Data,
        };
        let first = (offset / cs) as usize;
        let state = state_of(&self.index.entries[first]);
        let mut end = ((first as u64) + 1) * cs;
        let mut i = first + 1;
        while end < offset + max_len
            && i < self.index.entries.len()
            && state_of(&self.index.entries[i]) == state
        {
            end += cs;
            i += 1;
        }
        Ok(vmdk::Run {
            offset,
            len: end.min(offset + max_len) - offset,
            state,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> vmdk::Result<()> {
        let cap = self.index.capacity;
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > cap) {
            return Err(vmdk::Error::InvalidArgument(format!(
                "read of {} bytes at {offset} past the capacity {cap}",
                buf.len()
            )));
        }
        let cs = u64::from(self.index.chunk_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos / cs) as usize;
            let within = (pos % cs) as usize;
            let take = (buf.len() - done).min(cs as usize - within);
            let out = &mut buf[done..done + take];
            match self.index.entries[i] {
                Entry::Data(_) => {
                    let data = self.chunk(i).map_err(to_vmdk)?;
                    out.copy_from_slice(&data[within..within + take]);
                }
                _ => out.fill(0),
            }
            done += take;
        }
        Ok(())
    }

    fn adapter(&self) -> vmdk::AdapterType {
        self.adapter
    }
}

/// A repository error as the disk layer's (its text kept whole).
fn to_vmdk(e: Error) -> vmdk::Error {
    vmdk::Error::Source(e.to_string())
}

/// Reads a configuration file of a point, checking its size and SHA-256 at the end.
pub struct BlobReader {
    repo: Repository,
    entry: FileEntry,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    read: u64,
    sha: sha2::Sha256,
}

impl BlobReader {
    /// A reader of `entry`.
    pub fn new(repo: &Repository, entry: &FileEntry) -> BlobReader {
        BlobReader {
            repo: repo.clone(),
            entry: entry.clone(),
            next: 0,
            buf: Vec::new(),
            pos: 0,
            read: 0,
            sha: sha2::Digest::new(),
        }
    }

    fn finish_check(&mut self) -> std::io::Result<()> {
        use sha2::Digest;
        let sum = hex::encode(std::mem::take(&mut self.sha).finalize());
        if self.read != self.entry.size || sum != self.entry.sha256 {
            return Err(std::io::Error::other(format!(
                "{}: the file read back ({} bytes) does not match its recorded size and SHA-256 (damaged or tampered)",
                self.entry.name, self.read
            )));
        }
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        while self.pos == self.buf.len() {
            if self.next == self.entry.chunks.len() {
                if self.next != usize::MAX {
                    self.next = usize::MAX;
                    self.finish_check()?;
                }
                return Ok(0);
            }
            if self.next == usize::MAX {
                return Ok(0);
            }
            let id = Id::parse(&self.entry.chunks[self.next])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.buf = self
                .repo
                .read_chunk(&id)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.pos = 0;
            self.next += 1;
            self.sha.update(&self.buf);
            self.read += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
