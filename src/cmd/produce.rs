//! `custody event <kind>` (one event from flags) and `custody import`
//! (a spreadsheet's rows as events): producing without writing JSON. Both
//! shape fields with `custody::produce` and sign with the actor's key.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use custody::produce::{self, Problem, KINDS};
use custody_proto::{Code, Event, Timestamp};
use custody_wire::query::{AnswerCode, ErrorAnswer};
use serde_json::{json, Value};

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct EventArgs {
    /// KIND then its fields as flags: `custody event mined --lot L1
    /// --carats 12.34 --country BW --key miner.nk [--submit]`;
    /// `custody event KIND --help` lists a kind's flags.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "KIND [FLAGS]")]
    args: Vec<String>,
}

/// A flag's name for a field: `certificate.value_usd` → `certificate-value-usd`.
fn flag(field: &str) -> String {
    field.replace(['.', '_'], "-")
}

/// `custody event`'s own parser: a subcommand per kind, a flag per field.
fn event_command() -> clap::Command {
    let mut cmd = clap::Command::new("custody event")
        .about("Build one signed event from flags; print its envelope, or submit it with --submit")
        .subcommand_required(true)
        .arg_required_else_help(true);
    for (kind, about, fields) in KINDS {
        let mut sub = clap::Command::new(*kind).about(*about);
        for f in *fields {
            let help = if f.required { f.help.to_owned() } else { format!("{} (optional)", f.help) };
            sub = sub.arg(clap::Arg::new(f.name).long(flag(f.name)).value_name("TEXT").allow_negative_numbers(true).required(f.required).help(help));
        }
        sub = sub
            .arg(clap::Arg::new("evidence").long("evidence").value_name("TEXT").help("documents backing it, as text (optional)"))
            .arg(clap::Arg::new("key").long("key").value_name("FILE").required(true).help("the actor's key file: signs the event and is its actor"))
            .arg(
                clap::Arg::new("id")
                    .long("id")
                    .value_name("ID")
                    .help("the event's id (default: the kind and a hash of its fields, so the same command twice is one event)"),
            )
            .arg(clap::Arg::new("at").long("at").value_name("DATE").help("when it happened: 2026-11-30 or 2026-11-30T14:05:00Z (default: now)"))
            .arg(
                clap::Arg::new("submit")
                    .long("submit")
                    .action(clap::ArgAction::SetTrue)
                    .help("submit it and print the receipt or refusal, instead of printing the envelope"),
            );
        cmd = cmd.subcommand(sub);
    }
    cmd
}

/// Submits signed envelopes in order; one printed line each (`row` added
/// when given), and how many were refused.
async fn submit(nats: &str, envelopes: Vec<(Option<usize>, Bytes)>) -> anyhow::Result<usize> {
    if envelopes.is_empty() {
        return Ok(0);
    }
    let client = custody::client::connect(nats).await?;
    let raw: Vec<Bytes> = envelopes.iter().map(|(_, e)| e.clone()).collect();
    let mut refused = 0;
    for ((row, envelope), answer) in envelopes.iter().zip(custody::client::submit_batch(&client, &raw).await?) {
        let (mut line, no) = answer.line(envelope);
        refused += usize::from(no);
        if let (Some(r), Some(o)) = (row, line.as_object_mut()) {
            o.insert("row".into(), json!(r));
        }
        println!("{line}");
    }
    Ok(refused)
}

