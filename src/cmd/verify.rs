//! `custody verify`: recompute every entry hash, chain link and signature
//! from seq 1, offline from a stopped ledger's store (`--data`) or from the
//! committed stream over NATS. Names the first bad seq; exits 1 on failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use custody_ledger::{subjects, Store};
use custody_proto::{Entry, Event, Hash, Opened};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Verify a stopped ledger's store folder instead of the committed stream.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A failure at one seq.
struct Bad {
    seq: u64,
    why: String,
}

/// Checks entries in order; signatures in batches.
struct Checker {
    prev: Option<(u64, Hash)>,
    /// Where each event id was first seen: an id is in the ledger once.
    ids: HashMap<String, u64>,
    pending: Vec<(u64, Opened)>,
    progress: ProgressBar,
}

impl Checker {
    fn new(total: u64) -> Checker {
        let progress = ProgressBar::new(total);
        progress.set_style(ProgressStyle::with_template("verify {bar:40} {pos}/{len} entries {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        Checker { prev: None, ids: HashMap::new(), pending: Vec::new(), progress }
    }

    fn push(&mut self, entry: Entry) -> Result<(), Bad> {
        let seq = entry.seq;
        entry.check_after(self.prev).map_err(|e| Bad { seq: e.seq(), why: e.to_string() })?;
        let opened = Opened::open(entry.envelope).map_err(|r| Bad { seq, why: format!("envelope: {r}") })?;
        let event = Event::parse(&opened.payload, entry.recorded_at).map_err(|r| Bad { seq, why: format!("event: {r}") })?;
        if let Some(first) = self.ids.insert(event.id.to_string(), seq) {
            return Err(Bad { seq, why: format!("event id {} is recorded twice (first at seq {first})", event.id) });
        }
        self.prev = Some((seq, entry.hash));
        self.pending.push((seq, opened));
        if self.pending.len() >= 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Bad> {
        let (seqs, opened): (Vec<u64>, Vec<Opened>) = std::mem::take(&mut self.pending).into_iter().unzip();
        for (seq, verdict) in seqs.iter().zip(Opened::verify_all(&opened)) {
            verdict.map_err(|r| Bad { seq: *seq, why: format!("signature: {r}") })?;
        }
        self.progress.inc(seqs.len() as u64);
        Ok(())
    }

    fn finish(mut self) -> Result<Option<(u64, Hash)>, Bad> {
        self.flush()?;
        self.progress.finish_and_clear();
        Ok(self.prev)
    }
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let result = match &a.data {
        Some(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || verify_store(&dir)).await?
        }
        None => verify_stream(nats).await?,
    };
    match result {
        Ok(head) => {
            let (seq, hash) = head.map_or((0, String::new()), |(s, h)| (s, h.to_hex()));
            if a.json {
                println!("{}", serde_json::json!({"ok": true, "entries": seq, "head": hash}));
            } else {
                println!("ok: {seq} entries verified; head {hash}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(bad) => {
            if a.json {
                println!("{}", serde_json::json!({"ok": false, "seq": bad.seq, "error": bad.why}));
            } else {
                println!("FAILED at seq {}: {}", bad.seq, bad.why);
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn verify_store(dir: &std::path::Path) -> Result<Option<(u64, Hash)>, Bad> {
    if !dir.join("db").is_file() {
        return Err(Bad { seq: 0, why: format!("{} holds no ledger store", dir.display()) });
    }
    let store = Store::open(dir).map_err(|e| Bad { seq: 0, why: format!("the store cannot be read: {e}") })?;
    let head = store.head().map_err(|e| Bad { seq: 0, why: e.to_string() })?;
    let mut checker = Checker::new(head.map_or(0, |h| h.0));
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

async fn verify_stream(nats: &str) -> anyhow::Result<Result<Option<(u64, Hash)>, Bad>> {
    let client = custody::client::connect(nats).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(subjects::LEDGER_STREAM).await.context("no committed stream: is a ledger running on this NATS?")?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut checker = Checker::new(last);
    if last == 0 {
        return Ok(checker.finish());
    }
    let (_, mut messages) = custody_ledger::follow::from_seq(&js, 1).await?;
    let mut seen = 0;
    while seen < last {
        let Some(msg) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await.context("the committed stream stalled")? else { break };
        let msg = msg?;
        seen = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        if let Err(bad) = entry_from_message(seen, &msg).and_then(|e| checker.push(e)) {
            return Ok(Err(bad));
        }
    }
    Ok(checker.finish())
}

/// Rebuilds an entry from a committed-stream message: headers carry the
/// chain fields, the payload is the envelope.
fn entry_from_message(stream_seq: u64, msg: &jetstream::Message) -> Result<Entry, Bad> {
    let entry = custody_ledger::follow::entry_of(msg).map_err(|why| Bad { seq: stream_seq, why })?;
    if entry.seq != stream_seq {
        return Err(Bad { seq: stream_seq, why: format!("message claims seq {} at stream position {stream_seq}", entry.seq) });
    }
    Ok(entry)
}
