//! The regulators' queries over NATS: `origin`, `admissible`, `genealogy`,
//! answered by any projection replica in the queue group.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use custody_wire::subjects;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct OriginArgs {
    lot: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AdmissibleArgs {
    lot: String,
    /// A preset (us-2022, us-2024, eu-2024, eu-2025, uk-2024) or a TOML rule file.
    #[arg(long)]
    rules: String,
    /// The date of entry, YYYY-MM-DD (default: today).
    #[arg(long, default_value_t = super::today())]
    date: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct GenealogyArgs {
    lot: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct FindArgs {
    /// A lot id, or the number on a paper (any case): a KP certificate or
    /// export declaration, an invoice, a lab report, a verification.
    query: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct StatisticsArgs {
    /// Recompute from this backup (`custody backup`), audited first,
    /// instead of asking a projection.
    #[arg(long, value_name = "DIR")]
    backup: Option<std::path::PathBuf>,
    /// With --backup: the ledger key the backup must be signed with
    /// (without it, the key its manifest names).
    #[arg(long, requires = "backup")]
    key: Option<String>,
    /// With --backup: count the entries up to this seq only (the `as_of`
    /// of figures published earlier).
    #[arg(long, value_name = "SEQ", requires = "backup")]
    as_of: Option<u64>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Sends a query to the projection: its answer, or its error answer.
pub async fn ask(nats: &str, subject: &str, body: Value) -> anyhow::Result<Result<Value, Value>> {
    ask_of("projection", nats, subject, body).await
}

/// Sends a request to `who` (a projection or the ledger): its answer, or
/// its error answer `{"code","message"}`.
pub async fn ask_of(who: &str, nats: &str, subject: &str, body: Value) -> anyhow::Result<Result<Value, Value>> {
    let client = custody::client::connect(nats).await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), client.request(subject.to_owned(), body.to_string().into()))
        .await
        .with_context(|| format!("no {who} answered within 10 s"))?
        .with_context(|| format!("no {who} is answering"))?;
    let v: Value = serde_json::from_slice(&reply.payload).with_context(|| format!("the {who}'s answer is not JSON"))?;
    Ok(if v.get("code").is_some() && v.get("verdict").is_none() { Err(v) } else { Ok(v) })
}

fn finish(answer: Result<Value, Value>, json: bool, human: impl Fn(&Value) -> String) -> ExitCode {
    match answer {
        Ok(v) if json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("{}", human(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!("{e}");
            } else {
                eprintln!("custody: {}: {}", e["code"].as_str().unwrap_or("error"), e["message"].as_str().unwrap_or(""));
            }
            ExitCode::from(1)
        }
    }
}

pub async fn origin(nats: &str, a: OriginArgs) -> anyhow::Result<ExitCode> {
    let answer = ask(nats, subjects::QUERY_ORIGIN, json!({"lot": a.lot})).await?;
    Ok(finish(answer, a.json, |v| {
        let shares: Vec<String> = v["mine_origin"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} {}", s["country"].as_str().unwrap_or("?"), s["share"].as_str().unwrap_or("?")))
            .collect();
        let mut out = format!(
            "{} ({} ct, {})\n  mined in:       {}\n  customs origin: {}\n  KP origin:      {}\n  custody model:  {}\n  traced:         {}",
            v["lot"].as_str().unwrap_or(""),
            v["carats"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or(""),
            shares.join(", "),
            v["customs_origin"].as_str().unwrap_or(""),
            v["kp_origin"].as_str().unwrap_or(""),
            v["custody_model"].as_str().unwrap_or(""),
            v["traced"]
        );
        for s in v["path"].as_array().into_iter().flatten() {
            let vouched = match s["vouched"]["by"].as_str() {
                Some("verified") => {
                    format!("[verified by {} {}]", s["vouched"]["verifier"].as_str().unwrap_or("?"), s["vouched"]["verification"].as_str().unwrap_or(""))
                }
                Some("evidenced") => format!("[evidenced: {} document(s)]", s["vouched"]["evidence"].as_array().map_or(0, Vec::len)),
                _ => "[declared]".to_owned(),
            };
            out.push_str(&format!(
                "\n  seq {:>6} {} {} {vouched}  {}",
                s["seq"],
                s["date"].as_str().unwrap_or(""),
                s["note"].as_str().unwrap_or(""),
                &s["hash"].as_str().unwrap_or("")[..12.min(s["hash"].as_str().unwrap_or("").len())]
            ));
        }
        for w in v["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n  warning: {}", w.as_str().unwrap_or("")));
        }
        out
    }))
}

/// One line per lot found: what it matched, and what it became since.
pub async fn find(nats: &str, a: FindArgs) -> anyhow::Result<ExitCode> {
    let answer = ask(nats, subjects::QUERY_SEARCH, json!({"q": a.query})).await?;
    Ok(finish(answer, a.json, |v| {
        let found = v["found"].as_array().cloned().unwrap_or_default();
        if found.is_empty() {
            return format!("nothing found for {:?} (as of seq {})", v["query"].as_str().unwrap_or(""), v["as_of_seq"]);
        }
        let mut out = String::new();
        for f in &found {
            let lot = f["lot"].as_str().unwrap_or("");
            out.push_str(&format!(
                "{lot:<12} {} ct {:<8} {} (seq {})",
                f["carats"].as_str().unwrap_or(""),
                f["state"].as_str().unwrap_or(""),
                f["matched"].as_str().unwrap_or(""),
                f["seq"]
            ));
            let into: Vec<&str> = f["made_into"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !into.is_empty() {
                out.push_str(&format!("; since made into {}", into.join(", ")));
            }
            out.push('\n');
        }
        if v["truncated"] == true {
            out.push_str("(more lots match than shown)\n");
        }
        out.trim_end().to_owned()
    }))
}

/// The public flows, from a projection or recomputed from a backup.
pub async fn statistics(nats: &str, a: StatisticsArgs) -> anyhow::Result<ExitCode> {
    let answer = match &a.backup {
        None => ask(nats, subjects::QUERY_STATISTICS, json!({})).await?,
        Some(dir) => {
            let checked = custody::backup::check(dir, a.key.as_deref())?;
            let mut state = custody_projection::view::State::default();
            let until = a.as_of.unwrap_or(u64::MAX);
            checked.for_each_entry(|e| {
                if e.seq <= until {
                    state.apply(&e).map_err(|err| anyhow::anyhow!("entry {}: {err}", e.seq))?;
                }
                Ok(())
            })?;
            if let Some(seq) = a.as_of {
                anyhow::ensure!(
                    state.checkpoint.is_some_and(|c| c.0 == seq),
                    "the backup holds {} entries, fewer than --as-of {seq}",
                    state.checkpoint.map_or(0, |c| c.0)
                );
            }
            Ok(state.flows.answer(&state))
        }
    };
    Ok(finish(answer, a.json, |v| {
        let mut out = format!("as of entry {} (each figure from at least {} actors)", v["as_of"]["seq"], v["minimum_actors"]);
        for f in v["flows"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n  mined in {:<7} to {:<3} {:<7} {:>12} ct {:>6} stones {:>14} USD",
                f["mined_in"].as_str().unwrap_or(""),
                f["to"].as_str().unwrap_or(""),
                f["quarter"].as_str().unwrap_or(""),
                f["carats"].as_str().unwrap_or(""),
                f["stones"],
                f["value_usd"].as_str().unwrap_or("")
            ));
        }
        if v["withheld"] == true {
            out.push_str("\n  (some flows are too thin to publish, even pooled)");
        }
        if let Some(c) = v["in_custody"].as_object() {
            out.push_str(&format!(
                "\n  in custody now: {} ct; untraced {}, claimed {}, verified {}",
                c["carats"].as_str().unwrap_or(""),
                c["untraced_share"].as_str().unwrap_or(""),
                c["claimed_share"].as_str().unwrap_or(""),
                c["verified_share"].as_str().unwrap_or("")
            ));
        }
        if let Some(r) = v["late_record_rate"].as_str() {
            out.push_str(&format!("\n  late records: {r} of events about lots"));
        }
        out
    }))
}

