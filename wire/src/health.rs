//! How a service says how it is: one [`Status`] per running instance,
//! kept up to date by the service itself through its [`Health`] handle,
//! and read two ways: over NATS (`custody.status.<kind>`, answered by
//! [`answer_status`]; what `custody status` asks) and over HTTP (`/healthz`,
//! `/readyz`, served by the command line's ops listener next to the
//! Prometheus metrics).

use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::subjects::STATUS_PREFIX;

/// A follower counts as ready once it has caught up with the committed
/// stream, and for as long as it stays within this many entries of its end.
pub const READY_LAG: u64 = 10_000;

/// One instance of a service, as it says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The kind: `ledger`, `projection`, `gateway`, `authz`, `edge`.
    pub service: String,
    /// This instance: `ledger`, `ledger 2`, `projection`, a host and folder.
    pub name: String,
    /// What it is doing: `writer`, `standby`, `following`, `serving`,
    /// `starting`, `forwarding`, `offline`.
    pub role: String,
    /// Able to serve: caught up (a follower), holding or able to take the
    /// writer lease (a ledger), connected (the gateway).
    pub ready: bool,
    /// Why not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The last seq in this instance's store (a ledger) or applied (a
    /// follower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// Entries on the committed stream not yet applied (a follower), or
    /// envelopes not yet forwarded (an edge's outbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Who holds the writer lease, as far as this instance knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The public key it signs with (a ledger replica: the checkpoint
    /// key, which every replica of one ledger shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The custody version it runs.
    pub version: String,
    /// A ledger replica: the submissions it refused since `refused_since`,
    /// by code (what the public statistics publish).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, Refused>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_since: Option<String>,
}

/// Refusals of one code: how many, and from how many different actors
/// (counted up to [`Refused::ACTORS`], as much as publishing needs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub refusals: u64,
    pub actors: u8,
}

impl Refused {
    /// Actors a published figure must come from (DOMAIN.md, "Public
    /// statistics"); counting stops there.
    pub const ACTORS: u8 = 3;
}

/// The handle a service keeps its [`Status`] up to date through; clones
/// share it. Apart from what the service says, an instance whose NATS
/// connection is down is not ready ([`answer_status`] watches it).
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<Status>>, Arc<Mutex<std::collections::BTreeMap<&'static str, String>>>);

impl Health {
    /// An instance of `service` named `name`, starting, not ready.
    pub fn new(service: &str, name: &str) -> Health {
        Health(
            Arc::new(Mutex::new(Status {
                service: service.to_owned(),
                name: name.to_owned(),
                role: "starting".into(),
                ready: false,
                why: Some("starting".into()),
                head: None,
                lag: None,
                leader: None,
                key: None,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                refused: Default::default(),
                refused_since: None,
            })),
            Arc::new(Mutex::new(Default::default())),
        )
    }

    /// The instance's name, which labels its metrics.
    pub fn name(&self) -> String {
        self.status().name
    }

    pub fn status(&self) -> Status {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(why) = self.1.lock().unwrap_or_else(PoisonError::into_inner).values().next() {
            s.ready = false;
            s.why = Some(why.clone());
        }
        s
    }

    /// Records whether the instance's NATS connection is up (`None`) or
    /// down, and why.
    pub fn set_link(&self, down: Option<String>) {
        self.set_fault("link", down);
    }