pub async fn event(nats: &str, a: EventArgs) -> anyhow::Result<ExitCode> {
    let matches = match event_command().try_get_matches_from(std::iter::once("custody event".to_owned()).chain(a.args)) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let (kind, m) = matches.subcommand().context("a kind of event")?;
    let fields_of = produce::fields_of(kind).context("a kind custody has")?;
    let mut fields = BTreeMap::new();
    for name in fields_of.iter().map(|f| f.name).chain(["evidence"]) {
        if let Some(v) = m.get_one::<String>(name) {
            fields.insert(name.to_owned(), v.clone());
        }
    }
    let key = custody::client::signing_key(&PathBuf::from(m.get_one::<String>("key").context("--key")?))?;
    let now = Timestamp::now();
    let at = m.get_one::<String>("at").cloned().unwrap_or_else(|| now.to_string());
    let payload = match produce::payload(kind, &key.public_key(), m.get_one::<String>("id").map(String::as_str), &at, &fields, now) {
        Ok((p, _)) => p,
        Err(Problem { code, message }) => {
            eprintln!("custody event {kind}: refused before sending ({code}): {message}");
            println!("{}", json!({"code": code, "message": message}));
            return Ok(ExitCode::from(1));
        }
    };
    let envelope = custody_proto::envelope::sign(&key, payload.to_string().as_bytes())?;
    if !m.get_flag("submit") {
        println!("{}", String::from_utf8_lossy(&envelope));
        return Ok(ExitCode::SUCCESS);
    }
    let refused = submit(nats, vec![(None, envelope.into())]).await?;
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The CSV file (a header row, then one event per row), as a
    /// spreadsheet or an ERP exports it.
    file: PathBuf,
    /// How columns become events (TOML): `kind`, `id`, `occurred_at` and
    /// a `[fields]` table, each a template naming columns in braces, e.g.
    /// `lot = "{Parcel}"`; `[kinds]` translates a kind column's words.
    /// README, "Producing from a spreadsheet", has an example.
    #[arg(long, value_name = "FILE")]
    map: PathBuf,
    /// The actor's key file: signs every event and is its actor.
    #[arg(long)]
    key: PathBuf,
    /// Check every row as the ledger would before it looks at its state
    /// (fields, carats, dates, ids), and, where a projection answers,
    /// which lots exist; print what would be submitted and which rows
    /// would be refused and why; submit nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A mapping file: templates over a row's columns.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    kind: String,
    #[serde(default)]
    id: Option<String>,
    occurred_at: String,
    fields: BTreeMap<String, String>,
    /// A kind column's words → custody's kinds (`"Extraction" = "mined"`).
    #[serde(default)]
    kinds: BTreeMap<String, String>,
}

/// Whether the ledger knows `lot` (asked of a projection).
async fn known(client: &async_nats::Client, lot: &str) -> anyhow::Result<bool> {
    let answer = custody_wire::query::request(client, custody_wire::subjects::QUERY_ORIGIN, &json!({"lot": lot}), std::time::Duration::from_secs(10)).await?;
    Ok(ErrorAnswer::of(&answer).is_none_or(|e| e.code != AnswerCode::UnknownLot))
}

/// What the ledger would say of `event` from the lots it knows and those
/// the rows before it make: a new lot that exists, a lot acted on that
/// does not. Holders and states are the ledger's to judge.
async fn against_state(client: &async_nats::Client, event: &Event, made: &mut HashSet<String>) -> anyhow::Result<Option<Problem>> {
    let (makes, acts_on) = produce::lots_of(event);
    for lot in &makes {
        if made.contains(*lot) || known(client, lot).await? {
            let why = format!("lot {lot} exists already (on the ledger or made by a row above); a lot id is unique forever");
            return Ok(Some(Problem::new(Code::LotExists, why)));
        }
    }
    for lot in &acts_on {
        if !made.contains(*lot) && !known(client, lot).await? {
            return Ok(Some(Problem::new(Code::UnknownLot, format!("lot {lot} is not on the ledger, nor made by a row above"))));
        }
    }
    made.extend(makes.into_iter().map(str::to_owned));
    Ok(None)
}

