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
