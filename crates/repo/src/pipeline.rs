//! The disk pipeline of [`BackupWriter::put_disk`]: one reader thread (allocation map
//! first, then reads), worker threads (zero test, id, store), and the caller's thread
//! gathering results into the index in any order.

use crate::error::{Error, Result};
use crate::index::{DiskIndex, Entry};
use crate::point::Stats;
use crate::tracked::ChunkPlan;
use crate::writer::{Advance, BackupWriter, StoreProgress};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

/// Buffers queued between the reader and the workers beyond one per worker.
const DEPTH: usize = 2;

impl BackupWriter {
    /// The pipeline of [`put_disk`](Self::put_disk): returns the stats and the bytes
    /// mapped as data.
    pub(crate) fn store_pieces(
        &self,
        source: &mut dyn vmdk::DiskSource,
        index: &mut DiskIndex,
        plans: Option<Vec<ChunkPlan>>,
        progress: &mut dyn StoreProgress,
    ) -> Result<(Stats, u64)> {
        // Local storage is bound by the CPU; remote storage by round trips, which more
        // requests in flight hide.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let workers = if self.repo.backend().is_remote() {
            (cores * 4).clamp(8, 12)
        } else {
            cores.clamp(2, 8)
        };
        let (to_workers, pieces) = sync_channel::<Piece>(workers + DEPTH);
        let pieces = Mutex::new(pieces);
        let (to_main, results) = sync_channel::<Result<Done>>(workers + DEPTH);
        let (recycle, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let chunk = self.repo.config.chunk_size;
        let ranges: Vec<(u64, u64)> = (0..index.entries.len()).map(|i| index.range(i)).collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut stats = Stats::default();
        let mut data_bytes = 0u64;
        std::thread::scope(|scope| -> Result<()> {
            let (ranges, stop_flag, plans) = (&ranges, &stop, plans.as_deref());
            let repo = &self.repo;
            let reader = scope.spawn(move || {
                let plan = ReadPlan {
                    ranges,
                    plans,
                    chunk,
                    repo,
                };
                read_pieces(source, &plan, &to_workers, &spare, stop_flag)
            });
            for _ in 0..workers {
                let (pieces, to_main, recycle) = (&pieces, to_main.clone(), recycle.clone());
                scope.spawn(move || self.work(pieces, &to_main, &recycle));
            }
            drop(to_main);
            let outcome = self.collect(&results, index, progress, &mut stats);
            // Stop the reader and drain what is in flight, whatever happened.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            drop(results);
            let read = reader.join().unwrap_or_else(|_| {
                Err(Error::InvalidArgument(
                    "the disk reader thread panicked".into(),
                ))
            });
            outcome?;
            data_bytes = read?;
            Ok(())
        })?;
        Ok((stats, data_bytes))
    }

