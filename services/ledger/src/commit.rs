//! The commit point: the committed stream. An entry is committed when the
//! stream has stored it, as part of one atomic batch whose first message
//! expects the stream to end where the writer's head ends
//! (`Nats-Expected-Last-Sequence`). The stream refuses a batch from a
//! writer whose head is stale (JetStream error 10071) and stores none of
//! it, so two writers can never both extend the same head: the stream is
//! the fence, and the writer lease only keeps writers from tripping over
//! each other. On an R3 stream whose servers run with
//! `sync_interval: always`, the ack means the batch is fsynced on a
//! majority.
//!
//! An ack that never comes leaves the outcome unknown; it is resolved by
//! reading the stream back ([`read_back`]), never by guessing.

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use custody_proto::{Entry, Hash};

use crate::writer::{BarrierRead, ReadBack};
use custody_wire::follow::{entry_of, Reader};
use custody_wire::subjects::*;
use futures::StreamExt;

use crate::service::LedgerError;
use custody_wire::receipts::header_value;

pub use custody_wire::atomic::{Ack, BatchError, MAX_ATOMIC};

/// The committed stream's configuration: entries only, kept forever,
/// atomic batches allowed, nothing ever deleted or purged through the API,
/// on `replicas` servers.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: LEDGER_STREAM.into(),
        subjects: vec![ENTRIES_SUBJECT.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        allow_direct: true,
        allow_atomic_publish: true,
        deny_delete: true,
        deny_purge: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The committed stream, created if absent, or brought to
/// [`stream_config`] (also used by benchmarks that build a ledger's
/// stream directly).
pub async fn committed_stream(js: &jetstream::Context, replicas: usize) -> Result<stream::Stream, LedgerError> {
    let what = "create the committed stream (nats-server 2.12+ for atomic batches)";
    js.create_or_update_stream(stream_config(replicas)).await.map_err(|e| LedgerError::Nats { what, why: e.to_string() })?;
    js.get_stream(LEDGER_STREAM).await.map_err(|e| LedgerError::Nats { what, why: e.to_string() })
}

/// Sends consecutive entries (at most [`MAX_ATOMIC`]) as one atomic batch
/// expecting the stream to end just before the first. Returns at once;
/// the ack (the stream sequence of the last entry) comes later.
pub async fn send(js: &jetstream::Context, entries: &[Entry]) -> Ack {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Box::pin(async { Err(BatchError::Other("an empty batch".into())) });
    };
    // Unique per attempt: a batch sent again after an unknown outcome is a
    // new batch, fenced by its expectation like any other.
    let attempt = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{}-{}-{}-{attempt}", first.seq, last.seq, &last.hash.to_hex()[..16]);
    let msgs = entries.iter().map(|e| (entry_headers(e), Bytes::from(e.envelope.clone()))).collect();
    custody_wire::atomic::send(js, ENTRIES_SUBJECT, &id, msgs, Some(first.seq - 1)).await
}

static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends a run of consecutive entries in atomic batches, one after the
/// other, each awaited: for refilling a stream that lost entries the
/// store still holds.
pub async fn send_all(js: &jetstream::Context, entries: &[Entry]) -> Result<(), LedgerError> {
    for chunk in entries.chunks(MAX_ATOMIC) {
        let last = chunk.last().map_or(0, |e| e.seq);
        match send(js, chunk).await.await {
            Ok(seq) if seq == last => {}
            Ok(seq) => return Err(LedgerError::Disagreement(format!("the committed stream stored entry {last} at {seq}"))),
            Err(why) => return Err(LedgerError::Nats { what: "publish committed entries", why: why.to_string() }),
        }
    }
    Ok(())
}

/// The chain fields of an entry, as headers.
fn entry_headers(e: &Entry) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in e.headers() {
        h.insert(name, header_value(&value));
    }
    h
}

/// How many of `ours` (consecutive, the writer's entries after what it
/// knows is committed) the stream holds, each compared by hash. A
/// different entry at one of their positions means another writer
/// extended the stream: the writer must stop.
pub async fn read_back(reader: &Reader, ours: &[Entry]) -> ReadBack {
    let (Some(first), Some(last)) = (ours.first(), ours.last()) else { return ReadBack::Held(0) };
    let mut held = 0;
    let mut msgs = std::pin::pin!(reader.range(first.seq, last.seq));
    while let Some(msg) = msgs.next().await {
        let msg = match msg {
            Ok(m) => m,
            // The stream ends before our last entry: the rest is not on it.
            Err(custody_wire::follow::ReadError::Stalled { .. }) => break,
            Err(e) => return ReadBack::Unreadable(e.to_string()),
        };
        let Some(mine) = ours.get(held).filter(|e| e.seq == msg.seq) else { break };
        match entry_of(&msg) {
            Ok(theirs) if theirs.hash == mine.hash => held += 1,
            Ok(theirs) => return ReadBack::Foreign { seq: msg.seq, what: theirs.hash.to_hex() },
            Err(why) => return ReadBack::Foreign { seq: msg.seq, what: format!("unreadable ({why})") },
        }
    }
    ReadBack::Held(held)
}

/// A read barrier's reading: the stream's last sequence and, when it goes
/// past `decided_at`, the hash of the entry after it.
pub async fn barrier_read(reader: &Reader, decided_at: u64) -> BarrierRead {
    let last = reader.last_seq().await.map_err(|e| e.to_string())?;
    if last <= decided_at {
        return Ok((last, None));
    }
    let next = reader.get(decided_at + 1).await.map_err(|e| e.to_string())?;
    Ok((last, next.and_then(|m| m.headers.get(HDR_HASH).and_then(|v| Hash::from_hex(v.as_str())))))
}
