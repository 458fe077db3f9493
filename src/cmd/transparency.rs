//! What a sceptic runs: `checkpoint` (fetch the ledger's signed
//! statement of its size and root), `prove` (an entry's inclusion proof,
//! checked offline against a checkpoint and the ledger's public key) and
//! `audit` (follow the whole ledger from outside and check everything).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use custody_audit::auditor::Auditor;
use custody_proto::merkle;
use custody_proto::{Checkpoint, Hash};
use custody_wire::subjects;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct CheckpointArgs {
    /// The ledger's public key (from `custody ledger key`); when given, the
    /// checkpoint's signature is checked before it is printed.
    #[arg(long)]
    key: Option<String>,
    /// The newest checkpoint the ledger's witnesses cosigned, with their
    /// cosignatures (a fresh one when the ledger has no witnesses).
    #[arg(long)]
    witnessed: bool,
    /// Print it as a C2SP signed note (tlog-checkpoint, with the
    /// witnesses' cosignature lines), as C2SP tools read it.
    #[arg(long)]
    note: bool,
}

#[derive(clap::Args)]
pub struct ProveArgs {
    /// The entry to prove.
    seq: u64,
    /// The ledger's public key: the proof is checked against a checkpoint
    /// it signed.
    #[arg(long)]
    key: String,
    /// Prove against this saved checkpoint (its tree size) instead of a
    /// fresh one.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The entry hash you hold (from your receipt); the proof must start
    /// from it.
    #[arg(long)]
    hash: Option<String>,
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// The ledger's public key, obtained out of band: the one thing the
    /// auditor trusts.
    #[arg(long)]
    key: String,
    /// Folder where the checkpoints seen are kept between runs.
    #[arg(long, default_value = "data/auditor")]
    state: PathBuf,
    /// Keep following, checking again every this many seconds, and print
    /// one JSON line each time the audited position moves; without it,
    /// audit up to the current end and exit.
    #[arg(long)]
    follow: Option<f64>,
}

/// A request to the ledger; its error answer becomes an error.
async fn request(nats: &str, subject: &str, body: Value) -> anyhow::Result<Value> {
    super::query::ask_of("ledger", nats, subject, body)
        .await?
        .map_err(|e| anyhow::anyhow!("{}: {}", e["code"].as_str().unwrap_or("error"), e["message"].as_str().unwrap_or("")))
}