/// `template` with each `{Column}` replaced by the row's value.
fn render(template: &str, row: &BTreeMap<String, String>, what: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').with_context(|| format!("{what}: {template:?} opens a brace it does not close"))?;
        let column = &rest[open + 1..open + close];
        let value = row.get(column).with_context(|| {
            let names: Vec<&String> = row.keys().collect();
            format!("{what}: the file has no column {column:?} (its columns: {names:?})")
        })?;
        out.push_str(value.trim());
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub async fn import(nats: &str, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let mapping: Mapping = toml::from_str(&std::fs::read_to_string(&a.map).with_context(|| format!("cannot read {}", a.map.display()))?)
        .with_context(|| format!("{} is not a mapping (kind, occurred_at, [fields], optional id and [kinds])", a.map.display()))?;
    let key = custody::client::signing_key(&a.key)?;
    let actor = key.public_key();
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_path(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let header: Vec<String> =
        reader.headers().with_context(|| format!("{} has no header row", a.file.display()))?.iter().map(|h| h.trim().to_owned()).collect();
    let mut envelopes: Vec<(Option<usize>, Bytes)> = Vec::new();
    let (mut refused, mut seen) = (0usize, BTreeMap::<String, usize>::new());
    // A refused row: its line, counted.
    let mut refuse = |n: usize, id: Option<&str>, Problem { code, message }: Problem| {
        refused += 1;
        println!("{}", json!({"row": n, "id": id, "code": code, "message": message}));
    };
    let now = Timestamp::now();
    // A dry run checks rows against the ledger's lots where it can reach
    // a projection; without one it says so and checks what needs no state.
    let state = if a.dry_run {
        match custody::client::connect(nats).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("custody import: {e:#}\n  checking without the ledger's state: whether lots exist is not checked");
                None
            }
        }
    } else {
        None
    };
    let mut made = HashSet::new();
    let mut rows = 0usize;
    for (i, record) in reader.records().enumerate() {
        rows = i + 1;
        // Row 1 is the header, as a spreadsheet numbers it.
        let n = i + 2;
        let record = record.with_context(|| format!("{} row {n}", a.file.display()))?;
        let row: BTreeMap<String, String> = header.iter().cloned().zip(record.iter().map(str::to_owned)).collect();
        let built = (|| -> anyhow::Result<Result<(Value, Event), Problem>> {
            let word = render(&mapping.kind, &row, "kind")?;
            let kind = mapping.kinds.get(&word).cloned().unwrap_or(word);
            let id = mapping.id.as_deref().map(|t| render(t, &row, "id")).transpose()?;
            let at = render(&mapping.occurred_at, &row, "occurred_at")?;
            let mut fields = BTreeMap::new();
            for (name, template) in &mapping.fields {
                fields.insert(name.clone(), render(template, &row, name)?);
            }
            Ok(produce::payload(&kind, &actor, id.as_deref(), &at, &fields, now))
        })()?;
        let (payload, event) = match built {
            Ok(built) => built,
            Err(problem) => {
                refuse(n, None, problem);
                continue;
            }
        };
        let id = event.id.as_str().to_owned();
        if let Some(first) = seen.insert(id.clone(), n) {
            let why = format!("row {n} makes the same event as row {first} (same id {id}); it would be one event, so it is left out");
            refuse(n, Some(&id), Problem { code: "duplicate_row".into(), message: why });
            continue;
        }
        if let Some(client) = &state {
            if let Some(problem) = against_state(client, &event, &mut made).await? {
                refuse(n, Some(&id), problem);
                continue;
            }
        }
        if a.dry_run {
            println!("{}", json!({"row": n, "id": id, "would": "submit", "event": payload}));
        } else {
            envelopes.push((Some(n), custody_proto::envelope::sign(&key, payload.to_string().as_bytes())?.into()));
        }
    }
    if a.dry_run {
        eprintln!(
            "{rows} rows: {} would be submitted, {refused} refused here (dry run: nothing sent; {})",
            rows - refused,
            if state.is_some() {
                "which lots exist was checked against the ledger; holders and states are the ledger's to judge when submitted"
            } else {
                "the ledger's state was not checked"
            }
        );
    } else {
        let at_ledger = submit(nats, envelopes).await?;
        eprintln!(
            "{rows} rows: {} receipted, {} refused ({refused} before sending, {at_ledger} by the ledger)",
            rows - refused - at_ledger,
            refused + at_ledger
        );
        refused += at_ledger;
    }
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
