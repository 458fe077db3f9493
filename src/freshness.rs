//! How current a certificate's evidence is: how old its checkpoint is
//! (`--max-age`), and, asked online (`--online URL`), whether anything
//! about its lot, its ancestors or its signers happened since. The online
//! answer is a newer signed checkpoint, a consistency proof from the
//! certificate's to it, and lot-map proofs of the same subjects, all
//! checked against the ledger key the verifier trusts: the gateway is not
//! trusted, it can only withhold, and a withheld change shows as an old
//! checkpoint, which `--max-age` refuses.

use std::time::Duration;

use custody_proto::certificate::OriginCertificate;
use custody_proto::lotmap::{MapProof, Subject};
use custody_proto::{Checkpoint, Hash};
use custody_wire::certify::Change;
use serde::Serialize;
use serde_json::{json, Value};

/// What a certificate's holder asks of its freshness.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Policy {
    /// Ask this gateway (http://host:port) whether anything about the lot,
    /// its ancestors or its signers happened since the certificate's
    /// checkpoint; everything it answers is checked against --key.
    #[arg(long, value_name = "URL")]
    pub online: Option<String>,
    /// Refuse evidence older than this (the checkpoint's time, or with
    /// --online the newest checkpoint's): 90s, 30m, 12h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub max_age: Option<Duration>,
    /// A witness whose cosignature counts: NAME=KEY (its nkey) or its C2SP
    /// verifier key (`custody witness key`). Repeatable.
    #[arg(long = "witness", value_name = "NAME=KEY")]
    pub witnesses: Vec<String>,
    /// How many of the --witness keys must have cosigned the checkpoint the
    /// evidence stands on; with witnesses, --max-age counts from the newest
    /// cosignature.
    #[arg(long, default_value_t = 0)]
    pub min_witnesses: usize,
}

/// `90s`, `30m`, `12h`, `7d`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = n.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 12h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: a duration ends in s, m, h or d")),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

/// What the policy found.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// The checkpoint the evidence stands on (the newest one, online).
    pub as_of: CheckpointTime,
    /// How old that is, in seconds.
    pub age_seconds: i64,
    /// Which of the verifier's witnesses cosigned that checkpoint, and when.
    pub cosigned_by: Vec<Cosigned>,
    /// Online: the subjects with entries since the certificate's checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<Change>>,
    /// What fails the policy, in words; empty when it holds.
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cosigned {
    pub witness: String,
    pub time: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointTime {
    pub tree_size: u64,
    pub time: String,
}

impl Freshness {
    pub fn holds(&self) -> bool {
        self.refused.is_empty()
    }

    /// The first lines a person reads: how old the evidence is, who
    /// vouched for it, and what changed.
    pub fn describe(&self) -> Vec<String> {
        let age = humanize(self.age_seconds);
        let witnesses: Vec<String> = self.cosigned_by.iter().map(|c| format!("{} at {}", c.witness, c.time)).collect();
        let mut lines = vec![format!(
            "evidence as of the ledger's checkpoint of {} entries, signed {} ({age} old); cosigned by {}",
            self.as_of.tree_size,
            self.as_of.time,
            if witnesses.is_empty() { "no witness you named".to_owned() } else { witnesses.join(", ") }
        )];
        match &self.changed {
            Some(c) if c.is_empty() => lines.push("online: nothing about the lot, its ancestors or its signers has happened since the certificate".into()),
            Some(c) => {
                for ch in c {
                    let kind = ch.latest_kind.as_deref().map(|k| format!(", {k}")).unwrap_or_default();
                    lines.push(format!(
                        "CHANGED since the certificate: {}: {} new entr{} (the latest at entry {}{kind})",
                        ch.subject,
                        ch.new_entries,
                        if ch.new_entries == 1 { "y" } else { "ies" },
                        ch.latest_seq
                    ));
                }
            }
            None => {}
        }
        lines.extend(self.refused.iter().map(|r| format!("refused: {r}")));
        lines
    }
}

fn humanize(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} days", s / 86_400),
    }
}

