//! The commands of DOMAIN.md's CLI, one module each.

mod authz;
mod backup;
mod bench;
mod bench_edge;
mod bench_read;
mod bench_start;
mod certificate;
mod certs;
pub mod config;
mod edge;
mod gateway;
mod keygen;
mod ledger;
mod produce;
mod projection;
mod query;
mod simulate;
mod status;
mod submit;
mod transparency;
mod up;
mod verify;
mod witness;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Chain of custody for diamonds: a signed, hash-chained ledger over NATS.
#[derive(Parser)]
#[command(name = "custody", version)]
pub struct Cli {
    /// NATS server URL(s), comma-separated (default: the context's, else
    /// nats://127.0.0.1:4222).
    #[arg(long, global = true, env = "CUSTODY_NATS")]
    nats: Option<String>,
    /// A `custody up` data folder whose context.toml says where NATS is
    /// and which keys to use (default: ./data when it holds one).
    #[arg(long, global = true, env = "CUSTODY_CONTEXT", value_name = "DIR")]
    context: Option<std::path::PathBuf>,
    /// Connect to NATS as this nkey user (a seed file): an actor's own key,
    /// or a service key when the server checks identities.
    #[arg(long, global = true, env = "CUSTODY_NKEY")]
    nkey: Option<std::path::PathBuf>,
    /// A TOML file of settings for this deployment: global flags at the
    /// top, each command's in its table ([up], [ledger], ...); a flag
    /// typed here wins. See deploy/custody.toml.
    #[arg(long, global = true, env = "CUSTODY_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new actor key (nkey seed) to a file and print its public key.
    Keygen(keygen::Args),
    /// Look at a key file: `custody key show FILE` prints its public key
    /// and what kind of key it is (a NATS login, a ledger's signing key).
    Key(keygen::KeyArgs),
    /// Make a private CA and a certificate per server for TLS between a
    /// deployment's servers (cluster routes, leaf nodes).
    Certs(certs::Args),
    /// Print the Authorization header that signs one HTTP request to the
    /// gateway as an actor (for curl and scripts; valid once, for 30 s).
    HttpSign(keygen::HttpSignArgs),
    /// Sign NDJSON event payloads (or send ready envelopes) and submit them.
    Submit(submit::Args),
    /// Build one event from flags, without writing JSON: `custody event
    /// mined --lot L1 --carats 12.34 --country BW --key miner.nk --submit`.
    Event(produce::EventArgs),
    /// Turn a spreadsheet's rows (CSV) into events by a mapping file and
    /// submit them, or check them with --dry-run.
    Import(produce::ImportArgs),
    /// Recompute every hash and signature from seq 1.
    Verify(verify::Args),
    /// Run the ledger service.
    Ledger(ledger::Args),
    /// Run the projection (or rebuild it, or print its state digest).
    Projection(projection::Args),
    /// Where a lot's carats were mined, its customs and KP origin, its path.
    Origin(query::OriginArgs),
    /// Whether a lot may enter under a rule set on a date, and why.
    Admissible(query::AdmissibleArgs),
    /// A lot's ancestors and descendants, with carats and events.
    Genealogy(query::GenealogyArgs),
    /// Find lots by a lot id or the number on a paper: a KP certificate or
    /// export declaration, an invoice, a lab report, a verification.
    Find(query::FindArgs),
    /// Lots, a page at a time, filtered: by country of mining, state,
    /// verdict under a rule set on a date, date of creation, or (your own,
    /// or a regulator's asking) holder.
    Lots(query::LotsArgs),
    /// The public flows (carats, stones and value by country of mining,
    /// destination and quarter): from a projection, or recomputed offline
    /// from a backup (`--backup DIR [--as-of SEQ]`).
    Statistics(query::StatisticsArgs),
    /// Serve DOMAIN.md's HTTP surface (regulators, browsers).
    Gateway(gateway::Args),
    /// Submit a seeded simulated supply chain (KP 2022 production mix).
    Simulate(simulate::Args),
    /// Run everything on this machine: NATS, the ledger, the demo chain.
    Up(up::Args),
    /// Measure throughput against a baseline taken in the same run.
    Bench(bench::Args),
    /// Fetch the ledger's latest signed checkpoint (tree size and root).
    Checkpoint(transparency::CheckpointArgs),
    /// Prove an entry is in the ledger, checked against a signed checkpoint.
    Prove(transparency::ProveArgs),
    /// Audit the ledger from outside: every entry, tree root and checkpoint.
    Audit(transparency::AuditArgs),
    /// Keep nats-server's authorization in step with the actor registry.
    Authz(authz::Args),
    /// Make an origin certificate: the answers with every entry they rest
    /// on and one proof against a signed checkpoint, checkable offline.
    Certify(certificate::CertifyArgs),
    /// Check an origin certificate offline with only the ledger's key, and
    /// recompute its answers from its entries.
    VerifyCertificate(certificate::VerifyCertificateArgs),
    /// Run a mine's edge: a leaf node of the hub that takes the mine's
    /// submissions while the link is down and forwards them in order.
    Edge(edge::Args),
    /// Fill a customs filing (US, EU, KP) from an origin certificate.
    Filing(certificate::FilingArgs),
    /// One line per running service: role, head or lag, leader, version,
    /// ready (ask with the operator's key when NATS checks identities).
    Status(status::Args),
    /// Copy the ledger while it runs: its entries up to a fresh signed
    /// checkpoint, audited on the way, and its checkpoints.
    Backup(backup::BackupArgs),
    /// Audit a backup offline, then put it back onto an empty deployment
    /// (connect as the ledger) and rebuild the ledger's store from it.
    Restore(backup::RestoreArgs),
    /// Run a C2SP witness: cosign a ledger's checkpoints only after
    /// checking each extends the last one cosigned, never two roots for
    /// one size (for a KP authority, a customs service, a monitor).
    Witness(witness::Args),
}

