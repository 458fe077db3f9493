//! `custody ledger recover`: rebuild the ledger's store from the committed
//! stream when the store is damaged or lost. Every entry is re-verified (hash,
//! link, signature, event) before it is written; the old store is moved
//! aside, never deleted. The reverse, a lost stream refilled from the store,
//! needs no command: the ledger's publisher does it at start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use custody_proto::{ActorKey, Entry};
use futures::StreamExt;

use crate::audit::Checker;
use crate::store::Store;

/// Rebuilds the store at `dir` from the stream; returns the entries written
/// and where the old store was moved, if there was one.
pub async fn recover(js: &jetstream::Context, dir: &Path, authority: &ActorKey) -> anyhow::Result<(u64, Option<PathBuf>)> {
    let reader = crate::follow::Reader::ledger(&js.client());
    let last = reader.last_seq().await.context("no committed stream to recover from")?;
    let moved = if dir.exists() {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
        // Never onto an earlier aside (two recoveries in one second).
        let aside = (1..)
            .map(|n: u32| dir.with_extension(if n == 1 { format!("damaged-{stamp}") } else { format!("damaged-{stamp}-{n}") }))
            .find(|p| !p.exists())
            .context("no free name to move the old store aside to")?;
        std::fs::rename(dir, &aside).with_context(|| format!("cannot move the old store aside to {}", aside.display()))?;
        Some(aside)
    } else {
        None
    };
    let store = Store::open(dir)?;
    store.set_authority(authority.as_str())?;
    // The ledger's signing key is its identity to auditors: keep it.
    if let Some(old_key) = moved.as_ref().map(|m| m.join(crate::notary::KEY_FILE)).filter(|k| k.exists()) {
        std::fs::copy(&old_key, dir.join(crate::notary::KEY_FILE)).context("cannot carry the ledger key over")?;
    }
    let mut checker = Checker::new(Box::new(|_| {}));
    let mut batch: Vec<Entry> = Vec::with_capacity(1024);
    if last > 0 {
        let mut messages = std::pin::pin!(reader.range(1, last));
        while let Some(msg) = messages.next().await {
            let msg = msg.context("reading the committed stream")?;
            let seen = msg.seq;
            let entry = crate::follow::entry_of(&msg).map_err(|why| anyhow::anyhow!("entry {seen}: {why}"))?;
            if entry.seq != seen {
                bail!("stream position {seen} holds entry {}: the stream cannot be trusted", entry.seq);
            }
            checker.push(entry.clone()).map_err(|bad| anyhow::anyhow!("the committed stream fails verification at {bad}; nothing to recover from"))?;
            batch.push(entry);
            if batch.len() == 1024 {
                store.append(&batch)?;
                batch.clear();
            }
        }
    }
    checker.finish().map_err(|bad| anyhow::anyhow!("the committed stream fails verification at {bad}"))?;
    store.append(&batch)?;
    Ok((last, moved))
}
