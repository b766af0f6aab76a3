//! A disk on the agent's NBD server, read ahead by parallel connections.
//!
//! One NBD request at a time would leave the link idle while each side encrypts,
//! decrypts or reads its disk; a backup reads disks front to back, so the data extents
//! ahead of the reader are known (block status) and are fetched in pieces by
//! [`WORKERS`] connections of their own, at most [`AHEAD`] pieces ahead of the reader.
//! Reads the plan did not foresee go through the main connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};

/// Connections fetching ahead.
const WORKERS: usize = 2;
/// Pieces fetched ahead of the reader (memory: AHEAD x PIECE).
const AHEAD: usize = 8;
/// Largest piece one request fetches.
const PIECE: u64 = 4 << 20;

/// How the workers connect.
pub(crate) struct Connect {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<nbd::Tls>,
    pub(crate) export: String,
}

struct State {
    next: usize,
    consumed: usize,
    done: BTreeMap<usize, Result<Vec<u8>, String>>,
    /// Buffers of consumed pieces, reused (no allocation or page faults per piece).
    spare: Vec<Vec<u8>>,
    stop: bool,
}

struct Shared {
    pieces: Vec<(u64, u64)>,
    state: Mutex<State>,
    changed: Condvar,
}

/// The read-ahead of one disk.
pub(crate) struct Prefetch {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// Zeros between two data runs read rather than asked for separately (a request costs
/// more than this many bytes).
const GAP: u64 = 256 << 10;

/// `(offset, len)` pieces covering every run not known to read as zeros, at most
/// [`PIECE`] each; runs closer than [`GAP`] share a piece.
pub(crate) fn pieces(extents: &[nbd::Extent]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents.iter().filter(|e| e.flags & nbd::STATE_ZERO == 0) {
        let mut at = e.offset;
        let end = e.offset + e.len;
        if let Some(last) = out.last_mut() {
            let last_end = last.0 + last.1;
            if at >= last_end && at - last_end <= GAP && last.1 + (at - last_end) < PIECE {
                // Extend the last piece over the gap and as much of this run as fits.
                let take = (PIECE - last.1 - (at - last_end)).min(end - at);
                last.1 += (at - last_end) + take;
                at += take;
            }
        }
        while at < end {
            let n = PIECE.min(end - at);
            out.push((at, n));
            at += n;
        }
    }
    out
}

impl Prefetch {
    /// Starts the workers over `pieces` (in disk order).
    pub(crate) fn start(connect: Connect, pieces: Vec<(u64, u64)>) -> Prefetch {
        let shared = Arc::new(Shared {
            pieces,
            state: Mutex::new(State {
                next: 0,
                consumed: 0,
                done: BTreeMap::new(),
                spare: Vec::new(),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let connect = Arc::new(connect);
        let workers = (0..WORKERS)
            .map(|_| {
                let (shared, connect) = (Arc::clone(&shared), Arc::clone(&connect));
                std::thread::spawn(move || work(&shared, &connect))
            })
            .collect();
        Prefetch { shared, workers }
    }

    /// Fills `buf` (the bytes at `offset`) from fetched pieces: `Ok(false)` when a piece
    /// it needs was dropped already (the caller reads directly).
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<bool, String> {
        let end = offset + buf.len() as u64;
        let pieces = &self.shared.pieces;
        let first = pieces.partition_point(|(o, l)| o + l <= offset);
        let mut st = self.lock()?;
        if first < st.consumed && first < pieces.len() && pieces[first].0 < end {
            return Ok(false);
        }
        if first > st.consumed {
            // The reader moved past pieces it never asked for (the workers skip them).
            st.consumed = first;
            st.done = st.done.split_off(&first);
            self.shared.changed.notify_all();
        }
        // Bytes outside every piece read as zeros.
        let mut filled = offset;
        let mut i = first;
        while i < pieces.len() && pieces[i].0 < end {
            let (po, pl) = pieces[i];
            while !st.done.contains_key(&i) {
                st = self
                    .shared
                    .changed
                    .wait(st)
                    .map_err(|_| "read-ahead failed".to_owned())?;
            }
            let data = match st.done.get(&i) {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.clone()),
                None => continue,
            };
            let (from, to) = (po.max(offset), (po + pl).min(end));
            buf[(filled - offset) as usize..(from - offset) as usize].fill(0);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - po) as usize..(to - po) as usize]);
            filled = to;
            // A piece that ends inside this read is not needed again: its room goes to
            // the next one (a read may span more pieces than are fetched ahead).
            if po + pl <= end {
                if let Some(Ok(b)) = st.done.remove(&i) {
                    st.spare.push(b);
                }
                st.consumed = i + 1;
                self.shared.changed.notify_all();
            }
            i += 1;
        }
        buf[(filled - offset) as usize..].fill(0);
        Ok(true)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, String> {
        self.shared
            .state
            .lock()
            .map_err(|_| "read-ahead failed".to_owned())
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
        }
        self.shared.changed.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(shared: &Shared, connect: &Connect) {
    let mut client = None;
    loop {
        let i = {
            let Ok(mut st) = shared.state.lock() else {
                return;
            };
            loop {
                st.next = st.next.max(st.consumed);
                if st.stop || st.next >= shared.pieces.len() {
                    return;
                }
                if st.next < st.consumed + AHEAD {
                    break;
                }
                st = match shared.changed.wait(st) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            st.next += 1;
            (st.next - 1, st.spare.pop().unwrap_or_default())
        };
        let (i, buf) = i;
        let (offset, len) = shared.pieces[i];
        let result = fetch(&mut client, connect, offset, len, buf);
        let Ok(mut st) = shared.state.lock() else {
            return;
        };
        if i >= st.consumed {
            st.done.insert(i, result);
        }
        shared.changed.notify_all();
    }
}

fn fetch(
    client: &mut Option<nbd::Client>,
    connect: &Connect,
    offset: u64,
    len: u64,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if client.is_none() {
        let c = nbd::Client::connect_tcp(
            connect.addr,
            connect.tls.as_ref(),
            &connect.export,
            nbd::BASE_ALLOCATION,
        )
        .map_err(|e| e.to_string())?;
        *client = Some(c);
    }
    let Some(c) = client.as_mut() else {
        return Err("no connection".into());
    };
    buf.resize(len as usize, 0);
    c.read_at(offset, &mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64, flags: u32) -> nbd::Extent {
        nbd::Extent { offset, len, flags }
    }

    #[test]
    fn pieces_cover_every_data_run_and_merge_close_ones() {
        const M: u64 = 1 << 20;
        let e = [
            ext(0, 64 << 10, 0),
            ext(64 << 10, 64 << 10, nbd::STATE_HOLE | nbd::STATE_ZERO),
            ext(128 << 10, 10 * M, 0),
            ext(128 * M / 10 + 11 * M, M, nbd::STATE_ZERO),
            ext(40 * M, M, nbd::STATE_HOLE),
        ];
        let p = pieces(&e);
        // The gap of 64 KiB is read with the runs around it; 4 MiB at most per piece.
        assert_eq!(p[0], (0, PIECE));
        assert!(p.iter().all(|(_, l)| *l <= PIECE));
        let covered = |at: u64| p.iter().any(|(o, l)| *o <= at && at < o + l);
        for at in [
            0,
            (64 << 10) + 1,
            128 << 10,
            (128 << 10) + 10 * M - 1,
            40 * M,
            41 * M - 1,
        ] {
            assert!(covered(at), "{at}");
        }
        // A hole without the zero flag is read; zero runs are not.
        assert!(!covered(128 * M / 10 + 11 * M));
        assert!(p.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    }
}
