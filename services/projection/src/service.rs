//! The projection on NATS: follows the committed stream from its checkpoint,
//! applies entries strictly in order (halting at a gap or a broken link),
//! saves each chunk with its checkpoint, and answers queries in a queue group
//! so that replicas share the load.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::NaiveDate;
use custody_ledger::{follow, subjects};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::rules::RuleSet;
use crate::store::Store;
use crate::view::{self, Dirty, State};

/// Entries applied and saved as one batch, at most.
const CHUNK: usize = 4096;
/// Most lots a genealogy answer lists on each side.
const MAX_GENEALOGY: usize = 10_000;
/// Largest rule set sent inline in a query: the presets are under 2 KB, a
/// regulator's own file a few KB.
pub const MAX_INLINE_RULES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// NATS server URL.
    pub nats_url: String,
    /// Folder of the projection's own store.
    pub data_dir: PathBuf,
    /// Its NATS identity (an nkey seed), when the server checks one.
    pub nkey: Option<String>,
}

type Shared = Arc<RwLock<State>>;

/// Runs until `shutdown`, or until the stream shows a gap or a broken chain.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir).with_context(|| format!("cannot open {}", config.data_dir.display()))?;
    let state = store.load()?;
    tracing::info!(checkpoint = ?state.checkpoint.map(|c| c.0), lots = state.lots.len(), "projection store loaded");
    let state: Shared = Arc::new(RwLock::new(state));
    let client = custody_ledger::connect::connect(&config.nats_url, "custody-projection", config.nkey.as_deref()).await?;

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve(client.clone(), state.clone()));
    tasks.spawn(follow_stream(follow::Reader::ledger(&client), store, state, None));
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(r) => r.and(Err(anyhow::anyhow!("a projection task ended unexpectedly"))),
            Err(e) => Err(e.into()),
        },
    };
    tasks.shutdown().await;
    result
}

/// Replays the committed stream from seq 1 into an emptied store, up to the
/// stream's current end, and returns the final `(seq, digest)`.
pub async fn rebuild(config: Config) -> anyhow::Result<(u64, String)> {
    let state = replay(config).await?;
    Ok((state.checkpoint.map_or(0, |c| c.0), digest(&state)))
}

/// [`rebuild`] without the digest: the replayed state.
pub async fn replay(config: Config) -> anyhow::Result<State> {
    let store = Store::open(&config.data_dir)?;
    store.clear()?;
    let client = custody_ledger::connect::connect(&config.nats_url, "custody-projection-replay", config.nkey.as_deref()).await?;
    let reader = follow::Reader::ledger(&client);
    let end = reader.last_seq().await?;
    let state: Shared = Arc::new(RwLock::new(State::default()));
    follow_stream(reader, store, state.clone(), Some(end)).await?;
    let s = state.read().map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
    Ok(s.clone())
}

/// A digest of the whole state: equal states, equal digests.
pub fn digest(state: &State) -> String {
    let mut h = blake3::Hasher::new_derive_key("custody 2026-11 projection state v1");
    let mut add = |tag: &str, key: &str, v: Vec<u8>| {
        h.update(tag.as_bytes());
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(&v);
    };
    if let Some((seq, hash)) = state.checkpoint {
        add("m", &seq.to_string(), hash.0.to_vec());
    }
    for (k, v) in &state.lots {
        add("l", k, serde_json::to_vec(v).unwrap_or_default());
    }
    for (k, v) in &state.actors {
        add("a", k, serde_json::to_vec(v).unwrap_or_default());
    }
    for (k, v) in &state.shipments {
        add("s", k, serde_json::to_vec(v).unwrap_or_default());
    }
    for (k, v) in &state.yields {
        add("y", k, serde_json::to_vec(v).unwrap_or_default());
    }
    h.finalize().to_hex().to_string()
}

/// How applying a stream ended, short of a broken chain (which is an error).
enum Flow {
    /// Reached `until`.
    Done,
    /// Reading failed (NATS restarting, say); go on after the checkpoint.
    Interrupted(anyhow::Error),
}

