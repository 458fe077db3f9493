//! `custody certs`: a private certificate authority and one certificate
//! per server, for the TLS of a deployment's cluster routes and leaf
//! nodes (deploy/cluster/nats-*.conf). Each server's certificate serves
//! both ends of a route (server and client authentication), so routes
//! are mutual TLS: a server without a certificate from this CA cannot
//! join the cluster. The CA's key stays where it was made; only
//! `ca.pem` and a server's own pair go to that server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Datelike as _;
use custody_wire::files::{write_whole, Mode};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

#[derive(clap::Args)]
pub struct Args {
    /// The folder to write `ca.pem`, `ca.key` and `<name>.pem`/`<name>.key`
    /// into; an existing `ca.pem` and `ca.key` there are reused, so a
    /// server can be added later.
    #[arg(long)]
    out: PathBuf,
    /// A server's host name (its certificate's name); repeat for each.
    #[arg(long = "name", value_name = "HOST", required = true)]
    names: Vec<String>,
    /// Another name or IP address every server's certificate also holds
    /// (e.g. 127.0.0.1 for a test on one machine); repeat for each.
    #[arg(long = "also", value_name = "NAME_OR_IP")]
    also: Vec<String>,
    /// Years the certificates are valid.
    #[arg(long, default_value_t = 5)]
    years: i32,
}

/// The CA in `dir`: the existing one, or a new one written there.
fn authority(dir: &Path, years: i32) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let (pem, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if pem.exists() && key.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key)?).with_context(|| format!("{} is not a private key", key.display()))?;
        let params =
            CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(&pem)?).with_context(|| format!("{} is not a CA certificate", pem.display()))?;
        let ca = params.self_signed(&key)?;
        return Ok((ca, key));
    }
    anyhow::ensure!(!pem.exists() && !key.exists(), "{} has one of ca.pem and ca.key but not the other", dir.display());
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "custody private CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    valid_for(&mut params, years);
    let key = KeyPair::generate()?;
    let ca = params.self_signed(&key)?;
    write_whole(&key_path(dir, "ca"), key.serialize_pem().as_bytes(), Mode::Private)?;
    write_whole(&pem, ca.pem().as_bytes(), Mode::Shared)?;
    Ok((ca, key))
}

fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// From yesterday (clocks differ) for `years`.
fn valid_for(params: &mut CertificateParams, years: i32) {
    let from = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(from.year() + years, from.month() as u8, from.day().min(28) as u8);
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!((1..=30).contains(&a.years), "--years must be from 1 to 30");
    let (ca, ca_key) = authority(&a.out, a.years)?;
    for name in &a.names {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "--name {name:?}: a host name is letters, digits, '-' and '.'"
        );
        let pem = a.out.join(format!("{name}.pem"));
        anyhow::ensure!(!pem.exists(), "{} exists already: remove it to make a new certificate for {name}", pem.display());
        let mut params = CertificateParams::new(std::iter::once(name).chain(&a.also).cloned().collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        valid_for(&mut params, a.years);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write_whole(&key_path(&a.out, name), key.serialize_pem().as_bytes(), Mode::Private)?;
        write_whole(&pem, cert.pem().as_bytes(), Mode::Shared)?;
        println!("{name}: {} and {} (signed by {})", pem.display(), key_path(&a.out, name).display(), a.out.join("ca.pem").display());
    }
    println!("Give each server ca.pem and its own pair; keep ca.key apart (it makes more).");
    Ok(ExitCode::SUCCESS)
}
