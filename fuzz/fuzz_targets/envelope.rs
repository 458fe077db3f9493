//! Any bytes as a submitted envelope, on any actor's subject, through the
//! ledger's whole refusal path: the check stage (open, batch-verify,
//! parse, signer against subject), the outcome, and the receipt message
//! built for the inbox path, headers included. It must answer, never
//! panic, accept only an event signed by its own actor, and put only
//! printable ASCII in a header.
#![no_main]

use custody_ledger::ledger::{check_batch, refusal, Submitted};
use custody_wire::receipts::message as receipt_message;
use custody_proto::{KeyCache, Outcome, Receipt, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("a time");
    let mut keys = KeyCache::default();
    // The first byte picks the subject: none, or a key-like token.
    let subject_key = match data.first() {
        Some(b) if b % 2 == 0 => Some(String::from_utf8_lossy(&data[1..data.len().min(57)]).into_owned()),
        _ => None,
    };
    let submitted = Submitted { bytes: data.to_vec(), subject_key: subject_key.clone() };
    for checked in check_batch(vec![submitted], &mut keys) {
        let outcome = match checked {
            Ok((opened, event)) => {
                assert_eq!(event.actor, opened.signer);
                if let Some(k) = &subject_key {
                    assert_eq!(k.as_str(), opened.signer.as_str(), "accepted on another actor's subject");
                }
                Outcome::Receipt(Receipt { id: event.id.to_string(), seq: 1, hash: custody_proto::Hash::GENESIS, recorded_at: now.to_rfc3339() })
            }
            Err((id, rejection)) => {
                assert!(!rejection.message.is_empty());
                refusal(id, rejection)
            }
        };
        let (subject, headers, message_id) = receipt_message(subject_key.as_deref(), &outcome);
        assert!(subject.starts_with("custody.receipts."));
        let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
        assert!(printable(&message_id), "{message_id:?}");
        for (_, values) in headers.iter() {
            for v in values {
                assert!(printable(v.as_str()), "{v:?}");
            }
        }
    }
});
