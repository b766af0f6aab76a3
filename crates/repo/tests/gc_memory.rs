//! Issue 11: garbage collection of a repository with 10 million chunks stays under
//! 1 GiB of memory. The repository is synthetic (a backend that makes its objects up on
//! request: 100 points of 100,000 chunks each, plus a million unused chunks), so the test
//! measures the collector itself, not a disk. The peak RSS is the process's (VmHWM).

use repo::backend::ObjectMeta;
use repo::crypto::{Crypto, Id, Kind};
use repo::index::{DiskIndex, Entry};
use repo::{Backend, PutMode, Repository, Unlock};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

const POINTS: u64 = 100;
const PER_POINT: u64 = 100_000;
const UNUSED: u64 = 1_000_000;

fn chunk_id(i: u64) -> Id {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[8] = 0x5a;
    Id(b)
}

struct Synthetic {
    crypto: Crypto,
    index_ids: Vec<String>,
    small: Mutex<BTreeMap<String, Vec<u8>>>,
    deleted: Mutex<u64>,
}

impl Synthetic {
    fn new() -> Synthetic {
        let crypto = Crypto::new(None, 1);
        let index_ids = (0..POINTS)
            .map(|p| hex::encode(crypto.mac(&[b"index", &Synthetic::index(p).encode()])))
            .collect();
        Synthetic {
            crypto,
            index_ids,
            small: Mutex::new(BTreeMap::new()),
            deleted: Mutex::new(0),
        }
    }

    fn index(p: u64) -> DiskIndex {
        let mut ix = DiskIndex::new(PER_POINT * (4 << 20), 4 << 20);
        for (i, e) in ix.entries.iter_mut().enumerate() {
            *e = Entry::Data(chunk_id(p * PER_POINT + i as u64));
        }
        ix
    }

    fn point(&self, p: u64) -> Vec<u8> {
        let point = serde_json::json!({
            "version": 1, "id": format!("{p:016x}"), "group": "g", "vm": {"name": "vm", "uuid": null},
            "time": p, "hostname": "h", "quiesced": false, "power_state": "poweredOff", "catalog": "",
            "files": [], "disks": [{"node": "scsi0:0", "name": "d.vmdk", "capacity": PER_POINT * (4 << 20),
            "adapter": "lsilogic", "index": self.index_ids[p as usize], "data_bytes": 0}],
        });
        serde_json::to_vec(&point).unwrap()
    }
}

fn meta(name: String) -> ObjectMeta {
    ObjectMeta {
        name,
        size: 1,
        modified: UNIX_EPOCH,
    }
}

impl Backend for Synthetic {
    fn location(&self) -> String {
        "synthetic".into()
    }
    fn get(&self, name: &str) -> repo::Result<Vec<u8>> {
        if name == "config" {
            return Ok(br#"{"format":"vcb-repository","version":1,"id":"00","created":0,"encryption":"none","chunk_size":4194304,"compression":"zstd","zstd_level":1}"#.to_vec());
        }
        if let Some(p) = name.strip_prefix("points/g/") {
            let p = u64::from_str_radix(p, 16).unwrap();
            return self.crypto.seal(Kind::Point, name, &self.point(p));
        }
        if let Some(id) = name.strip_prefix("indexes/") {
            let p = self.index_ids.iter().position(|x| x == id).unwrap() as u64;
            return self
                .crypto
                .seal(Kind::Index, name, &Synthetic::index(p).encode());
        }
        self.small
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| repo::Error::Missing {
                object: name.into(),
                what: "test".into(),
            })
    }
    fn put(&self, name: &str, data: &[u8], _: PutMode) -> repo::Result<()> {
        self.small
            .lock()
            .unwrap()
            .insert(name.into(), data.to_vec());
        Ok(())
    }
    fn delete(&self, name: &str) -> repo::Result<bool> {
        if name.starts_with("chunks/") {
            *self.deleted.lock().unwrap() += 1;
            return Ok(true);
        }
        Ok(self.small.lock().unwrap().remove(name).is_some())
    }
    fn stat(&self, name: &str) -> repo::Result<Option<ObjectMeta>> {
        Ok(self
            .small
            .lock()
            .unwrap()
            .contains_key(name)
            .then(|| ObjectMeta {
                modified: std::time::SystemTime::now(),
                ..meta(name.into())
            }))
    }
    fn list(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(ObjectMeta) -> repo::Result<()>,
    ) -> repo::Result<()> {
        if prefix == "points/" {
            for p in 0..POINTS {
                each(meta(format!("points/g/{p:016x}")))?;
            }
        } else if prefix == "indexes/" {
            let mut ids = self.index_ids.clone();
            ids.sort();
            for id in ids {
                each(meta(format!("indexes/{id}")))?;
            }
        } else if prefix == "chunks/" {
            for i in 0..POINTS * PER_POINT + UNUSED {
                each(meta(chunk_id(i).chunk_name()))?;
            }
        } else {
            let names: Vec<String> = self
                .small
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            for n in names {
                each(meta(n))?;
            }
        }
        Ok(())
    }
    fn is_empty(&self) -> repo::Result<bool> {
        Ok(false)
    }
    fn create(&self) -> repo::Result<()> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn issue_11_gc_of_ten_million_chunks_stays_under_1_gib() {
    let backend = Synthetic::new();
    let r = Repository::open(Box::new(backend), &Unlock::None).unwrap();
    let started = std::time::Instant::now();
    let report = repo::gc::gc(
        &r,
        &repo::gc::GcOptions {
            grace: std::time::Duration::ZERO,
            dry_run: false,
        },
        &mut (),
    )
    .unwrap();
    let peak = peak_rss_kib();
    eprintln!(
        "figure: gc of {} chunks ({} in use): {:.1} s, peak RSS {} MiB",
        POINTS * PER_POINT + UNUSED,
        POINTS * PER_POINT,
        started.elapsed().as_secs_f64(),
        peak / 1024
    );
    assert_eq!(report.points, POINTS as usize);
    assert_eq!(report.removed_objects, UNUSED);
    assert_eq!(report.kept_objects, POINTS * PER_POINT + POINTS);
    assert!(peak < 1024 * 1024, "peak RSS {peak} KiB");
}
