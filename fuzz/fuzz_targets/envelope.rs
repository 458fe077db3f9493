//! Any bytes as a submitted envelope, through the ledger's own check stage
//! (open, batch-verify, parse): it must answer, never panic, and accept
//! only an event signed by its own actor.
#![no_main]

use custody_ledger::ledger::check_batch;
use custody_proto::{KeyCache, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("a time");
    let mut keys = KeyCache::default();
    for checked in check_batch(vec![data.to_vec()], now, &mut keys) {
        match checked {
            Ok((opened, event)) => assert_eq!(event.actor, opened.signer),
            Err((_, rejection)) => assert!(!rejection.message.is_empty()),
        }
    }
});
