//! How every custody process connects to NATS: as an nkey user when it has
//! a key (the server checks the signature of its nonce and applies that
//! user's permissions), with replies on an inbox prefix of its own,
//! `_INBOX_<public key>`, so that no other user may subscribe to them.

use std::time::Duration;

use async_nats::ConnectErrorKind;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the NATS identity is not an nkey seed: {0}")]
    Identity(String),
    #[error("NATS at {url} refused the connection ({why}): {hint}")]
    Refused { url: String, why: String, hint: &'static str },
    #[error("cannot connect to NATS at {url}: {why}")]
    Unreachable { url: String, why: String },
}

/// How often a connection pings its server.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// The inbox prefix of a user: the only `_INBOX` subjects it may read.
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX_{public_key}")
}

fn options(name: &str, seed: Option<&str>) -> Result<async_nats::ConnectOptions, ConnectError> {
    options_replying_as(name, seed, None)
}

/// Options for a user with the inbox prefix of `replies_for` (its own key
/// when `None`).
fn options_replying_as(name: &str, seed: Option<&str>, replies_for: Option<&str>) -> Result<async_nats::ConnectOptions, ConnectError> {
    // A server that stops answering is noticed after two missed pings
    // (the default, a minute, kept `/readyz` green that long).
    let mut options = async_nats::ConnectOptions::new().name(name).ping_interval(PING_EVERY);
    if let Some(seed) = seed {
        let key = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| ConnectError::Identity(e.to_string()))?;
        let owner = replies_for.map_or_else(|| key.public_key(), str::to_owned);
        options = options.custom_inbox_prefix(inbox_prefix(&owner)).nkey(seed.trim().to_owned());
    }
    Ok(options)
}

/// The servers a URL names: one, or several separated by commas (a
/// cluster; the client fails over between them).
fn servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// Connects a service as `name`, authenticated by the nkey `seed` when
/// given; it keeps retrying in the background while the server comes up.
pub async fn connect(url: &str, name: &str, seed: Option<&str>) -> Result<async_nats::Client, ConnectError> {
    options(name, seed)?
        .retry_on_initial_connect()
        .connect(servers(url))
        .await
        .map_err(|e| ConnectError::Unreachable { url: url.to_owned(), why: e.to_string() })
}

/// [`connect`], with replies on the inbox prefix of another key: an edge's
/// uplink, whose requests reach the hub over a leaf connection made with
/// that actor's key, where only the actor's own inbox may be delivered.
pub async fn connect_replying_as(url: &str, name: &str, seed: &str, replies_for: &str) -> Result<async_nats::Client, ConnectError> {
    options_replying_as(name, Some(seed), Some(replies_for))?
        .retry_on_initial_connect()
        .connect(servers(url))
        .await
        .map_err(|e| ConnectError::Unreachable { url: url.to_owned(), why: e.to_string() })
}

/// Connects a command-line client: retries for a few seconds while the
/// server is unreachable, but gives up at once, and says why, when the
/// server refuses the identity.
pub async fn connect_client(url: &str, name: &str, seed: Option<&str>) -> Result<async_nats::Client, ConnectError> {
    let mut last = None;
    for _ in 0..40 {
        match options(name, seed)?.connect(servers(url)).await {
            Ok(c) => return Ok(c),
            Err(e) if matches!(e.kind(), ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication) => {
                let hint = if seed.is_some() {
                    "this --nkey is not a registered (or not a live) actor"
                } else {
                    "it checks identities: give --nkey (or CUSTODY_NKEY)"
                };
                return Err(ConnectError::Refused { url: url.to_owned(), why: e.to_string(), hint });
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(ConnectError::Unreachable { url: url.to_owned(), why: last.map_or_else(|| "no answer".to_owned(), |e| e.to_string()) })
}
