//! A set of object ids too large for memory: sorted runs spilled to a temporary folder,
//! read back merged.
//!
//! The collector marks every chunk some point uses, then walks the repository's chunk
//! listing (which backends return in name order, and chunk names sort as their ids) and
//! the marked set side by side. With runs of [`RUN_IDS`] ids (32 MiB) and 64 KiB read
//! buffers per run, marking 10 million chunks takes about 40 MiB of memory instead of
//! the ~700 MiB a hash set of them would.

use crate::crypto::Id;
use crate::error::{Error, Result};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// Ids held in memory before a run is sorted and spilled.
pub const RUN_IDS: usize = 1 << 20;

/// A growing set of ids.
pub struct MarkSet {
    buf: Vec<Id>,
    runs: Vec<PathBuf>,
    dir: tempfile::TempDir,
    run_ids: usize,
}

impl std::fmt::Debug for MarkSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MarkSet({} in memory, {} runs)",
            self.buf.len(),
            self.runs.len()
        )
    }
}

impl MarkSet {
    /// An empty set spilling into a new temporary folder.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be made.
    pub fn new() -> Result<MarkSet> {
        MarkSet::with_run_size(RUN_IDS)
    }

    /// Like [`new`](Self::new), spilling every `run_ids` ids (tests use small runs).
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn with_run_size(run_ids: usize) -> Result<MarkSet> {
        let dir = tempfile::Builder::new()
            .prefix("vcb-markset-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), "create mark set folder", e))?;
        Ok(MarkSet {
            buf: Vec::with_capacity(run_ids.min(RUN_IDS)),
            runs: Vec::new(),
            dir,
            run_ids: run_ids.max(1),
        })
    }

    /// Add `id`.
    ///
    /// # Errors
    /// [`Error::Io`] when a run cannot be written.
    pub fn insert(&mut self, id: Id) -> Result<()> {
        self.buf.push(id);
        if self.buf.len() >= self.run_ids {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let path = self.dir.path().join(format!("run{}", self.runs.len()));
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, "create", e))?;
        let mut w = BufWriter::with_capacity(1 << 16, f);
        for id in &self.buf {
            w.write_all(&id.0)
                .map_err(|e| Error::io(&path, "write", e))?;
        }
        w.flush().map_err(|e| Error::io(&path, "write", e))?;
        self.runs.push(path);
        self.buf.clear();
        Ok(())
    }

    /// The ids in order, each once.
    ///
    /// # Errors
    /// [`Error::Io`] when a run cannot be read back.
    pub fn into_sorted(mut self) -> Result<Sorted> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let mut readers = Vec::new();
        for path in &self.runs {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
            readers.push(BufReader::with_capacity(1 << 16, f));
        }
        let mut heads = Vec::with_capacity(readers.len());
        for r in &mut readers {
            heads.push(next_id(r)?);
        }
        Ok(Sorted {
            memory: std::mem::take(&mut self.buf).into_iter().peekable(),
            readers,
            heads,
            last: None,
            _dir: self.dir,
        })
    }
}

fn next_id(r: &mut BufReader<std::fs::File>) -> Result<Option<Id>> {
    let mut b = [0u8; 32];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(Id(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::io("mark set run", "read", e)),
    }
}

/// The merged, deduplicated ids of a [`MarkSet`].
pub struct Sorted {
    memory: std::iter::Peekable<std::vec::IntoIter<Id>>,
    readers: Vec<BufReader<std::fs::File>>,
    heads: Vec<Option<Id>>,
    last: Option<Id>,
    _dir: tempfile::TempDir,
}

impl Sorted {
    /// The next id, or `None` at the end.
    ///
    /// # Errors
    /// [`Error::Io`] reading a run.
    pub fn next_id(&mut self) -> Result<Option<Id>> {
        loop {
            // The smallest head among the runs and the in-memory part.
            let mut best: Option<(usize, Id)> = None;
            for (i, h) in self.heads.iter().enumerate() {
                if let Some(id) = h {
                    if best.is_none_or(|(_, b)| *id < b) {
                        best = Some((i, *id));
                    }
                }
            }
            let mem = self.memory.peek().copied();
            let id = match (best, mem) {
                (None, None) => return Ok(None),
                (Some((i, id)), m) if m.is_none_or(|m| id <= m) => {
                    self.heads[i] = next_id(&mut self.readers[i])?;
                    id
                }
                _ => match self.memory.next() {
                    Some(m) => m,
                    None => return Ok(None),
                },
            };
            if self.last != Some(id) {
                self.last = Some(id);
                return Ok(Some(id));
            }
        }
    }

    /// Whether `id` is in the set; calls must come in increasing `id` order.
    ///
    /// # Errors
    /// As for [`next_id`](Self::next_id).
    pub fn contains_in_order(&mut self, id: &Id) -> Result<bool> {
        loop {
            match self.last {
                Some(l) if l >= *id => return Ok(l == *id),
                _ => {}
            }
            if self.next_id()?.is_none() {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_runs_are_sorted_and_unique() {
        let mut m = MarkSet::with_run_size(7).unwrap();
        let mut all = Vec::new();
        for i in 0..100u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&((i * 7919) % 61).to_be_bytes());
            all.push(Id(b));
            m.insert(Id(b)).unwrap();
        }
        all.sort();
        all.dedup();
        let mut s = m.into_sorted().unwrap();
        let mut got = Vec::new();
        while let Some(id) = s.next_id().unwrap() {
            got.push(id);
        }
        assert_eq!(got, all);
        let mut m = MarkSet::with_run_size(3).unwrap();
        for id in &all[..10] {
            m.insert(*id).unwrap();
        }
        let mut s = m.into_sorted().unwrap();
        let probe: Vec<bool> = all[..12]
            .iter()
            .map(|id| s.contains_in_order(id).unwrap())
            .collect();
        assert_eq!(probe, [vec![true; 10], vec![false; 2]].concat());
    }
}
