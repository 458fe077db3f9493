//! `custody bench start`: how long a ledger takes to open a long history,
//! from its saved write model against verifying every signature, in the
//! same run. The history is written straight into a store
//! ([`custody_ledger::synthetic`]), without NATS.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use custody_ledger::ledger::Ledger;
use custody_proto::ActorKey;
use serde_json::json;

/// The authority's seed, kept with a history so that it can be reopened.
const AUTHORITY_FILE: &str = "bench-authority.nk";

pub fn start(entries: u64, keep: Option<PathBuf>) -> anyhow::Result<()> {
    let scratch = if keep.is_none() { Some(super::bench::scratch("start")?) } else { None };
    let dir = match (&keep, &scratch) {
        (Some(d), _) => d.clone(),
        (None, Some(s)) => s.path().to_path_buf(),
        (None, None) => anyhow::bail!("no folder for the history"),
    };
    let store = dir.join("ledger");
    let seed_file = dir.join(AUTHORITY_FILE);
    let built = Instant::now();
    let authority: ActorKey = if seed_file.exists() {
        custody::keys::load(&seed_file)?.public_key().parse().map_err(anyhow::Error::msg)?
    } else {
        let mut world = custody_ledger::synthetic::Synthetic::new(100);
        let mut ledger = Ledger::open(&store, &world.authority_key())?;
        let bar = indicatif::ProgressBar::new(entries);
        let step = 100_000.min(entries.max(1));
        let mut done = 0;
        while done < entries {
            let n = step.min(entries - done);
            world.extend(&mut ledger, n)?;
            done += n;
            bar.set_position(done);
        }
        bar.finish_and_clear();
        custody_wire::files::write_whole(&seed_file, world.authority.seed()?.as_bytes(), custody_wire::files::Mode::Private)?;
        world.authority_key()
    };
    let built_s = built.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(store.join(custody_ledger::saved::FILE));
    // Each start in a process of its own, as a real one: the baseline with
    // no saved state (every signature verified), which saves it, then the
    // start from it.
    let full = started(&store, &authority)?;
    let head = full["head"].as_u64().unwrap_or(0);
    anyhow::ensure!(full["replayed"].as_u64() == Some(head), "the baseline replayed {} of {head} entries", full["replayed"]);
    let size = std::fs::metadata(store.join(custody_ledger::saved::FILE))?.len();
    let fast = started(&store, &authority)?;
    anyhow::ensure!(fast["replayed"].as_u64() == Some(0), "the start from the saved state replayed {} entries", fast["replayed"]);
    anyhow::ensure!(fast["digest"] == full["digest"], "the state from the saved write model differs from the one replayed");
    let (full_s, fast_s) = (full["seconds"].as_f64().unwrap_or(0.0), fast["seconds"].as_f64().unwrap_or(0.0));
    drop(scratch);
    let r = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        json!({
            "bench": "start", "entries": head, "history_built_s": r(built_s),
            "every_signature_s": r(full_s), "from_saved_model_s": r(fast_s), "saved_model_mb": r(size as f64 / 1e6),
            "peak_rss_mb": {"every_signature": full["peak_rss_mb"], "from_saved_model": fast["peak_rss_mb"]},
            "ratio_saved_to_every_signature": (fast_s / full_s * 1000.0).round() / 1000.0,
            "cores": std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        })
    );
    Ok(())
}

/// Runs `custody ledger check` on the store: how long its open took, and
/// the process's peak resident memory.
fn started(store: &std::path::Path, authority: &ActorKey) -> anyhow::Result<serde_json::Value> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["ledger", "--data", &store.display().to_string(), "--authority", authority.as_str(), "check", "--json"])
        .output()
        .context("run custody ledger check")?;
    anyhow::ensure!(out.status.success(), "custody ledger check failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}
