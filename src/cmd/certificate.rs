//! At the border: `certify` (an origin certificate that carries its own
//! evidence), `verify-certificate` (offline, with only the ledger's public
//! key) and `filing` (customs forms filled from a certificate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use custody_proto::certificate::OriginCertificate;
use custody_wire::query::CertificateQuery;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct CertifyArgs {
    /// The lot id (as its holder recorded it: `S1`); `custody find` finds it from the number on a paper.
    lot: String,
    /// A preset (us-2022, us-2024, eu-2024, eu-2025, uk-2024) or a TOML rule
    /// file; repeat for verdicts under several.
    #[arg(long, required = true)]
    rules: Vec<String>,
    /// The date of entry, YYYY-MM-DD (default: today).
    #[arg(long, default_value_t = super::today())]
    date: String,
    /// Write the certificate here (default: print it).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct VerifyCertificateArgs {
    /// The certificate file.
    file: PathBuf,
    /// The ledger's public key (`N...`), the only thing trusted.
    #[arg(long)]
    key: String,
    /// Recompute the verdicts under these rule sets (presets or TOML files)
    /// instead of the text the certificate carries.
    #[arg(long)]
    rules: Vec<String>,
    #[command(flatten)]
    policy: custody::freshness::Policy,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct FilingArgs {
    /// The lot id (as its holder recorded it: `S1`); `custody find` finds it from the number on a paper.
    lot: String,
    /// us-country-of-mining, eu-due-diligence, kp-mining-countries,
    /// kp-certificate or uk-gbsan0002.
    #[arg(long)]
    form: String,
    /// The certificate to file from, checked against --key before anything
    /// is filled; without it one is made now (and written to
    /// LOT.certificate.json, or --certificate-out).
    #[arg(long, requires = "key")]
    certificate: Option<PathBuf>,
    /// The ledger's public key (`N...`) to check the certificate against
    /// (needed with --certificate; a certificate made now is checked
    /// against the key of the ledger that made it).
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    policy: custody::freshness::Policy,
    #[arg(long)]
    certificate_out: Option<PathBuf>,
    /// The date of entry for a certificate made now (default: today).
    #[arg(long)]
    date: Option<String>,
    /// What only the filer knows, as JSON: {"importer_of_record",
    /// "entry_number", "signer": {"name", "title"}}; a field it lacks is
    /// listed as missing in the filing, never invented.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV: one row per country of mining, the rest of the filing in dotted columns.
    #[arg(long)]
    csv: bool,
}

/// A preset name, or the text of a rule file.
fn rules_arg(r: &str) -> anyhow::Result<String> {
    if Path::new(r).is_file() {
        return std::fs::read_to_string(r).with_context(|| format!("cannot read {r}"));
    }
    Ok(r.to_owned())
}

async fn make(nats: &str, lot: &str, rules: &[String], date: &str) -> anyhow::Result<OriginCertificate> {
    let client = custody::client::connect(nats).await?;
    let rules = rules.iter().map(|r| rules_arg(r)).collect::<anyhow::Result<Vec<_>>>()?;
    let query = CertificateQuery { lot: lot.to_owned(), rules, date: date.to_owned() };
    Ok(custody_wire::certify::certify(&client, &query).await?)
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    custody_wire::files::write_whole(path, bytes, custody_wire::files::Mode::Shared).with_context(|| format!("cannot write {}", path.display()))
}

/// A certificate's id: the blake3 of its file's bytes.
pub fn certificate_id(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

pub async fn certify(nats: &str, a: CertifyArgs) -> anyhow::Result<ExitCode> {
    let cert = match make(nats, &a.lot, &a.rules, &a.date).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("custody: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    let bytes = serde_json::to_vec(&cert)?;
    match &a.out {
        Some(path) => {
            write(path, &bytes)?;
            let verdicts: Vec<String> =
                cert.claims.admissibility.iter().map(|v| format!("{} {}", v["rules"].as_str().unwrap_or(""), v["verdict"].as_str().unwrap_or(""))).collect();
            eprintln!(
                "certificate for {} on {} ({}): {} entries, checkpoint of {} entries, {} bytes, {} -> {}",
                cert.lot,
                cert.date,
                verdicts.join(", "),
                cert.entries.len(),
                cert.checkpoint.tree_size,
                bytes.len(),
                certificate_id(&bytes),
                path.display()
            );
        }
        None => println!("{}", String::from_utf8_lossy(&bytes)),
    }
    Ok(ExitCode::SUCCESS)
}

fn read_certificate(path: &Path) -> anyhow::Result<(OriginCertificate, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cert = serde_json::from_slice(&bytes).with_context(|| format!("{} is not an origin certificate", path.display()))?;
    Ok((cert, bytes))
}

pub async fn verify_certificate(a: VerifyCertificateArgs) -> anyhow::Result<ExitCode> {
    let (cert, _) = match read_certificate(&a.file) {
        Ok(c) => c,
        Err(e) => {
            if a.json {
                println!("{}", json!({"valid": false, "findings": [{"check": "format", "message": format!("{e:#}")}]}));
            } else {
                eprintln!("custody: {e:#}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let insist = a.rules.iter().map(|r| rules_arg(r)).collect::<anyhow::Result<Vec<_>>>()?;
    let report = custody_projection::certificate::verify(&cert, &a.key, &insist);
    let fresh = custody::freshness::check(&cert, &a.key, &a.policy).await?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["freshness"] = serde_json::to_value(&fresh)?;
        v["accepted"] = json!(report.valid && fresh.holds());
        println!("{v}");
    } else {
        // How old the evidence is, and who vouches for it, first.
        for line in fresh.describe() {
            println!("{line}");
        }
        println!(
            "{}: certificate for {} on {}, {} entries under the checkpoint of {} entries ({})",
            if report.valid { "VALID" } else { "INVALID" },
            report.lot,
            report.date,
            report.entries,
            report.checkpoint.tree_size,
            report.checkpoint.time
        );
        if let Some(r) = &report.recomputed {
            let shares: Vec<String> = r.origin["mine_origin"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| format!("{} {}", s["country"].as_str().unwrap_or("?"), s["share"].as_str().unwrap_or("?")))
                .collect();
            println!("  mined in (recomputed): {}; customs origin {}", shares.join(", "), r.origin["customs_origin"].as_str().unwrap_or("?"));
            for (i, v) in r.admissibility.iter().enumerate() {
                let rules = report.rule_sets.get(i).map_or_else(|| v["rules"].as_str().unwrap_or("").to_owned(), |s| s.describe());
                println!("  {rules} on {}: {}", v["date"].as_str().unwrap_or(""), v["verdict"].as_str().unwrap_or(""));
            }
        }
        for f in &report.findings {
            println!("  finding {}: {}", serde_json::to_value(f.check)?.as_str().unwrap_or(""), f.message);
        }
    }
    Ok(if report.valid && fresh.holds() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn filing(nats: &str, a: FilingArgs) -> anyhow::Result<ExitCode> {
    if !custody::filing::FORMS.contains(&a.form.as_str()) {
        eprintln!("custody: {}", custody::filing::FilingError::UnknownForm(a.form.clone()));
        return Ok(ExitCode::from(2));
    }
    let (cert, bytes) = match &a.certificate {
        Some(path) => read_certificate(path)?,
        None => {
            let date = a.date.clone().unwrap_or_else(super::today);
            // The form's rule set in force on the date (the KP form states
            // no verdict; its certificate is made under the EU's).
            let form = if a.form.starts_with("kp-") { "eu-due-diligence" } else { a.form.as_str() };
            let rules = match custody::filing::rules_for(form, &date) {
                Ok(rules) => rules.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                Err(e) => {
                    eprintln!("custody: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let cert = match make(nats, &a.lot, &rules, &date).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("custody: {e:#}");
                    return Ok(ExitCode::from(1));
                }
            };
            let bytes = serde_json::to_vec(&cert)?;
            let out = a.certificate_out.clone().unwrap_or_else(|| PathBuf::from(format!("{}.certificate.json", a.lot)));
            write(&out, &bytes)?;
            eprintln!("certificate backing this filing: {}", out.display());
            (cert, bytes)
        }
    };
    if cert.lot != a.lot {
        eprintln!("custody: the certificate is for {}, not {}", cert.lot, a.lot);
        return Ok(ExitCode::from(1));
    }
    // Nothing is filled from a certificate that does not check out.
    let key = a.key.clone().unwrap_or_else(|| cert.checkpoint.key.clone());
    let report = custody_projection::certificate::verify(&cert, &key, &[]);
    if !report.valid {
        eprintln!("custody: the certificate does not check out against the ledger key {key}, so nothing is filed:");
        for f in &report.findings {
            eprintln!("  {}: {}", serde_json::to_value(f.check)?.as_str().unwrap_or(""), f.message);
        }
        return Ok(ExitCode::from(1));
    }
    let fresh = custody::freshness::check(&cert, &key, &a.policy).await?;
    if !fresh.holds() {
        eprintln!("custody: the certificate is not current enough to file from:");
        for line in fresh.describe() {
            eprintln!("  {line}");
        }
        return Ok(ExitCode::from(1));
    }
    let profile: custody::filing::Profile = match &a.profile {
        Some(p) => serde_json::from_slice(&std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?).with_context(|| {
            format!("{}: not a filer's profile {{\"importer_of_record\", \"entry_number\", \"signer\": {{\"name\", \"title\"}}, \"kp_issuing_authority\", \"kp_expiry_date\"}}", p.display())
        })?,
        None => custody::filing::Profile::default(),
    };
    let today = super::today();
    let filing: Value = match custody::filing::fill(&a.form, &cert, &certificate_id(&bytes), &profile, &today) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("custody: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if a.csv {
        print!("{}", custody::filing::csv(&filing));
    } else if a.json {
        println!("{filing}");
    } else {
        println!("{}", serde_json::to_string_pretty(&filing)?);
    }
    Ok(ExitCode::SUCCESS)
}
