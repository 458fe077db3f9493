//! Asking the ledger's witnesses to cosign its checkpoints (C2SP
//! tlog-witness `add-checkpoint`, over plain HTTP). Each witness gets the
//! checkpoint note and a consistency proof from the size it last cosigned;
//! a witness that answers 409 says where it is, and is asked once more
//! with a proof from there. A cosignature is kept only when it verifies
//! under the witness key the ledger was configured with.

use std::time::Duration;

use custody_proto::checkpoint::{Checkpoint, Cosignature};
use custody_proto::note::{self, AddCheckpoint, NoteKey};

use crate::notary::Notary;

/// How long one witness may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// One witness: where it listens and the key it cosigns with.
#[derive(Debug, Clone)]
pub struct WitnessPeer {
    /// Its `add-checkpoint` endpoint's base URL (`http://host:port`).
    pub url: String,
    /// Its cosignature key (type 0x04).
    pub key: NoteKey,
    /// The size it last cosigned, as far as this ledger knows.
    at: Option<u64>,
}

impl WitnessPeer {
    /// Parses `VKEY=URL` (a C2SP verifier key, then the base URL).
    pub fn parse(text: &str) -> Result<WitnessPeer, String> {
        let (vkey, url) = text.split_once('=').ok_or_else(|| format!("{text:?}: give a witness as VKEY=URL"))?;
        let key = NoteKey::parse(vkey, note::COSIGNATURE_V1).map_err(|e| e.to_string())?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{url:?} is not an http(s) URL"));
        }
        Ok(WitnessPeer { url: url.trim_end_matches('/').to_owned(), key, at: None })
    }
}

/// The ledger's witnesses.
pub struct Cosigners {
    peers: Vec<WitnessPeer>,
    http: reqwest::Client,
}

impl Cosigners {
    pub fn new(peers: Vec<WitnessPeer>) -> Cosigners {
        let http = reqwest::Client::builder().timeout(ASK_TIMEOUT).build().unwrap_or_default();
        Cosigners { peers, http }
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Sends `c` to every witness at once and adds the cosignatures that
    /// verify.
    pub async fn cosign(&mut self, notary: &Notary, c: &mut Checkpoint) {
        let Some(text) = c.note() else { return };
        let http = &self.http;
        let asked = self.peers.iter_mut().map(|p| ask(http, p, notary, c, &text));
        let got: Vec<Option<Cosignature>> = futures::future::join_all(asked).await;
        c.cosignatures.extend(got.into_iter().flatten());
    }
}

async fn ask(http: &reqwest::Client, peer: &mut WitnessPeer, notary: &Notary, c: &Checkpoint, text: &str) -> Option<Cosignature> {
    let signed = c.signed_text();
    for _ in 0..2 {
        let old = peer.at.unwrap_or(0);
        if old > c.tree_size {
            tracing::error!(witness = %peer.key.name, cosigned = old, size = c.tree_size, "the witness cosigned a larger tree of this log than the ledger has: entries were lost, or another history was shown");
            return None;
        }
        let proof = if old == 0 { Vec::new() } else { notary.consistency_proof(old, c.tree_size).ok()? };
        let body = AddCheckpoint { old, proof, note: text.to_owned() }.to_text();
        let answer = match http.post(format!("{}/add-checkpoint", peer.url)).body(body).send().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(witness = %peer.key.name, error = ?e, "witness unreachable");
                return None;
            }
        };
        let status = answer.status().as_u16();
        let reply = answer.text().await.unwrap_or_default();
        match status {
            200 => {
                let found =
                    reply.lines().filter_map(note::Line::parse).filter_map(|l| Cosignature::from_line(&l)).find(|s| s.verify(&peer.key, &signed) == Some(true));
                if found.is_some() {
                    peer.at = Some(c.tree_size);
                } else {
                    tracing::warn!(witness = %peer.key.name, "the witness answered without a cosignature that verifies under its key");
                }
                return found;
            }
            409 => match reply.trim().parse() {
                Ok(at) => peer.at = Some(at),
                Err(_) => return None,
            },
            _ => {
                tracing::warn!(witness = %peer.key.name, status, reply = %reply.trim(), size = c.tree_size, "the witness refused the checkpoint");
                return None;
            }
        }
    }
    None
}
