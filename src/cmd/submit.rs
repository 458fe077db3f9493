use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// Key file to sign each payload with.
    #[arg(long, required_unless_present = "signed")]
    key: Option<PathBuf>,
    /// Lines are ready DSSE envelopes, not payloads.
    #[arg(long, conflicts_with = "key")]
    signed: bool,
    /// NDJSON input; `-` or nothing for standard input.
    input: Option<PathBuf>,
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let key = a.key.as_deref().map(custody::client::signing_key).transpose()?;
    let reader: Box<dyn BufRead> = match a.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?)),
    };
    let client = custody::client::connect(nats).await?;
    let mut rejected = 0usize;
    // Batch requests of up to the ledger's limit: one round trip for each
    // instead of one per line, with the same outcome for every envelope.
    let mut chunk: Vec<bytes::Bytes> = Vec::new();
    let mut lines = reader.lines();
    loop {
        let line = lines.next().transpose()?;
        if let Some(line) = &line {
            if line.trim().is_empty() {
                continue;
            }
            let envelope = match &key {
                Some(kp) => custody_proto::envelope::sign(kp, line.trim().as_bytes())?,
                None => line.trim().as_bytes().to_vec(),
            };
            chunk.push(envelope.into());
        }
        if chunk.len() == custody_wire::subjects::BATCH_MAX_ENVELOPES || (line.is_none() && !chunk.is_empty()) {
            for (answer, envelope) in custody::client::submit_batch(&client, &chunk).await?.into_iter().zip(&chunk) {
                let (line, refused) = answer.line(envelope);
                rejected += usize::from(refused);
                println!("{line}");
            }
            chunk.clear();
        }
        if line.is_none() {
            break;
        }
    }
    Ok(if rejected == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
