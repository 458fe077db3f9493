//! The replica simulator's soak: runs seed after seed until stopped (or
//! `--seeds N`), printing seeds per second, and stops at the first seed
//! that breaks an invariant, saying how to replay it:
//!
//! ```text
//! cargo run --release -p custody-ledger --example soak [-- --from SEED] [--seeds N] [--replicas 2|3]
//! cargo run --release -p custody-ledger --example soak -- --seed SEED   # replay one
//! cargo run --release -p custody-ledger --example soak -- --without barrier   # see a bug found
//! ```

use std::time::Instant;

use custody_ledger::simulator::{self, Options};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|v| {
            v.parse::<u64>().unwrap_or_else(|_| {
                eprintln!("soak: {name} takes a whole number, not {v:?}");
                std::process::exit(2)
            })
        })
    };
    let mut opts = Options::default();
    if let Some(r) = value("--replicas") {
        opts.replicas = r as usize;
    }
    // A safeguard taken away, to see the simulator find its bug.
    if let Some(flaw) = args.iter().position(|a| a == "--without").and_then(|i| args.get(i + 1)) {
        match flaw.as_str() {
            "barrier" => opts.flaws.no_barrier = true,
            "read-back-patience" => opts.flaws.endless_read_back = true,
            "one-batch-in-flight" => opts.flaws.pipelined = true,
            "bucket-recreate" => opts.no_bucket_recreate = true,
            "refill-rule" => opts.refill_from_any_store = true,
            "renewal-while-catching-up" => opts.renew_after_catch_up = true,
            "clock-check" => opts.no_clock_check = true,
            "clock-check-per-batch" => opts.clock_at_lease_only = true,
            "instance-id" => opts.shared_lease_name = true,
            "key-check" => opts.new_key_on_empty_folder = true,
            "resend" => opts.no_resend = true,
            other => {
                eprintln!("soak: no safeguard called {other:?}: barrier, read-back-patience, one-batch-in-flight, bucket-recreate, refill-rule, renewal-while-catching-up, clock-check, clock-check-per-batch, instance-id, key-check, resend");
                std::process::exit(2)
            }
        }
    }
    if let Some(seed) = value("--seed") {
        match simulator::run(seed, opts) {
            Ok(report) => println!("seed {seed}: ok {report:?}"),
            Err(v) => {
                println!("seed {seed}: at {} ms: {}", v.at_ms, v.what);
                std::process::exit(1);
            }
        }
        return;
    }
    let from = value("--from").unwrap_or(0);
    let count = value("--seeds").unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut last_print = Instant::now();
    let (mut steps, mut receipts) = (0u64, 0u64);
    for (n, seed) in (from..from.saturating_add(count)).enumerate() {
        match simulator::run(seed, opts) {
            Ok(report) => {
                steps += report.steps;
                receipts += report.receipts;
            }
            Err(v) => {
                println!("seed {seed} breaks an invariant at {} ms: {}", v.at_ms, v.what);
                // The same arguments, with this seed.
                let mut same: Vec<String> = Vec::new();
                let mut rest = args.iter();
                while let Some(a) = rest.next() {
                    match a.as_str() {
                        "--seeds" | "--from" | "--seed" => {
                            rest.next();
                        }
                        _ => same.push(a.clone()),
                    }
                }
                println!("replay: cargo run --release -p custody-ledger --example soak -- {} --seed {seed}", same.join(" "));
                std::process::exit(1);
            }
        }
        if last_print.elapsed().as_secs() >= 5 {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            println!("{} seeds ({from}..{}), {:.1} seeds/s, {:.0} steps/s, {receipts} receipts", n + 1, seed + 1, (n + 1) as f64 / secs, steps as f64 / secs);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{count} seeds from {from}: no invariant broken; {:.1} seeds/s, {receipts} receipts", count as f64 / secs);
}
