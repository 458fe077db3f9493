//! `custody verify`: recompute every entry hash, chain link and signature
//! from seq 1, offline from a stopped ledger's store (`--data`) or from the
//! committed stream over NATS. Names the first bad seq; exits 1 on failure.

use std::path::PathBuf;
use std::process::ExitCode;

use custody_audit::verify::{self as audit, Bad, Checker, Head};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Verify a stopped ledger's store folder instead of the committed stream.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Offline: check this signed checkpoint (and, with --proof or
    /// --previous/--consistency, proofs against it) with only --key.
    #[arg(long, requires = "key")]
    checkpoint: Option<PathBuf>,
    /// The ledger's public key (N...), obtained out of band.
    #[arg(long)]
    key: Option<String>,
    /// An inclusion proof bundle (from `custody prove`) to check against
    /// the checkpoint.
    #[arg(long, requires = "checkpoint")]
    proof: Option<PathBuf>,
    /// An earlier checkpoint that --checkpoint must extend ...
    #[arg(long, requires_all = ["checkpoint", "consistency"])]
    previous: Option<PathBuf>,
    /// ... as shown by this consistency proof (`GET /v1/ledger/consistency`).
    #[arg(long, requires = "previous")]
    consistency: Option<PathBuf>,
}

/// A progress bar on standard error (hidden when it is not a terminal).
fn progress(total: u64) -> Box<dyn FnMut(u64) + Send> {
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("verify {bar:40} {pos}/{len} entries {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    Box::new(move |n| {
        bar.inc(n);
        if bar.position() >= total {
            bar.finish_and_clear();
        }
    })
}

/// Verifies a stopped ledger's store folder: its entries, read through the
/// ledger's store module, go through the same checker as the stream's.
fn verify_store(dir: &std::path::Path, progress: impl FnOnce(u64) -> Box<dyn FnMut(u64) + Send>) -> Result<Head, Bad> {
    if !dir.join("db").is_file() {
        return Err(Bad { seq: 0, why: format!("{} holds no ledger store", dir.display()) });
    }
    let store = custody_ledger::Store::open(dir).map_err(|e| Bad { seq: 0, why: format!("the store cannot be read: {e}") })?;
    let head = store.head().map_err(|e| Bad { seq: 0, why: e.to_string() })?;
    let mut checker = Checker::new(progress(head.map_or(0, |h| h.0)));
    for entry in store.entries_from(1) {
        match entry {
            Ok(entry) => checker.push(entry)?,
            // Only now ask where the chain stands: asking flushes the
            // signatures still waiting for their batch.
            Err(e) => return Err(Bad { seq: checker.head()?.map_or(1, |p| p.0 + 1), why: e.to_string() }),
        }
    }
    let last = checker.finish()?;
    if last != head {
        return Err(Bad { seq: last.map_or(1, |l| l.0 + 1), why: format!("the head record names {head:?} but the chain ends at {last:?}") });
    }
    Ok(last)
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    if let (Some(c), Some(key)) = (&a.checkpoint, &a.key) {
        return super::transparency::verify_offline(c, key, a.proof.as_deref(), a.previous.as_deref(), a.consistency.as_deref(), a.json);
    }
    let result = match &a.data {
        Some(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || verify_store(&dir, progress)).await?
        }
        None => {
            let client = custody::client::connect(nats).await?;
            audit::verify_stream(&custody_wire::follow::Reader::ledger(&client), progress).await?
        }
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