/// Which key a client command logs in with when no `--nkey` is typed.
#[derive(Clone, Copy, PartialEq)]
enum Login {
    /// A service, or a command that starts servers: never a context's.
    Own,
    /// The context's read-only login (queries).
    Reader,
    /// The context's operator login (status, backups, the simulator).
    Operator,
    /// The actor's own key, which also signs (submit, event, import).
    Signer,
}

impl Command {
    fn login(&self) -> Login {
        match self {
            Command::Origin(_)
            | Command::Admissible(_)
            | Command::Genealogy(_)
            | Command::Find(_)
            | Command::Lots(_)
            | Command::Statistics(_)
            | Command::Verify(_)
            | Command::Checkpoint(_)
            | Command::Prove(_)
            | Command::Audit(_)
            | Command::Certify(_)
            | Command::Filing(_) => Login::Reader,
            Command::Status(_) | Command::Backup(_) | Command::Simulate(_) => Login::Operator,
            Command::Submit(_) | Command::Event(_) | Command::Import(_) => Login::Signer,
            _ => Login::Own,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let login = cli.command.login();
    // Clients find the deployment by the context; services and `up` are
    // told (a service never picks up a context lying in its folder). A
    // context's keys belong to its deployment: used only with its URL.
    let (nats, context_key) = if login == Login::Own {
        (cli.nats.clone().unwrap_or_else(|| custody::context::DEFAULT_NATS.to_owned()), None)
    } else {
        let resolved = custody::context::resolve(cli.nats.as_deref(), cli.context.as_deref())?;
        custody::client::set_nats_source(resolved.source.clone());
        let key = resolved.context.as_ref().and_then(|c| match login {
            Login::Reader => c.nkey.clone(),
            Login::Operator => c.operator_nkey.clone(),
            Login::Signer | Login::Own => None,
        });
        (resolved.nats, key)
    };
    if let Some(path) = cli.nkey.clone().or(context_key) {
        custody::client::set_identity_file(&path)?;
    }
    let nats = nats.as_str();
    match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Key(a) => keygen::key(a),
        Command::Certs(a) => certs::run(a),
        Command::HttpSign(a) => keygen::http_sign(a),
        Command::Submit(a) => submit::run(nats, a).await,
        Command::Event(a) => produce::event(nats, a).await,
        Command::Import(a) => produce::import(nats, a).await,
        Command::Verify(a) => verify::run(nats, a).await,
        Command::Ledger(a) => ledger::run(nats, a).await,
        Command::Projection(a) => projection::run(nats, a).await,
        Command::Origin(a) => query::origin(nats, a).await,
        Command::Admissible(a) => query::admissible(nats, a).await,
        Command::Genealogy(a) => query::genealogy(nats, a).await,
        Command::Find(a) => query::find(nats, a).await,
        Command::Lots(a) => query::lots(nats, a).await,
        Command::Statistics(a) => query::statistics(nats, a).await,
        Command::Gateway(a) => gateway::run(nats, a).await,
        Command::Simulate(a) => simulate::run(nats, a).await,
        Command::Up(a) => up::run(a, cli.nats.as_deref()).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Checkpoint(a) => transparency::checkpoint(nats, a).await,
        Command::Prove(a) => transparency::prove(nats, a).await,
        Command::Audit(a) => transparency::audit(nats, a).await,
        Command::Authz(a) => authz::run(nats, a).await,
        Command::Certify(a) => certificate::certify(nats, a).await,
        Command::VerifyCertificate(a) => certificate::verify_certificate(a).await,
        Command::Edge(a) => edge::run(nats, a).await,
        Command::Filing(a) => certificate::filing(nats, a).await,
        Command::Status(a) => status::run(nats, a).await,
        Command::Backup(a) => backup::backup(nats, a).await,
        Command::Restore(a) => backup::restore(nats, a).await,
        Command::Witness(a) => witness::run(a).await,
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Today's date (UTC), YYYY-MM-DD: the date of entry when none is given.
pub fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}
