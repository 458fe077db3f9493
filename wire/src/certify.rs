//! Making an origin certificate ([`custody_proto::certificate`]): the one
//! assembler, used by `custody certify` and the gateway. It asks the
//! projection for the answers and the seqs they rest on (one reading of its
//! state), reads those entries off the committed stream, adds the
//! registrations of everyone who signed them, and asks the ledger for one
//! proof of them all against its current signed checkpoint.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::Client;
use custody_proto::certificate::{CertifiedEntry, Claims, OriginCertificate, Proof, RulesText, FORMAT};
use custody_proto::lotmap::{lineage, shortfalls, MapProof, Recomputed, Subject};
use custody_proto::{Checkpoint, Entry, Event, Opened};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::follow::{entry_of, Reader};
use crate::query::{request, AnswerCode, CertificateQuery, ErrorAnswer, RequestError};
use crate::subjects;

#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{}: {}", .0.code_str(), .0.message)]
    Answer(ErrorAnswer),
    #[error("cannot read the committed stream: {0}")]
    Read(#[from] crate::follow::ReadError),
    #[error("entry {seq} cannot be certified: {why}")]
    Entry { seq: u64, why: String },
    #[error("an answer is not of the expected shape: {0}")]
    Shape(String),
    #[error("the ledger's checkpoint covers {have} entries and the history needs {need}; it did not catch up in time")]
    Behind { have: u64, need: u64 },
    #[error("the lot's history kept changing while the certificate was made; try again in a moment")]
    Changing,
}

/// How long one request may take (a proof of many entries takes longest).
const WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Answers {
    lot: String,
    date: String,
    origin: Value,
    admissibility: Vec<Value>,
    rules: Vec<RulesText>,
    seqs: Vec<(u64, u64)>,
}

#[derive(Deserialize)]
struct ProofAnswer {
    tree_size: u64,
    proof: Vec<String>,
    checkpoint: Checkpoint,
    /// One proof per request: the first comes with the checkpoint.
    #[serde(deserialize_with = "one_proof")]
    map: Vec<MapProof>,
}

fn one_proof<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<MapProof>, D::Error> {
    MapProof::deserialize(d).map(|p| vec![p])
}

/// The lot-map proof of more subjects against a checkpoint already given.
#[derive(Deserialize)]
struct MapAnswer {
    map: MapProof,
}

async fn ask<T: serde::de::DeserializeOwned>(client: &Client, subject: &str, body: Value) -> Result<T, CertifyError> {
    let answer = request(client, subject, &body, WAIT).await?;
    if let Some(e) = ErrorAnswer::of(&answer) {
        return Err(CertifyError::Answer(e));
    }
    serde_json::from_value(answer).map_err(|e| CertifyError::Shape(e.to_string()))
}

/// Reads the entries at `seqs` (ascending), in ranges.
async fn read(reader: &Reader, seqs: &[u64]) -> Result<Vec<Entry>, CertifyError> {
    let mut out = Vec::with_capacity(seqs.len());
    for (first, last) in custody_proto::certificate::ranges(seqs) {
        let mut msgs = std::pin::pin!(reader.range(first, last));
        while let Some(msg) = msgs.next().await {
            let msg = msg?;
            out.push(entry_of(&msg).map_err(|why| CertifyError::Entry { seq: msg.seq, why })?);
        }
    }
    Ok(out)
}

/// Lots and actors first asked for per lot-map request (a subject's leaf
/// and the hashes of the subtrees beside its path: 300 to 400 bytes when
/// they are scattered over a large map); halved while an answer would not
/// fit in one NATS message.
const SUBJECTS_PER_REQUEST: usize = 2_000;

