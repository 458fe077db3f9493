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
    /// The lot id (as its holder recorded it: `S1`); `custody find` finds it from the number on a paper.
    lot: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AdmissibleArgs {
    /// The lot id (as its holder recorded it: `S1`); `custody find` finds it from the number on a paper.
    lot: String,
    /// A preset (us-2022, us-2024, eu-2024, eu-2025, uk-2024) or a TOML rule file.
    #[arg(long)]
    rules: String,
    /// The date of entry, YYYY-MM-DD (default: today).
    #[arg(long, default_value_t = super::today())]
    date: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct GenealogyArgs {
    /// The lot id (as its holder recorded it: `S1`); `custody find` finds it from the number on a paper.
    lot: String,
    /// Print the answer as JSON.
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
pub struct LotsArgs {
    /// Part of its mass was mined in this country (RU, BW, ...).
    #[arg(long)]
    mined_in: Option<String>,
    /// rough or polished.
    #[arg(long)]
    state: Option<String>,
    /// true: merged, split or cut into other lots; false: a lot of its own.
    #[arg(long)]
    consumed: Option<bool>,
    /// With --verdict: the rule set each lot is judged under (a preset).
    #[arg(long, requires = "verdict")]
    rules: Option<String>,
    /// admissible, prohibited or undetermined under --rules on --date.
    #[arg(long, requires = "rules")]
    verdict: Option<String>,
    /// The date of entry the verdict is for (default: today).
    #[arg(long, default_value_t = super::today())]
    date: String,
    /// Came into being on or after this day (YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// Came into being on or before this day (YYYY-MM-DD).
    #[arg(long)]
    to: Option<String>,
    /// The lots this actor holds: `me` (the --nkey identity) or its key;
    /// another's only for a regulator (NATS refuses anyone else).
    #[arg(long)]
    holder: Option<String>,
    /// Start after this lot id (a page's `next`).
    #[arg(long)]
    after: Option<String>,
    /// Lots a page (1 to 200); every page is fetched unless --after or
    /// --limit is given.
    #[arg(long)]
    limit: Option<usize>,
    /// Print the answer as JSON (one page).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV, one row a lot.
    /// Print CSV: one row per country of mining, the rest of the filing in dotted columns.
    #[arg(long)]
    csv: bool,
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

/// `mine_origin` as words: `["BW 0.6000", "RU 0.4000"]`.
fn shares(mine_origin: &Value) -> Vec<String> {
    mine_origin.as_array().into_iter().flatten().map(|s| format!("{} {}", s["country"].as_str().unwrap_or("?"), s["share"].as_str().unwrap_or("?"))).collect()
}

pub async fn origin(nats: &str, a: OriginArgs) -> anyhow::Result<ExitCode> {
    let answer = ask(nats, subjects::QUERY_ORIGIN, json!({"lot": a.lot})).await?;
    Ok(finish(answer, a.json, |v| {
        let shares = shares(&v["mine_origin"]);
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

/// Lots, filtered: every page (or the one `--after`/`--limit` names), one
/// line a lot, or CSV, or the page as JSON.
pub async fn lots(nats: &str, a: LotsArgs) -> anyhow::Result<ExitCode> {
    let subject = match a.holder.as_deref() {
        None => subjects::QUERY_LOTS.to_owned(),
        Some("me") => {
            let seed = custody::client::identity().context("--holder me needs --nkey (or CUSTODY_NKEY): the identity whose lots to list")?;
            subjects::holdings(&nkeys::KeyPair::from_seed(&seed)?.public_key())
        }
        Some(key) => subjects::holdings(key),
    };
    let mut body = json!({"mined_in": a.mined_in, "state": a.state, "consumed": a.consumed, "from": a.from, "to": a.to, "after": a.after, "limit": a.limit});
    if a.rules.is_some() {
        body["rules"] = json!(a.rules);
        body["verdict"] = json!(a.verdict);
        body["date"] = json!(a.date);
    }
    if let Some(fields) = body.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
    }
    let one_page = a.json || a.after.is_some() || a.limit.is_some();
    let mut rows = Vec::new();
    let last = loop {
        let page = match ask(nats, &subject, body.clone()).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return Ok(finish(Err(e), a.json, |_| String::new())),
            // NATS drops a question about another's holdings unanswered.
            Err(e) if a.holder.is_some() => return Err(e.context("who holds what is for that actor itself and regulators: is --nkey yours, or a regulator's?")),
            Err(e) => return Err(e),
        };
        rows.extend(page["lots"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str().map(str::to_owned) {
            Some(n) if !one_page => body["after"] = json!(n),
            _ => break page,
        }
    };
    if a.csv {
        print!(
            "{}",
            custody_wire::table::csv(
                &rows,
                &["lot", "state", "carats", "consumed", "created", "held_in", "mine_origin"],
                &json!({"as_of_seq": last["as_of_seq"]}),
                "list"
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    Ok(finish(Ok(last), a.json, |v| {
        let mut out = String::new();
        for l in &rows {
            let shares = shares(&l["mine_origin"]);
            out.push_str(&format!(
                "{:<12} {:>10} ct {:<8} {:<9} in {}  since {}  mined: {}{}\n",
                l["lot"].as_str().unwrap_or(""),
                l["carats"].as_str().unwrap_or(""),
                l["state"].as_str().unwrap_or(""),
                if l["consumed"] == true { "consumed" } else { "" },
                l["held_in"].as_str().unwrap_or(""),
                l["created"].as_str().unwrap_or(""),
                shares.join(", "),
                l["verdict"].as_str().map_or_else(String::new, |v| format!("  {v}")),
            ));
        }
        out.push_str(&format!("{} lot(s), as of seq {}", rows.len(), v["as_of_seq"]));
        if let Some(next) = v["next"].as_str() {
            out.push_str(&format!("; more after {next} (--after {next})"));
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
