//! Change-tracking files (`-ctk.vmdk`) read from a VM folder (untrusted: anyone who can
//! write the folder controls them). Nothing may panic; what parses renders back to a
//! file that parses to the same tracking, and answers questions without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::ctk::{ChangeId, Tracking};

fuzz_target!(|data: &[u8]| {
    let Ok(mut t) = Tracking::parse(data) else { return };
    let again = Tracking::parse(&t.to_bytes().expect("render")).expect("reparse");
    assert_eq!(again, t);
    let now = t.current();
    for seq in [0, now.seq.saturating_sub(1), now.seq, now.seq + 1] {
        let _ = t.changed_since(&ChangeId { epoch: now.epoch, seq });
    }
    let _ = t.invalid_reason(&t.leaf.clone(), t.cid, t.capacity());
    t.mark(t.capacity() / 2, u64::MAX);
    let id = t.checkpoint();
    let _ = t.changed_since(&id);
});
