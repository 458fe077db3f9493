//! Checking a ledger from seq 1: every entry hash, chain link, signature
//! and event, and that each event id appears once. Used by `custody verify`
//! and the gateway's `/v1/ledger/verify`; reads a stopped ledger's store or
//! the committed stream, never the running ledger's memory.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use async_nats::jetstream;
use custody_proto::{Entry, Event, Hash, Opened};
use futures::StreamExt;

use crate::store::Store;

/// The first thing wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {why}")]
pub struct Bad {
    pub seq: u64,
    pub why: String,
}

/// Where a good chain ends: `(seq, hash)` of its head, `None` when empty.
pub type Head = Option<(u64, Hash)>;

/// Checks entries in order; signatures in batches.
pub struct Checker {
    prev: Head,
    /// Where each event id (by a 128-bit digest: 24 bytes an entry, at
    /// tens of millions of entries) was first seen: an id is in the ledger once.
    ids: HashMap<[u8; 16], u64>,
    pending: Vec<(u64, Opened)>,
    /// Told how many more entries were fully checked.
    progress: Box<dyn FnMut(u64) + Send>,
}

impl Checker {
    pub fn new(progress: Box<dyn FnMut(u64) + Send>) -> Checker {
        Checker { prev: None, ids: HashMap::new(), pending: Vec::new(), progress }
    }

    pub fn push(&mut self, entry: Entry) -> Result<(), Bad> {
        let seq = entry.seq;
        entry.check_after(self.prev).map_err(|e| Bad { seq: e.seq(), why: e.to_string() })?;
        let opened = Opened::open(entry.envelope).map_err(|r| Bad { seq, why: format!("envelope: {r}") })?;
        let event = Event::decode(&opened.payload).map_err(|r| Bad { seq, why: format!("event: {r}") })?;
        let digest = blake3::hash(event.id.as_str().as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_bytes()[..16]);
        if let Some(first) = self.ids.insert(id, seq) {
            return Err(Bad { seq, why: format!("event id {} is recorded twice (first at seq {first})", event.id) });
        }
        self.prev = Some((seq, entry.hash));
        self.pending.push((seq, opened));
        if self.pending.len() >= 1024 {
            self.flush()?;
        }
        Ok(())
    }

    /// Verifies the signatures still pending (they are checked in batches).
    pub fn flush(&mut self) -> Result<(), Bad> {
        let (seqs, opened): (Vec<u64>, Vec<Opened>) = std::mem::take(&mut self.pending).into_iter().unzip();
        for (seq, verdict) in seqs.iter().zip(Opened::verify_all(&opened)) {
            verdict.map_err(|r| Bad { seq: *seq, why: format!("signature: {r}") })?;
        }
        (self.progress)(seqs.len() as u64);
        Ok(())
    }

    pub fn finish(mut self) -> Result<Head, Bad> {
        self.flush()?;
        Ok(self.prev)
    }

    /// Where the entries pushed so far end, once their signatures are checked.
    pub fn head(&mut self) -> Result<Head, Bad> {
        self.flush()?;
        Ok(self.prev)
    }
}

/// Verifies a stopped ledger's store folder.
pub fn verify_store(dir: &Path, progress: impl FnOnce(u64) -> Box<dyn FnMut(u64) + Send>) -> Result<Head, Bad> {
    if !dir.join("db").is_file() {
        return Err(Bad { seq: 0, why: format!("{} holds no ledger store", dir.display()) });
    }
    let store = Store::open(dir).map_err(|e| Bad { seq: 0, why: format!("the store cannot be read: {e}") })?;
    let head = store.head().map_err(|e| Bad { seq: 0, why: e.to_string() })?;
    let mut checker = Checker::new(progress(head.map_or(0, |h| h.0)));
    for entry in store.entries_from(1) {
        let entry = entry.map_err(|e| Bad { seq: checker.prev.map_or(1, |p| p.0 + 1), why: e.to_string() })?;
        checker.push(entry)?;
    }
    let last = checker.finish()?;
    if last != head {
        return Err(Bad { seq: last.map_or(1, |l| l.0 + 1), why: format!("the head record names {head:?} but the chain ends at {last:?}") });
    }
    Ok(last)
}

/// Verifies the committed stream from seq 1 to its current end. The outer
/// error is NATS failing; the inner one is the ledger failing.
pub async fn verify_stream(js: &jetstream::Context, progress: impl FnOnce(u64) -> Box<dyn FnMut(u64) + Send>) -> anyhow::Result<Result<Head, Bad>> {
    let reader = crate::follow::Reader::ledger(&js.client());
    let last = reader.last_seq().await.context("no committed stream: is a ledger running on this NATS?")?;
    let mut checker = Checker::new(progress(last));
    Ok(match extend_stream(&reader, &mut checker).await? {
        Ok(_) => checker.finish(),
        Err(bad) => Err(bad),
    })
}

/// Goes on verifying the committed stream where `checker` stopped, up to
/// the stream's current end: a caller that keeps its checker verifies each
/// entry once however often it asks.
pub async fn extend_stream(reader: &crate::follow::Reader, checker: &mut Checker) -> anyhow::Result<Result<Head, Bad>> {
    let last = reader.last_seq().await.context("no committed stream: is a ledger running on this NATS?")?;
    let from = checker.prev.map_or(1, |p| p.0 + 1);
    if from > last {
        return Ok(checker.head());
    }
    let mut messages = std::pin::pin!(reader.range(from, last));
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let seen = msg.seq;
        let entry = match crate::follow::entry_of(&msg) {
            Ok(e) if e.seq == seen => e,
            Ok(e) => return Ok(Err(Bad { seq: seen, why: format!("message claims seq {} at stream position {seen}", e.seq) })),
            Err(why) => return Ok(Err(Bad { seq: seen, why })),
        };
        if let Err(bad) = checker.push(entry) {
            return Ok(Err(bad));
        }
    }
    Ok(checker.head())
}