async fn follow_stream(reader: follow::Reader, store: Store, state: Shared, until: Option<u64>) -> anyhow::Result<()> {
    loop {
        let next = state.read().map_err(|_| anyhow::anyhow!("state lock poisoned"))?.checkpoint.map_or(1, |c| c.0 + 1);
        if until.is_some_and(|u| next > u) {
            return Ok(());
        }
        match apply_stream(reader.follow(next), &store, &state, until).await? {
            Flow::Done => return Ok(()),
            Flow::Interrupted(e) => {
                tracing::warn!(error = %e, "reading the committed stream failed; going on after the checkpoint");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Applies batches as they arrive, several ready ones as one chunk of up
/// to [`CHUNK`] entries, and saves each chunk with its checkpoint. A broken
/// chain is an error; a read failure is a [`Flow::Interrupted`], after what
/// was read has been applied and saved.
async fn apply_stream(
    batches: impl futures::Stream<Item = Result<Vec<follow::StreamMsg>, follow::ReadError>>,
    store: &Store,
    state: &Shared,
    until: Option<u64>,
) -> anyhow::Result<Flow> {
    let mut batches = std::pin::pin!(batches.ready_chunks(CHUNK.div_ceil(follow::BATCH)));
    while let Some(ready) = batches.next().await {
        let mut dirty = Dirty::default();
        let mut last = 0;
        let mut interrupted = None;
        {
            let mut s = state.write().map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
            'chunk: for batch in ready {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        interrupted = Some(anyhow::Error::new(e));
                        break;
                    }
                };
                for msg in batch {
                    let entry = follow::entry_of(&msg).map_err(|why| anyhow::anyhow!("committed stream message unreadable: {why}"))?;
                    if entry.seq != msg.seq {
                        bail!("committed stream position {} holds entry {}: halting", msg.seq, entry.seq);
                    }
                    s.apply(&entry, &mut dirty).with_context(|| "halting: the committed stream breaks the chain")?;
                    last = entry.seq;
                    custody_ledger::crashpoint::reached("projection.apply");
                    if until.is_some_and(|u| last >= u) {
                        break 'chunk;
                    }
                }
            }
            tokio::task::block_in_place(|| store.save(&s, &dirty))?;
            custody_ledger::crashpoint::reached("projection.saved");
        }
        if let Some(e) = interrupted {
            return Ok(Flow::Interrupted(e));
        }
        if until.is_some_and(|u| last >= u) {
            return Ok(Flow::Done);
        }
    }
    Ok(Flow::Interrupted(anyhow::anyhow!("the committed stream ended")))
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

/// Answers one query; never panics on input.
pub fn answer(state: &State, subject: &str, body: &[u8]) -> Value {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error("bad_request", "the query is not JSON");
    };
    if subject == subjects::QUERY_DIGEST {
        return json!({"seq": state.checkpoint.map_or(0, |c| c.0), "digest": digest(state)});
    }
    if subject == subjects::QUERY_ACTOR {
        let Some(key) = req["key"].as_str() else { return error("bad_request", "the query needs a \"key\"") };
        return match state.actors.get(key) {
            Some(a) => json!({"key": key, "name": a.name, "country": a.country, "roles": a.roles, "revoked": a.revoked}),
            None => error("unknown_actor", format!("{:?} is not a registered actor", custody_proto::ids::truncate(key))),
        };
    }
    let Some(lot_id) = req["lot"].as_str() else {
        return error("bad_request", "the query needs a \"lot\"");
    };
    let Some(lot) = state.lots.get(lot_id) else {
        let shown = custody_proto::ids::truncate(lot_id);
        return error("unknown_lot", format!("lot {shown:?} is not in the projection (up to seq {})", state.checkpoint.map_or(0, |c| c.0)));
    };
    match subject {
        subjects::QUERY_ORIGIN => view::origin(&state.answerable(lot)),
        subjects::QUERY_ADMISSIBILITY => {
            let Some(date) = req["date"].as_str() else { return error("invalid_date", "a date (YYYY-MM-DD) is needed") };
            let Ok(date) = NaiveDate::parse_from_str(date, "%Y-%m-%d") else {
                return error("invalid_date", format!("{date:?} is not a date of the form YYYY-MM-DD"));
            };
            let rules = req["rules"].as_str().unwrap_or("");
            if rules.len() > MAX_INLINE_RULES {
                return error(
                    "rules_too_large",
                    format!(
                        "the inline rule set is {} bytes; at most {MAX_INLINE_RULES} bytes (and {} rules) are accepted",
                        rules.len(),
                        crate::rules::MAX_RULES
                    ),
                );
            }
            match RuleSet::load(rules) {
                Ok(set) => view::admissibility(&state.answerable(lot), &set, date),
                Err(e @ crate::rules::RuleError::Unknown(_)) => error("unknown_rules", e.to_string()),
                Err(e) => error("invalid_rules", e.to_string()),
            }
        }
        subjects::QUERY_GENEALOGY => genealogy(state, lot),
        _ => error("bad_request", format!("no query {subject}")),
    }
}

fn node(l: &view::Lot) -> Value {
    json!({"lot": l.lot, "carats": l.carats, "state": l.state, "event": l.created.kind, "seq": l.created.seq, "hash": l.created.hash, "country": l.created.country, "parents": l.parents})
}

/// Ancestors and descendants, breadth first, each side bounded.
fn genealogy(state: &State, lot: &view::Lot) -> Value {
    let walk = |next: &dyn Fn(&view::Lot) -> Vec<String>| {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        let mut queue: std::collections::VecDeque<String> = next(lot).into();
        let mut truncated = false;
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if out.len() >= MAX_GENEALOGY {
                truncated = true;
                break;
            }
            if let Some(l) = state.lots.get(&id) {
                out.push(node(l));
                queue.extend(next(l));
            }
        }
        (out, truncated)
    };
    let (ancestors, a_trunc) = walk(&|l| l.parents.clone());
    let (descendants, d_trunc) = walk(&|l| l.children.clone());
    json!({"lot": lot.lot, "node": node(lot), "ancestors": ancestors, "descendants": descendants, "truncated": a_trunc || d_trunc})
}

async fn serve(client: async_nats::Client, state: Shared) -> anyhow::Result<()> {
    let mut sub = client.queue_subscribe("custody.query.>", subjects::PROJECTION_GROUP.to_owned()).await?;
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let answer = match state.read() {
            Ok(s) => answer(&s, msg.subject.as_str(), &msg.payload),
            Err(_) => error("internal", "state lock poisoned"),
        };
        let body = within_limit(answer.to_string(), client.server_info().max_payload);
        let _ = client.publish(reply, body.into()).await;
    }
    Ok(())
}

/// The answer, or, when it is larger than NATS carries (the server would
/// drop it and the asker would time out), a refusal that says so.
fn within_limit(answer: String, max_payload: usize) -> String {
    if answer.len() <= max_payload {
        return answer;
    }
    let why = format!(
        "the answer is {} bytes, more than the {max_payload} bytes NATS carries; ask for less (the genealogy of a lot with this many relatives does not fit)",
        answer.len()
    );
    error("answer_too_large", why).to_string()
}
