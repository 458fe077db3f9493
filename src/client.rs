//! Submitting envelopes the way any producer would: request-reply on the
//! signer's submission subject, retrying with the same bytes (the event id
//! makes a retry harmless) until the ledger answers.

use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use custody_ledger::subjects;
use custody_proto::{ActorKey, Envelope, Outcome};

/// The nkey seed this process connects as (`--nkey`), set once at start.
static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the NATS identity of this process from an nkey seed file.
pub fn set_identity_file(path: &std::path::Path) -> anyhow::Result<()> {
    let key = crate::keys::load(path).with_context(|| format!("--nkey {}", path.display()))?;
    let seed = key.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = IDENTITY.set(seed);
    Ok(())
}

/// The nkey seed this process connects as, if one was given.
pub fn identity() -> Option<String> {
    IDENTITY.get().cloned()
}

/// How long to keep retrying one envelope while the ledger is unreachable.
pub const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

/// The signer's key of an envelope, for its subject.
pub fn signer(raw: &[u8]) -> String {
    serde_json::from_slice::<Envelope>(raw)
        .ok()
        .and_then(|e| e.signatures.first().and_then(|s| s.keyid.parse::<ActorKey>().ok()))
        .map_or_else(|| "unattributed".to_owned(), |k| k.to_string())
}

/// Sends one envelope and waits for its receipt or rejection.
pub async fn submit(client: &async_nats::Client, raw: Bytes) -> anyhow::Result<Outcome> {
    submit_to(client, subjects::submit(&signer(&raw)), raw).await
}

/// [`submit`] on a subject the caller already knows (its own).
pub async fn submit_to(client: &async_nats::Client, subject: String, raw: Bytes) -> anyhow::Result<Outcome> {
    submit_patiently(client, subject, raw, Duration::from_secs(5)).await
}

/// [`submit_to`] waiting at most `attempt` for each answer before sending
/// the same bytes again.
pub async fn submit_patiently(client: &async_nats::Client, subject: String, raw: Bytes, attempt: Duration) -> anyhow::Result<Outcome> {
    let deadline = tokio::time::Instant::now() + SUBMIT_PATIENCE;
    let mut backoff = Duration::from_millis(20);
    loop {
        let req = async_nats::Request::new().payload(raw.clone()).timeout(Some(attempt));
        match client.send_request(subject.clone(), req).await {
            Ok(msg) => return serde_json::from_slice(&msg.payload).context("the ledger's answer is not an outcome"),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "no answer yet; retrying the same envelope");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => bail!("no answer from the ledger within {SUBMIT_PATIENCE:?}: {e}"),
        }
    }
}

/// Connects as this process's identity (`--nkey`), retrying while the
/// server comes up.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    custody_ledger::connect::connect_client(url, "custody-cli", identity().as_deref()).await
}