    /// Records a fault of `kind` that makes the instance not ready until
    /// cleared (`None`), whatever else it says (a file it cannot write, say).
    pub fn set_fault(&self, kind: &'static str, fault: Option<String>) {
        let mut faults = self.1.lock().unwrap_or_else(PoisonError::into_inner);
        match fault {
            Some(why) => faults.insert(kind, why),
            None => faults.remove(kind),
        };
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Ready (`why` is then cleared) or not, and why.
    pub fn set_ready(&self, ready: Result<(), String>) {
        self.update(|s| {
            s.ready = ready.is_ok();
            s.why = ready.err();
        });
    }

    /// A follower at `applied` of a stream ending at `end`: ready once it
    /// has reached the end, and while it stays within [`READY_LAG`]. One
    /// ahead of the stream (a restored or shorter stream than the one it
    /// followed) answers from a history the stream does not hold: never
    /// ready.
    pub fn followed(&self, applied: u64, end: u64) {
        self.update(|s| {
            if applied > end {
                s.head = Some(applied);
                s.lag = Some(0);
                s.ready = false;
                s.why = Some(format!(
                    "ahead of the committed stream: applied up to entry {applied}, the stream ends at {end} (restored or shortened?); rebuild this follower from the stream"
                ));
                return;
            }
            let lag = end.saturating_sub(applied);
            let caught_up_before = s.lag.is_some() && s.ready;
            s.head = Some(applied);
            s.lag = Some(lag);
            s.ready = lag == 0 || (caught_up_before && lag <= READY_LAG);
            s.why = (!s.ready).then(|| format!("catching up: {lag} entries behind the committed stream"));
        });
    }
}

/// How often [`watch_lag`] reads the committed stream's end.
pub const LAG_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// For a follower of the committed stream whose `health` head is the last
/// seq it applied: every [`LAG_EVERY`], reads the stream's end, updates
/// its lag and readiness ([`Health::followed`]) and tells `lag` the lag.
/// Runs until dropped.
pub async fn watch_lag(reader: crate::follow::Reader, health: Health, lag: impl Fn(u64)) {
    let mut tick = tokio::time::interval(LAG_EVERY);
    loop {
        tick.tick().await;
        match reader.last_seq().await {
            Ok(end) => {
                let applied = health.status().head.unwrap_or(0);
                lag(end.saturating_sub(applied));
                health.followed(applied, end);
            }
            Err(e) => health.set_ready(Err(format!("cannot read the committed stream: {e}"))),
        }
    }
}

/// Answers `custody.status.<kind>` with this instance's status until the
/// subscription ends.
/// While it runs, the instance is not ready whenever `client` is not
/// connected (checked every [`LINK_EVERY`]; a dead server is noticed
/// within two missed pings, see [`crate::connect`]).
pub async fn answer_status(client: async_nats::Client, health: Health) -> Result<(), async_nats::SubscribeError> {
    let kind = health.status().service;
    let watched = client.clone();
    let link = health.clone();
    let check_link = move || {
        let up = watched.connection_state() == async_nats::connection::State::Connected;
        link.set_link((!up).then(|| "not connected to NATS".to_owned()));
    };
    let check = check_link.clone();
    let watch = async move {
        let mut tick = tokio::time::interval(LINK_EVERY);
        loop {
            tick.tick().await;
            check();
        }
    };
    let answer = async {
        let mut requests = client.subscribe(format!("{STATUS_PREFIX}.{kind}")).await?;
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply else { continue };
            // As the link is now, not at the last tick: a status asked for
            // in the instant after the first connection says connected.
            check_link();
            let body = serde_json::to_vec(&health.status()).unwrap_or_default();
            let _ = client.publish(reply, body.into()).await;
        }
        Ok(())
    };
    tokio::select! {
        () = watch => Ok(()),
        done = answer => done,
    }
}

/// Every status of the instances of `kinds` that answers within `wait`
/// (`custody status`; a ledger taking over asks the other replicas how far
/// their stores reach).
pub async fn gather(client: &async_nats::Client, kinds: &[&str], wait: std::time::Duration) -> Result<Vec<Status>, GatherError> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| GatherError(e.to_string()))?;
    for kind in kinds {
        client.publish_with_reply(format!("{STATUS_PREFIX}.{kind}"), inbox.clone(), "".into()).await.map_err(|e| GatherError(e.to_string()))?;
    }
    client.flush().await.map_err(|e| GatherError(e.to_string()))?;
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await {
        // Only statuses answer here; anything else is not one of ours.
        if let Ok(s) = serde_json::from_slice::<Status>(&msg.payload) {
            statuses.push(s);
        }
    }
    Ok(statuses)
}

/// Statuses could not be asked for.
#[derive(Debug, thiserror::Error)]
#[error("cannot ask for statuses: {0}")]
pub struct GatherError(String);

/// How often [`answer_status`] looks at the NATS connection.
pub const LINK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_ready_once_caught_up_and_while_close() {
        let h = Health::new("projection", "projection");
        assert!(!h.status().ready);
        h.followed(10, 20_000);
        assert!(!h.status().ready, "behind from the start: catching up");
        h.followed(20_000, 20_000);
        assert!(h.status().ready);
        h.followed(20_000, 20_500);
        assert!(h.status().ready, "a little behind after catching up: still serving");
        h.followed(20_000, 40_001);
        let s = h.status();
        assert!(!s.ready && s.why.unwrap().contains("20001 entries"));
        // Ahead of the stream (restored shorter): never ready.
        h.followed(50_000, 40_001);
        let s = h.status();
        assert!(!s.ready && s.why.unwrap().contains("ahead of the committed stream"));
    }
}