/// Makes the certificate for `query`: its answers from one reading of a
/// projection, the entries they rest on, and proofs against one signed
/// checkpoint that those entries are in the ledger and are the whole
/// history of the lot, its ancestors and its signers. When something
/// acted on them between the projection's reading and the checkpoint, it
/// asks again (the projection has moved on by then).
pub async fn certify(client: &Client, query: &CertificateQuery) -> Result<OriginCertificate, CertifyError> {
    let reader = Reader::ledger(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answers: Answers = ask(client, subjects::QUERY_CERTIFICATE, json!(query)).await?;
        let history: Vec<u64> = answers.seqs.iter().flat_map(|(a, b)| *a..=*b).collect();
        let mut entries = read(&reader, &history).await?;
        let signers = add_signers(client, &reader, &mut entries).await?;
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        let need = seqs.last().copied().unwrap_or(0);
        // Each entry decoded once: for the lineage, and to recompute heads.
        let events: Vec<(&Entry, Event)> = entries.iter().filter_map(|e| Some((e, Event::decode(&Opened::payload_of(&e.envelope).ok()?).ok()?))).collect();
        let lots = lineage(&answers.lot, events.iter().map(|(_, ev)| ev));
        let subjects: Vec<Subject> = lots.into_iter().map(Subject::Lot).chain(signers.into_iter().map(Subject::Actor)).collect();
        let mut per = SUBJECTS_PER_REQUEST.min(subjects.len()).max(1);
        // The ledger signs what it has made durable; a projection can be a
        // moment ahead of that.
        let mut proof = loop {
            let mut first = map_request(&subjects[..per.min(subjects.len())]);
            first["ranges"] = json!(custody_proto::certificate::ranges(&seqs));
            // With witnesses, the newest checkpoint they cosigned.
            first["witnessed"] = json!(true);
            match ask::<ProofAnswer>(client, subjects::PROOF_SUBJECT, first).await {
                Ok(p) if p.tree_size >= need => break p,
                Err(CertifyError::Answer(ErrorAnswer { code: AnswerCode::AnswerTooLarge, .. })) if per > 1 => per /= 2,
                Ok(_) | Err(CertifyError::Answer(ErrorAnswer { code: AnswerCode::NotInTree, .. })) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(p) => return Err(CertifyError::Behind { have: p.tree_size, need }),
                Err(e) => return Err(e),
            }
        };
        // The rest of the subjects, against the same checkpoint.
        let mut done = per.min(subjects.len());
        while done < subjects.len() {
            let chunk = &subjects[done..(done + per).min(subjects.len())];
            let mut more = map_request(chunk);
            more["at"] = json!(proof.tree_size);
            match ask::<MapAnswer>(client, subjects::PROOF_SUBJECT, more).await {
                Ok(answer) => {
                    proof.map.push(answer.map);
                    done += chunk.len();
                }
                Err(CertifyError::Answer(ErrorAnswer { code: AnswerCode::AnswerTooLarge, .. })) if per > 1 => per /= 2,
                Err(e) => return Err(e),
            }
        }
        if whole(&events, &proof)? {
            return assemble(answers, proof, &entries);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CertifyError::Changing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Adds the registrations and revocations of everyone who signed the
/// entries (and of whoever signed those), and gives the signers' keys.
async fn add_signers(client: &Client, reader: &Reader, entries: &mut Vec<Entry>) -> Result<BTreeSet<String>, CertifyError> {
    let mut asked = BTreeSet::new();
    loop {
        let signers: BTreeSet<String> = entries
            .iter()
            .filter_map(|e| Opened::payload_of(&e.envelope).ok().and_then(|p| Event::decode(&p).ok()))
            .map(|e| e.actor.to_string())
            .filter(|k| !asked.contains(k))
            .collect();
        if signers.is_empty() {
            return Ok(asked);
        }
        let have: BTreeSet<u64> = entries.iter().map(|e| e.seq).collect();
        let mut more = BTreeSet::new();
        for key in signers {
            match ask::<Value>(client, subjects::QUERY_ACTOR, json!({"key": key})).await {
                // Its registration, and its revocation if any: a checker
                // asks whether it could still sign when it did.
                Ok(actor) => more
                    .extend(["registered", "revoked_at"].iter().filter_map(|f| actor.get(*f).and_then(Value::as_u64)).filter(|s| *s > 0 && !have.contains(s))),
                // The genesis authority is given to the ledger, not registered.
                Err(CertifyError::Answer(e)) if e.code == AnswerCode::UnknownActor => {}
                Err(e) => return Err(e),
            }
            asked.insert(key);
        }
        entries.extend(read(reader, &more.into_iter().collect::<Vec<_>>()).await?);
        entries.sort_by_key(|e| e.seq);
    }
}

/// Whether `entries` hold the whole history of every subject the map
/// proof proves, up to its checkpoint: the heads they give are the ones
/// its lot map signs.
fn whole(events: &[(&Entry, Event)], proof: &ProofAnswer) -> Result<bool, CertifyError> {
    let mut carried = Recomputed::default();
    for (e, event) in events {
        carried.apply(e.seq, &e.hash, event);
    }
    let root = proof.checkpoint.map_root_hash().ok().flatten().ok_or_else(|| CertifyError::Shape("the checkpoint signs no lot map".into()))?;
    for p in &proof.map {
        if !shortfalls(p, &root, &carried.map).map_err(|e| CertifyError::Shape(format!("the ledger's lot-map proof: {e}")))?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn assemble(answers: Answers, proof: ProofAnswer, entries: &[Entry]) -> Result<OriginCertificate, CertifyError> {
    let entries =
        entries.iter().map(|e| CertifiedEntry::of(e).map_err(|why| CertifyError::Entry { seq: e.seq, why: why.to_string() })).collect::<Result<Vec<_>, _>>()?;
    Ok(OriginCertificate {
        format: FORMAT.to_owned(),
        lot: answers.lot,
        date: answers.date,
        claims: Claims { origin: answers.origin, admissibility: answers.admissibility },
        rules: answers.rules,
        checkpoint: proof.checkpoint,
        proof: Proof { tree_size: proof.tree_size, hashes: proof.proof },
        map: proof.map,
        entries,
    })
}

/// The body of a lot-map proof request for `subjects`: `{"lots", "actors"}`.
pub fn map_request(subjects: &[Subject]) -> Value {
    let names = |lot: bool| -> Vec<&str> {
        subjects
            .iter()
            .filter_map(|s| match s {
                Subject::Lot(l) if lot => Some(l.as_str()),
                Subject::Actor(a) if !lot => Some(a.as_str()),
                _ => None,
            })
            .collect()
    };
    json!({"lots": names(true), "actors": names(false)})
}

/// Something that happened to a certificate's subject after its
/// checkpoint, in words (`verify-certificate --online` and the page).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// `lot L1` or `actor U...`.
    pub subject: String,
    /// Entries about it since the certificate's checkpoint.
    pub new_entries: u64,
    /// The latest of them, and its kind (a flag, a verification, a revocation...).
    pub latest_seq: u64,
    pub latest_kind: Option<String>,
}

impl Change {
    /// From what the map held then and holds now
    /// ([`custody_proto::certificate::changes_since`]).
    pub fn of(s: &custody_proto::lotmap::Shortfall, latest_kind: Option<String>) -> Change {
        let subject = s.subject.to_string();
        let (now, then) = (s.held.map_or(0, |h| h.count), s.carried.map_or(0, |h| h.count));
        Change { subject, new_entries: now.saturating_sub(then), latest_seq: s.held.map_or(0, |h| h.last), latest_kind }
    }
}