pub async fn checkpoint(nats: &str, a: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let v = request(nats, subjects::CHECKPOINT_SUBJECT, json!({"witnessed": a.witnessed})).await?;
    let c: Checkpoint = serde_json::from_value(v).context("the answer is not a checkpoint")?;
    if let Some(key) = &a.key {
        c.verify(key)?;
    }
    if a.note {
        print!("{}", c.note().context("the ledger signed this checkpoint before checkpoints were notes")?);
    } else {
        println!("{}", serde_json::to_string_pretty(&c)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn hashes(v: &Value, field: &str) -> anyhow::Result<Vec<Hash>> {
    v.get(field)
        .and_then(Value::as_array)
        .with_context(|| format!("no {field:?} in the proof"))?
        .iter()
        .map(|h| h.as_str().and_then(Hash::from_hex).with_context(|| format!("{field:?} holds a bad hash")))
        .collect()
}

fn load_checkpoint(path: &std::path::Path) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a checkpoint", path.display()))
}

/// Checks an inclusion proof bundle against a checkpoint signed by `key`:
/// the checkpoint's signature, then the path from the entry hash to its
/// root. Returns what to tell the user on failure.
pub fn check_inclusion(bundle: &Value, checkpoint: &Checkpoint, key: &str, expected_hash: Option<&str>) -> Result<(), String> {
    let root = checkpoint.verify(key).map_err(|e| e.to_string())?;
    let seq = bundle.get("seq").and_then(Value::as_u64).ok_or("the proof names no seq")?;
    let size = bundle.get("tree_size").and_then(Value::as_u64).ok_or("the proof names no tree size")?;
    if size != checkpoint.tree_size {
        return Err(format!("the proof is for a tree of {size} entries, the checkpoint for {}", checkpoint.tree_size));
    }
    let entry_hash = bundle.get("entry_hash").and_then(Value::as_str).and_then(Hash::from_hex).ok_or("the proof has no entry hash")?;
    if let Some(expected) = expected_hash {
        if expected != entry_hash.to_hex() {
            return Err(format!("the proof is for entry hash {entry_hash}, not {expected}"));
        }
    }
    let path = hashes(bundle, "path").map_err(|e| e.to_string())?;
    merkle::verify_inclusion(checkpoint.tree_hash(), seq, size, &entry_hash, &path, &root)
        .map_err(|e| format!("entry {seq} is not in the checkpointed tree: {e}"))
}

pub async fn prove(nats: &str, a: ProveArgs) -> anyhow::Result<ExitCode> {
    let saved = a.checkpoint.as_deref().map(load_checkpoint).transpose()?;
    let mut body = json!({"seq": a.seq});
    if let Some(c) = &saved {
        body["tree_size"] = json!(c.tree_size);
    }
    let mut bundle = request(nats, subjects::PROOF_SUBJECT, body).await?;
    let checkpoint = match saved {
        Some(c) => c,
        None => serde_json::from_value(bundle.get("checkpoint").cloned().unwrap_or(Value::Null)).context("the proof came without a checkpoint")?,
    };
    bundle["checkpoint"] = json!(checkpoint);
    match check_inclusion(&bundle, &checkpoint, &a.key, a.hash.as_deref()) {
        Ok(()) => {
            println!("{}", serde_json::to_string_pretty(&bundle)?);
            eprintln!("ok: entry {} is in the ledger's tree of {} entries, signed by {}", a.seq, checkpoint.tree_size, a.key);
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("FAILED: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `custody verify --checkpoint FILE --key KEY [--proof FILE] [--previous FILE --consistency FILE]`:
/// offline, with nothing but the ledger's public key.
pub fn verify_offline(
    checkpoint: &std::path::Path,
    key: &str,
    proof: Option<&std::path::Path>,
    previous: Option<&std::path::Path>,
    consistency: Option<&std::path::Path>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let c = load_checkpoint(checkpoint)?;
    let mut checks = vec![];
    let mut result = c.verify(key).map(|_| ()).map_err(|e| e.to_string());
    checks.push("signature");
    if let (Ok(()), Some(p)) = (&result, proof) {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let bundle: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
        result = check_inclusion(&bundle, &c, key, None);
        checks.push("inclusion");
    }
    if let (Ok(()), Some(prev), Some(cons)) = (&result, previous, consistency) {
        let old = load_checkpoint(prev)?;
        let text = std::fs::read_to_string(cons).with_context(|| format!("cannot read {}", cons.display()))?;
        let proof: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", cons.display()))?;
        result = check_consistency(&old, &c, key, &proof);
        checks.push("consistency");
    }
    let ok = result.is_ok();
    if json_out {
        println!("{}", json!({"ok": ok, "tree_size": c.tree_size, "root": c.root, "checked": checks, "error": result.as_ref().err()}));
    } else {
        match &result {
            Ok(()) => println!("ok: checkpoint of {} entries, root {}, signed by {key} ({})", c.tree_size, c.root, checks.join(", ")),
            Err(why) => println!("FAILED: {why}"),
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Checks that `new` extends `old`, both signed by `key`, with a
/// consistency proof `{"from", "to", "proof"}`.
pub fn check_consistency(old: &Checkpoint, new: &Checkpoint, key: &str, proof: &Value) -> Result<(), String> {
    let old_root = old.verify(key).map_err(|e| format!("earlier checkpoint: {e}"))?;
    let new_root = new.verify(key).map_err(|e| format!("later checkpoint: {e}"))?;
    let from = proof.get("from").and_then(Value::as_u64);
    let to = proof.get("to").and_then(Value::as_u64);
    if from != Some(old.tree_size) || to != Some(new.tree_size) {
        return Err(format!("the proof joins {from:?} to {to:?}, not {} to {}", old.tree_size, new.tree_size));
    }
    let path = hashes(proof, "proof").map_err(|e| e.to_string())?;
    if old.tree_hash() != new.tree_hash() {
        return Err("the earlier checkpoint was signed over the blake3 tree, before checkpoints became C2SP notes over SHA-256; no proof joins two trees of two hashes (`custody audit` checks both against the entries)".into());
    }
    merkle::verify_consistency(new.tree_hash(), old.tree_size, new.tree_size, &old_root, &new_root, &path)
        .map_err(|e| format!("the later checkpoint does not extend the earlier one: {e}"))
}

pub async fn audit(nats: &str, a: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut auditor = Auditor::new(&a.key, Some(&a.state))?;
    let client = custody::client::connect(nats).await?;
    let mut reported = None;
    loop {
        let round = match auditor.catch_up(&client).await {
            Ok(r) => r,
            // Following, NATS going away is not the ledger failing: retry.
            Err(e) if a.follow.is_some() => {
                tracing::warn!(error = %e, "cannot read the ledger's streams; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match round {
            Ok(summary) => {
                if a.follow.is_none() {
                    println!("{}", json!({"ok": true, "audit": summary}));
                    return Ok(ExitCode::SUCCESS);
                }
                // Where it stands, whenever that moves: a watcher sees it audit.
                let position = (summary.entries, summary.checkpoints_verified);
                if reported != Some(position) {
                    println!("{}", json!({"ok": true, "audit": summary}));
                    reported = Some(position);
                }
            }
            Err(finding) => {
                println!("{}", json!({"ok": false, "finding": finding.to_string()}));
                eprintln!("custody audit: the ledger fails the audit: {finding}");
                return Ok(ExitCode::from(1));
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(a.follow.unwrap_or(1.0).max(0.1))).await;
    }
}
