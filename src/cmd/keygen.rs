use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the seed (must not exist).
    #[arg(long)]
    out: PathBuf,
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
