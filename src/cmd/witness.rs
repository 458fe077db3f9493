//! `custody witness`: a C2SP tlog-witness any organisation can run for a
//! custody ledger (see custody_witness).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use custody_proto::note::{self, NoteKey};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the witness's key, state and evidence. Keep it: a witness
    /// whose folder is lost must be retired under a new key, not restarted.
    #[arg(long, global = true, default_value = "data/witness")]
    data: PathBuf,
    /// The witness's name (its key name in cosignatures), e.g. `witness.kp.example`.
    #[arg(long, global = true, default_value = "witness.custody.local")]
    name: String,
    /// A log it witnesses: its C2SP verifier key (`custody ledger vkey`),
    /// or ORIGIN=NKEY. Repeatable.
    #[arg(long = "log", value_name = "VKEY")]
    logs: Vec<String>,
    /// Address to serve `POST /add-checkpoint` on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: SocketAddr,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print the witness's verifier key (name+id+base64), the one ledgers
    /// (`custody ledger --witness VKEY=URL`) and verifiers
    /// (`verify-certificate --witness`) are given.
    Key,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let logs = a.logs.iter().map(|l| NoteKey::parse(l, note::ED25519)).collect::<Result<Vec<_>, _>>()?;
    let witness = Arc::new(custody_witness::Witness::open(&a.data, &a.name, logs.clone())?);
    if let Some(Action::Key) = a.action {
        println!("{}", witness.vkey());
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(!logs.is_empty(), "give at least one --log VKEY to witness");
    tracing::info!(vkey = %witness.vkey(), logs = logs.len(), "witness starting");
    custody_witness::serve(witness, a.listen, |addr| println!("witness listening on http://{addr}"), super::stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