pub async fn admissible(nats: &str, a: AdmissibleArgs) -> anyhow::Result<ExitCode> {
    // A path to a file sends its text; anything else is a preset name.
    let rules =
        if Path::new(&a.rules).is_file() { std::fs::read_to_string(&a.rules).with_context(|| format!("cannot read {}", a.rules))? } else { a.rules.clone() };
    let answer = ask(nats, subjects::QUERY_ADMISSIBILITY, json!({"lot": a.lot, "rules": rules, "date": a.date})).await?;
    Ok(finish(answer, a.json, |v| {
        let mut out = format!(
            "{} under {} on {}: {}",
            v["lot"].as_str().unwrap_or(""),
            v["rules"].as_str().unwrap_or(""),
            v["date"].as_str().unwrap_or(""),
            v["verdict"].as_str().unwrap_or("")
        );
        for r in v["reasons"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n  {:<13} {}: {}",
                r["finding"].as_str().unwrap_or(""),
                r["rule"].as_str().unwrap_or(""),
                r["text"].as_str().unwrap_or("")
            ));
        }
        out
    }))
}

pub async fn genealogy(nats: &str, a: GenealogyArgs) -> anyhow::Result<ExitCode> {
    let answer = ask(nats, subjects::QUERY_GENEALOGY, json!({"lot": a.lot})).await?;
    Ok(finish(answer, a.json, |v| {
        let line = |n: &Value| {
            format!(
                "{} {} ct ({} at seq {}, {})",
                n["lot"].as_str().unwrap_or(""),
                n["carats"].as_str().unwrap_or(""),
                n["event"].as_str().unwrap_or(""),
                n["seq"],
                n["country"].as_str().unwrap_or("")
            )
        };
        let mut out = line(&v["node"]);
        for n in v["ancestors"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n  from  {}", line(n)));
        }
        for n in v["descendants"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n  into  {}", line(n)));
        }
        out
    }))
}