    /// Gathers the workers' results into the index, in any order.
    fn collect(
        &self,
        results: &Receiver<Result<Done>>,
        index: &mut DiskIndex,
        progress: &mut dyn StoreProgress,
        stats: &mut Stats,
    ) -> Result<()> {
        for done in results {
            let done = done?;
            index.entries[done.i] = done.entry;
            let step = done.advance;
            stats.read_bytes += step.read;
            stats.new_bytes += step.new;
            stats.reused_bytes += step.reused;
            stats.stored_bytes += step.stored;
            match done.entry {
                Entry::Data(_) if step.new > 0 => stats.new_chunks += 1,
                Entry::Data(_) => stats.reused_chunks += 1,
                Entry::Zero => stats.zero_bytes += step.read,
                Entry::Unallocated => {}
            }
            if progress.advance(&step).is_break() || (self.cancel)() {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    /// A worker: zero test, id, store.
    fn work(
        &self,
        pieces: &Mutex<Receiver<Piece>>,
        to_main: &SyncSender<Result<Done>>,
        recycle: &std::sync::mpsc::Sender<Vec<u8>>,
    ) {
        loop {
            let piece = {
                let rx = pieces
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                rx.recv()
            };
            let Ok(piece) = piece else { return };
            let result = match piece {
                Piece::Failed(e) => Err(e),
                Piece::Empty { i, len, entry } => Ok(Done {
                    i,
                    entry,
                    advance: Advance {
                        covered: len,
                        // A chunk taken over unread from the base point.
                        reused: if matches!(entry, Entry::Data(_)) {
                            len
                        } else {
                            0
                        },
                        ..Advance::default()
                    },
                }),
                Piece::Data { i, buf, read } => {
                    let r = self.store_piece(i, &buf, read);
                    let _ = recycle.send(buf);
                    r
                }
            };
            if to_main.send(result).is_err() {
                return;
            }
        }
    }

    /// Zero test, id and store of chunk `i`, of which `read` bytes came from the disk.
    fn store_piece(&self, i: usize, buf: &[u8], read: u64) -> Result<Done> {
        let len = buf.len() as u64;
        let mut advance = Advance {
            covered: len,
            read,
            ..Advance::default()
        };
        if vmdk::fileio::is_zero(buf) {
            return Ok(Done {
                i,
                entry: Entry::Zero,
                advance,
            });
        }
        let id = self.repo.crypto.chunk_id(buf);
        let stored = self.store(id, buf)?;
        if stored > 0 {
            advance.new = len;
            advance.stored = stored;
        } else {
            advance.reused = len;
        }
        Ok(Done {
            i,
            entry: Entry::Data(id),
            advance,
        })
    }
}

/// What the reader hands the workers.
enum Piece {
    /// Entry `i` needs no reading.
    Empty { i: usize, len: u64, entry: Entry },
    /// Entry `i`'s bytes, of which `read` came from the disk (the rest from the base
    /// point's chunk).
    Data { i: usize, buf: Vec<u8>, read: u64 },
    /// Reading failed.
    Failed(Error),
}

/// What a worker hands back.
struct Done {
    i: usize,
    entry: Entry,
    advance: Advance,
}

/// What the reader reads: each chunk's range, and per chunk what change tracking lets
/// it skip (take the base point's entry unread, or patch the base's chunk).
struct ReadPlan<'a> {
    ranges: &'a [(u64, u64)],
    plans: Option<&'a [ChunkPlan]>,
    chunk: u32,
    repo: &'a crate::repository::Repository,
}

/// The reader thread: maps each piece, reads those holding data. Returns the bytes the
/// map showed as data.
fn read_pieces(
    source: &mut dyn vmdk::DiskSource,
    plan: &ReadPlan<'_>,
    out: &SyncSender<Piece>,
    spare: &Receiver<Vec<u8>>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64> {
    let mut data_bytes = 0u64;
    let chunk = plan.chunk;
    for (i, &(start, end)) in plan.ranges.iter().enumerate() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(data_bytes);
        }
        let piece = match plan.plans.and_then(|k| k.get(i)) {
            Some(ChunkPlan::Keep(entry)) => {
                if matches!(entry, Entry::Data(_)) {
                    data_bytes += end - start;
                }
                Piece::Empty {
                    i,
                    len: end - start,
                    entry: *entry,
                }
            }
            Some(ChunkPlan::Patch(base, areas)) => {
                match patch(source, plan.repo, *base, start, end, areas) {
                    Some(Ok((buf, read))) => {
                        data_bytes += end - start;
                        Piece::Data { i, buf, read }
                    }
                    Some(Err(e)) => Piece::Failed(e),
                    None => read_whole(source, i, start, end, chunk, spare, &mut data_bytes),
                }
            }
            None => read_whole(source, i, start, end, chunk, spare, &mut data_bytes),
        };
        let failed = matches!(piece, Piece::Failed(_));
        if out.send(piece).is_err() || failed {
            return Ok(data_bytes);
        }
    }
    Ok(data_bytes)
}

/// Chunk `[start, end)` read whole (after its map says whether there is anything to read).
fn read_whole(
    source: &mut dyn vmdk::DiskSource,
    i: usize,
    start: u64,
    end: u64,
    chunk: u32,
    spare: &Receiver<Vec<u8>>,
    data_bytes: &mut u64,
) -> Piece {
    match classify(source, start, end) {
        Ok((None, mapped)) => {
            *data_bytes += mapped;
            let mut buf = spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(chunk as usize));
            buf.resize((end - start) as usize, 0);
            match source.read_at(start, &mut buf) {
                Ok(()) => Piece::Data {
                    i,
                    read: end - start,
                    buf,
                },
                Err(e) => Piece::Failed(e.into()),
            }
        }
        Ok((Some(entry), _)) => Piece::Empty {
            i,
            len: end - start,
            entry,
        },
        Err(e) => Piece::Failed(e),
    }
}

/// The chunk `[start, end)` as the base point's chunk `base` with the changed `areas`
/// read from the disk over it, and the bytes read from the disk. `None` when the base's
/// chunk cannot be read (the chunk is then read whole from the disk instead).
fn patch(
    source: &mut dyn vmdk::DiskSource,
    repo: &crate::repository::Repository,
    base: Entry,
    start: u64,
    end: u64,
    areas: &[(u64, u64)],
) -> Option<Result<(Vec<u8>, u64)>> {
    let len = (end - start) as usize;
    let mut buf = match base {
        Entry::Data(id) => match repo.read_chunk(&id) {
            Ok(b) if b.len() == len => b,
            Ok(_) | Err(_) => {
                tracing::warn!(
                    "chunk {} of the base point is unreadable; reading the disk instead",
                    id.hex()
                );
                return None;
            }
        },
        Entry::Zero | Entry::Unallocated => vec![0u8; len],
    };
    let mut read = 0u64;
    for &(offset, n) in areas {
        let from = (offset - start) as usize;
        let to = from + n as usize;
        let dst = buf.get_mut(from..to)?;
        if let Err(e) = source.read_at(offset, dst) {
            return Some(Err(e.into()));
        }
        read += n;
    }
    Some(Ok((buf, read)))
}

/// What the map says of `[start, end)`: `Some(entry)` when no data is there (all
/// unallocated, or zero), `None` when it must be read; plus the bytes mapped as data.
fn classify(
    source: &mut dyn vmdk::DiskSource,
    start: u64,
    end: u64,
) -> Result<(Option<Entry>, u64)> {
    let mut pos = start;
    let mut data = 0u64;
    let mut all_unallocated = true;
    while pos < end {
        let run = source.map(pos, end - pos)?;
        if run.len == 0 {
            break;
        }
        match run.state {
            vmdk::BlockState::Data => data += run.len,
            vmdk::BlockState::Zero => all_unallocated = false,
            vmdk::BlockState::Unallocated => {}
        }
        pos += run.len;
    }
    Ok(match (data, all_unallocated) {
        (0, true) => (Some(Entry::Unallocated), 0),
        (0, false) => (Some(Entry::Zero), 0),
        (d, _) => (None, d),
    })
}
