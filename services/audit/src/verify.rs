//! Checking a ledger from seq 1: every entry hash, chain link, signature
//! and event, and that each event id appears once. Used by `custody verify`
//! (over the committed stream, or over a stopped ledger's store, whose
//! entries the command line feeds it) and the gateway's `/v1/ledger/verify`.

use std::collections::HashMap;

use custody_proto::{Entry, Event, KeyCache, Opened};
use custody_wire::follow::{FollowError, Reader};
use futures::StreamExt;

pub use custody_wire::follow::Head;

/// Reading the committed stream failed (NATS, not the ledger).
#[derive(Debug, thiserror::Error)]
#[error("the committed stream cannot be read: {0}")]
pub struct Unreadable(#[from] pub custody_wire::follow::ReadError);

/// The first thing wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {why}")]
pub struct Bad {
    pub seq: u64,
    pub why: String,
}

/// Checks entries in order; signatures in batches.
pub struct Checker {
    prev: Head,
    /// Where each event id (by a 128-bit digest: 24 bytes an entry, at
    /// tens of millions of entries) was first seen: an id is in the ledger once.
    ids: HashMap<[u8; 16], u64>,
    pending: Vec<(u64, Opened)>,
    /// Told how many more entries were fully checked.
    progress: Box<dyn FnMut(u64) + Send>,
    /// Signers' keys, decompressed once.
    keys: KeyCache,
}

impl Checker {
    pub fn new(progress: Box<dyn FnMut(u64) + Send>) -> Checker {
        Checker { prev: None, ids: HashMap::new(), pending: Vec::new(), progress, keys: KeyCache::default() }
    }

    pub fn push(&mut self, entry: Entry) -> Result<(), Bad> {
        let seq = entry.seq;
        entry.check_after(self.prev).map_err(|e| Bad { seq: e.seq(), why: e.to_string() })?;
        let opened = Opened::open_with(entry.envelope, &mut self.keys).map_err(|r| Bad { seq, why: format!("envelope: {r}") })?;
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
        self.head()
    }

    /// Where the entries pushed so far end, once their signatures are checked.
    pub fn head(&mut self) -> Result<Head, Bad> {
        self.flush()?;
        Ok(self.prev)
    }
}

/// Verifies the committed stream from seq 1 to its current end. The outer
/// error is NATS failing; the inner one is the ledger failing.
pub async fn verify_stream(reader: &Reader, progress: impl FnOnce(u64) -> Box<dyn FnMut(u64) + Send>) -> Result<Result<Head, Bad>, Unreadable> {
    let last = reader.last_seq().await?;
    let mut checker = Checker::new(progress(last));
    Ok(match extend_stream(reader, &mut checker).await? {
        Ok(_) => checker.finish(),
        Err(bad) => Err(bad),
    })
}

/// Goes on verifying the committed stream where `checker` stopped, up to
/// the stream's current end: a caller that keeps its checker verifies each
/// entry once however often it asks.
pub async fn extend_stream(reader: &Reader, checker: &mut Checker) -> Result<Result<Head, Bad>, Unreadable> {
    let last = reader.last_seq().await?;
    let mut batches = std::pin::pin!(reader.entries(checker.prev, Some(last)));
    while let Some(batch) = batches.next().await {
        let entries = match batch {
            Ok(entries) => entries,
            Err(FollowError::Read(e)) => return Err(e.into()),
            Err(FollowError::Broken { seq, why }) => return Ok(Err(Bad { seq, why })),
        };
        for entry in entries {
            if let Err(bad) = checker.push(entry.into_entry()) {
                return Ok(Err(bad));
            }
        }
    }
    Ok(checker.head())
}
