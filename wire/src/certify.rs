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
use custody_proto::{Checkpoint, Entry, Event, Opened};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::follow::{entry_of, Reader};
use crate::query::{request, CertificateQuery, ErrorAnswer, RequestError};
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

/// Makes the certificate for `query`.
pub async fn certify(client: &Client, query: &CertificateQuery) -> Result<OriginCertificate, CertifyError> {
    let answers: Answers = ask(client, subjects::QUERY_CERTIFICATE, json!(query)).await?;
    let history: Vec<u64> = answers.seqs.iter().flat_map(|(a, b)| *a..=*b).collect();
    let reader = Reader::ledger(client);
    let mut entries = read(&reader, &history).await?;
    // Who signed them: their registrations and revocations (what the
    // answers say of verifiers and countries rests on them).
    let signers: BTreeSet<String> =
        entries.iter().filter_map(|e| Opened::payload_of(&e.envelope).ok().and_then(|p| Event::decode(&p).ok())).map(|e| e.actor.to_string()).collect();
    let mut more = BTreeSet::new();
    for key in signers {
        match ask::<Value>(client, subjects::QUERY_ACTOR, json!({"key": key})).await {
            Ok(actor) => {
                // Its registration, and its revocation if any: a checker
                // asks whether it could still sign when it did.
                for field in ["registered", "revoked_at"] {
                    if let Some(seq) = actor.get(field).and_then(Value::as_u64).filter(|s| *s > 0 && !history.contains(s)) {
                        more.insert(seq);
                    }
                }
            }
            // The genesis authority is given to the ledger, not registered.
            Err(CertifyError::Answer(e)) if e.code == crate::query::AnswerCode::UnknownActor => {}
            Err(e) => return Err(e),
        }
    }
    entries.extend(read(&reader, &more.into_iter().collect::<Vec<_>>()).await?);
    entries.sort_by_key(|e| e.seq);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    let need = seqs.last().copied().unwrap_or(0);
    let ranges = custody_proto::certificate::ranges(&seqs);
    // The ledger signs what it has made durable; a projection can be a
    // moment ahead of that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let proof = loop {
        let p: ProofAnswer = ask(client, subjects::PROOF_SUBJECT, json!({"ranges": ranges})).await?;
        if p.tree_size >= need {
            break p;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CertifyError::Behind { have: p.tree_size, need });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
        entries,
    })
}
