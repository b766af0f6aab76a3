//! Repository objects read from storage (untrusted: whoever controls the storage
//! controls them): envelopes (encrypted and not), disk indexes, points, key files, the
//! config and paper keys. Nothing may panic; what parses must render back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use repo::crypto::{Crypto, Kind, MasterKey};
use std::sync::OnceLock;

fn cryptos() -> &'static [Crypto; 2] {
    static C: OnceLock<[Crypto; 2]> = OnceLock::new();
    C.get_or_init(|| [Crypto::new(Some(MasterKey::random()), 1), Crypto::new(None, 1)])
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 6 {
        0 => {
            for c in cryptos() {
                let _ = c.open(Kind::Chunk, "chunks/ab/x", rest);
                // What a writer sealed always opens again.
                let sealed = c.seal(Kind::Index, "indexes/x", rest).expect("seal");
                assert_eq!(c.open(Kind::Index, "indexes/x", &sealed).expect("open"), rest);
            }
        }
        1 => {
            if let Ok(ix) = repo::index::DiskIndex::decode("indexes/x", rest) {
                assert_eq!(ix.encode(), rest);
            }
        }
        2 => {
            if let Ok(p) = serde_json::from_slice::<repo::Point>(rest) {
                let text = serde_json::to_vec(&p).expect("render");
                let back: repo::Point = serde_json::from_slice(&text).expect("reparse");
                assert_eq!(back, p);
            }
        }
        3 => {
            let _ = serde_json::from_slice::<repo::keys::KeyFile>(rest);
        }
        4 => {
            let _ = repo::parse_config("fuzz", rest);
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = repo::keys::parse_paper_key(text, "r");
            }
        }
    }
});
