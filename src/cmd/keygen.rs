use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the seed (must not exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    action: KeyAction,
}

#[derive(clap::Subcommand)]
enum KeyAction {
    /// Print the public key in a key file (a seed, `SU...`/`SN...`, or a
    /// public key) and what kind of key it is, as `ssh-keygen -y` does.
    Show {
        /// The key file.
        file: PathBuf,
        /// Print `{"file", "public_key", "kind", "seed", "use"}`.
        #[arg(long)]
        json: bool,
    },
}

/// What each kind of nkey is for, in custody, by its public key's first
/// letter.
fn kind_of(public_key: &str) -> (&'static str, &'static str) {
    match public_key.chars().next() {
        Some('U') => ("user", "a NATS login: an actor's (which also signs its events) or a service's"),
        Some('N') => ("server", "a ledger's checkpoint signing key: the key auditors, witnesses and certificate checkers trust"),
        Some('A') => ("account", "a NATS account key (custody does not use one)"),
        Some('O') => ("operator", "a NATS operator key (custody does not use one)"),
        Some('C') => ("cluster", "a NATS cluster key (custody does not use one)"),
        _ => ("unknown", "not a kind custody knows"),
    }
}

/// `custody key show FILE`.
pub fn key(a: KeyArgs) -> anyhow::Result<ExitCode> {
    let KeyAction::Show { file, json } = a.action;
    let (public_key, seed) = custody::keys::read_public(&file)?;
    let (kind, used) = kind_of(&public_key);
    if json {
        println!("{}", serde_json::json!({"file": file, "public_key": public_key, "kind": kind, "seed": seed, "use": used}));
    } else {
        let what = if seed { "seed" } else { "public key only" };
        println!("{public_key}\n  {kind} key ({what}): {used}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let kp = custody::keys::create(&a.out)?;
    println!("{}", kp.public_key());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct HttpSignArgs {
    /// The actor's key (an nkey seed file) that signs.
    #[arg(long)]
    key: PathBuf,
    /// The HTTP method the request will use.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The path and query exactly as the request will send them, e.g.
    /// `/v1/lots/S1/certificate?rules=us-2024&date=2024-11-15`.
    path: String,
}

/// Prints the `Authorization` header value of a signed request (see
/// `custody_proto::request`), good for one request within 30 s:
/// `curl -H "Authorization: $(custody http-sign --key me.nk PATH)" URL`.
pub fn http_sign(a: HttpSignArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.path.starts_with('/'), "the path starts with /: the path and query as the request sends them, not a URL");
    let key = custody::keys::load(&a.key)?;
    let header = custody_proto::request::sign(&key, &a.method.to_uppercase(), &a.path, custody_proto::Timestamp::now()).map_err(anyhow::Error::msg)?;
    println!("{header}");
    Ok(ExitCode::SUCCESS)
}
