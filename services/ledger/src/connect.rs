//! How every custody process connects to NATS: as an nkey user when it has
//! a key (the server checks the signature of its nonce and applies that
//! user's permissions), with replies on an inbox prefix of its own,
//! `_INBOX_<public key>`, so that no other user may subscribe to them.

use anyhow::Context as _;

/// The inbox prefix of a user: the only `_INBOX` subjects it may read.
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX_{public_key}")
}

/// Connects as `name`, authenticated by the nkey `seed` when given,
/// retrying while the server comes up.
pub async fn connect(url: &str, name: &str, seed: Option<&str>) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new().name(name).retry_on_initial_connect();
    if let Some(seed) = seed {
        let key = nkeys::KeyPair::from_seed(seed.trim()).context("the NATS identity is not an nkey seed")?;
        options = options.custom_inbox_prefix(inbox_prefix(&key.public_key())).nkey(seed.trim().to_owned());
    }
    options.connect(url).await.with_context(|| format!("cannot connect to NATS at {url}"))
}