/// Applies `policy` to `cert`, trusting only `key`.
pub async fn check(cert: &OriginCertificate, key: &str, policy: &Policy) -> anyhow::Result<Freshness> {
    let mut refused = Vec::new();
    let (as_of, changed) = match &policy.online {
        None => (cert.checkpoint.clone(), None),
        Some(url) => match online(url, cert, key).await {
            Ok((c, changed)) => (c, Some(changed)),
            Err(e) => {
                refused.push(format!("the online check failed: {e:#}"));
                (cert.checkpoint.clone(), None)
            }
        },
    };
    let keys = policy
        .witnesses
        .iter()
        .map(|w| custody_proto::note::NoteKey::parse(w, custody_proto::note::COSIGNATURE_V1))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--witness: {e}"))?;
    anyhow::ensure!(
        policy.min_witnesses <= keys.len(),
        "--min-witnesses {} asks for more witnesses than the {} given with --witness",
        policy.min_witnesses,
        keys.len()
    );
    let cosigned = match as_of.cosigned_by(&keys) {
        Ok(c) => c,
        Err(e) => {
            refused.push(format!("{e}: the checkpoint was altered"));
            Vec::new()
        }
    };
    if cosigned.len() < policy.min_witnesses {
        refused.push(format!(
            "the checkpoint is cosigned by {} of the witnesses you named, fewer than the {} required: nothing shows that others see the same ledger",
            cosigned.len(),
            policy.min_witnesses
        ));
    }
    // The newest cosignature says when the ledger last showed this history to a witness.
    let cosigned: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        cosigned.into_iter().filter_map(|(witness, t)| Some((witness, chrono::DateTime::from_timestamp(i64::try_from(t).ok()?, 0)?))).collect();
    let at = cosigned.iter().map(|(_, t)| *t).max().unwrap_or_else(|| as_of.time.as_datetime());
    let age_seconds = (chrono::Utc::now() - at).num_seconds();
    let cosigned_by = cosigned.into_iter().map(|(witness, t)| Cosigned { witness, time: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) }).collect();
    if let Some(max) = policy.max_age {
        if age_seconds > max.as_secs() as i64 {
            refused.push(format!("the evidence is {} old, more than the {} allowed", humanize(age_seconds), humanize(max.as_secs() as i64)));
        }
    }
    if let Some(c) = changed.as_ref().filter(|c| !c.is_empty()) {
        refused.push(format!("{} of its subjects changed since the certificate was made: ask for a new one", c.len()));
    }
    let as_of = CheckpointTime { tree_size: as_of.tree_size, time: as_of.time.to_rfc3339() };
    Ok(Freshness { as_of, age_seconds, cosigned_by, changed, refused })
}

/// Most subjects one map request names (the gateway's limit).
const PER_REQUEST: usize = 2_000;

async fn online(url: &str, cert: &OriginCertificate, key: &str) -> anyhow::Result<(Checkpoint, Vec<Change>)> {
    let url = url.trim_end_matches('/');
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("{url}{path}")).send().await?;
            let status = r.status();
            let v: Value = r.json().await?;
            anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
            anyhow::Ok(v)
        }
    };
    let subjects: Vec<Subject> = cert.map.iter().flat_map(|p| p.subjects.iter().cloned()).collect();
    anyhow::ensure!(!subjects.is_empty(), "the certificate proves no subject's history: nothing to compare");
    // The heads now, a chunk at a time, against one checkpoint.
    let mut newest: Option<Checkpoint> = None;
    let mut now = Vec::new();
    for chunk in subjects.chunks(PER_REQUEST) {
        let mut body = custody_wire::certify::map_request(chunk);
        if let Some(c) = &newest {
            body["at"] = json!(c.tree_size);
        }
        let r = http.post(format!("{url}/v1/ledger/map")).json(&body).send().await?;
        let status = r.status();
        let v: Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "/v1/ledger/map: {status} {v}");
        if newest.is_none() {
            newest = Some(serde_json::from_value(v["checkpoint"].clone())?);
        }
        now.push(serde_json::from_value::<MapProof>(v["map"].clone())?);
    }
    let newest = newest.ok_or_else(|| anyhow::anyhow!("no checkpoint"))?;
    let (from, to) = (cert.checkpoint.tree_size, newest.tree_size);
    let consistency: Vec<Hash> = if from >= to {
        Vec::new()
    } else {
        let v = get(format!("/v1/ledger/consistency?from={from}&to={to}")).await?;
        v["proof"].as_array().into_iter().flatten().filter_map(|h| h.as_str().and_then(Hash::from_hex)).collect()
    };
    let short = custody_proto::certificate::changes_since(cert, key, &newest, &consistency, &now).map_err(|e| anyhow::anyhow!(e))?;
    let mut changed = Vec::new();
    for s in short {
        let latest_kind = match s.held {
            Some(h) => get(format!("/v1/ledger/entries/{}", h.last)).await.ok().and_then(|e| e["event"]["kind"].as_str().map(str::to_owned)),
            None => None,
        };
        changed.push(Change::of(&s, latest_kind));
    }
    Ok((newest, changed))
}
