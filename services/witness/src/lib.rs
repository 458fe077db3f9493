//! A C2SP tlog-witness (c2sp.org/tlog-witness), the one `custody witness`
//! runs: any organisation (a Kimberley Process authority, a customs
//! service, a civil-society monitor) can operate one for a custody ledger,
//! or for any other log that signs C2SP checkpoints over an RFC 6962
//! SHA-256 tree.
//!
//! Invariant: for each log it knows, the witness cosigns a checkpoint
//! only after checking the log's signature and a consistency proof from
//! the last checkpoint it cosigned, and only once that checkpoint is its
//! new state on disk (fsynced). So it never cosigns two different roots
//! for one size, nor a smaller tree after a larger one, across restarts.
//! (Extension lines, such as custody's lot-map root and time, are the
//! log's own: auditors check the map, witnesses the tree.) A request that would fork is refused
//! (422) and kept, as the log signed it, under `evidence/`.
//!
//! [`decide`] is the whole decision, pure; [`Witness`] adds the disk and
//! the clock; [`serve`] the HTTP endpoint `POST /add-checkpoint`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use custody_proto::checkpoint::Cosignature;
use custody_proto::entry::Hash;
use custody_proto::merkle::{verify_consistency, TreeHash};
use custody_proto::note::{self, AddCheckpoint as Request, NoteKey};
use custody_wire::files::{self, Mode};
use serde::{Deserialize, Serialize};

/// The witness's signing key, in its folder.
pub const KEY_FILE: &str = "witness.nk";
/// What it last cosigned for each log.
pub const STATE_FILE: &str = "witness.json";
/// Refused requests that would have forked a log's history.
pub const EVIDENCE_DIR: &str = "evidence";
/// The content type of a 409's body (the size the witness is at).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
/// Largest request body read (a note and a consistency proof).
pub const MAX_REQUEST: usize = 64 * 1024;

/// What the witness last cosigned for one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    pub size: u64,
    /// The root, standard base64 as on the note.
    pub root: String,
    /// The whole checkpoint text it cosigned.
    pub text: String,
}

/// Every log's [`LogState`], by origin: the witness's durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub logs: BTreeMap<String, LogState>,
}

/// Why a checkpoint was not cosigned, as tlog-witness answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("this witness does not know the log {0:?}")]
    UnknownLog(String),
    #[error("the checkpoint is not signed by the log's key: {0}")]
    NotSigned(String),
    #[error("this witness last cosigned size {size} of this log; send a proof from there")]
    Conflict { size: u64 },
    #[error("the checkpoint does not extend what this witness cosigned: {0}")]
    Inconsistent(String),
}

impl Refusal {
    /// The HTTP status tlog-witness gives it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::NotSigned(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::Inconsistent(_) => 422,
        }
    }
}

/// A checkpoint the witness may cosign: its log, and the state it moves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub origin: String,
    pub next: LogState,
}

/// The decision: whether `req` may be cosigned, given the logs this
/// witness knows (`logs`, keyed by name = origin) and what it cosigned
/// before (`state`).
pub fn decide(logs: &[NoteKey], state: &State, req: &Request) -> Result<Accepted, Refusal> {
    let (text, lines) = note::split(&req.note).ok_or_else(|| Refusal::Malformed("the checkpoint is not a signed note".into()))?;
    let mut rows = text.split_terminator('\n');
    let origin = rows.next().unwrap_or_default().to_owned();
    let size = rows.next().and_then(|s| (s == "0" || !s.starts_with('0')).then(|| s.parse::<u64>().ok()).flatten());
    let root_text = rows.next().unwrap_or_default().to_owned();
    let root = base64::engine::general_purpose::STANDARD.decode(&root_text).ok().and_then(|r| <[u8; 32]>::try_from(r).ok()).map(Hash);
    let (Some(size), Some(root)) = (size, root) else { return Err(Refusal::Malformed("the note is not a checkpoint (origin, size, base64 root)".into())) };
    let keys: Vec<&NoteKey> = logs.iter().filter(|k| k.name == origin).collect();
    if keys.is_empty() {
        return Err(Refusal::UnknownLog(origin));
    }
    let signed = lines.iter().any(|l| keys.iter().any(|k| l.name == k.name && l.id == k.id() && k.verifies(text.as_bytes(), &l.blob)));
    if !signed {
        return Err(Refusal::NotSigned(format!("no valid signature by {}", keys[0].vkey())));
    }
    let last = state.logs.get(&origin);
    let at = last.map_or(0, |l| l.size);
    if req.old > size {
        return Err(Refusal::Malformed(format!("old size {} is larger than the checkpoint's {size}", req.old)));
    }
    if req.old != at {
        return Err(Refusal::Conflict { size: at });
    }
    let next = LogState { size, root: root_text, text: text.clone() };
    match last {
        None if req.proof.is_empty() => {}
        None => return Err(Refusal::Inconsistent("a first checkpoint comes with no proof".into())),
        Some(l) => {
            let old_root =
                base64::engine::general_purpose::STANDARD.decode(&l.root).ok().and_then(|r| <[u8; 32]>::try_from(r).ok()).map(Hash).unwrap_or_default();
            if l.size == size && l.root != next.root {
                return Err(Refusal::Inconsistent("another root for the same size".into()));
            }
            if l.size > 0 {
                verify_consistency(TreeHash::Sha256, l.size, size, &old_root, &root, &req.proof)
                    .map_err(|e| Refusal::Inconsistent(format!("no consistency from size {} to {size}: {e}", l.size)))?;
            } else if !req.proof.is_empty() {
                return Err(Refusal::Inconsistent("a checkpoint after an empty tree comes with no proof".into()));
            }
        }
    }
    Ok(Accepted { origin, next })
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error("the witness state {path} cannot be read: {why}")]
    State { path: PathBuf, why: String },
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("cannot listen on {listen}: {source}")]
    Listen { listen: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A witness with its folder: key, state, evidence.
pub struct Witness {
    dir: PathBuf,
    secret: nkeys::KeyPair,
    key: NoteKey,
    logs: Vec<NoteKey>,
    state: Mutex<State>,
}

impl Witness {
    /// Opens (or creates) the witness in `dir`, named `name`, for `logs`.
    pub fn open(dir: &Path, name: &str, logs: Vec<NoteKey>) -> Result<Witness, WitnessError> {
        let secret = files::load_or_create_key(&dir.join(KEY_FILE), nkeys::KeyPairType::Server)?;
        let key = NoteKey::from_nkey(name, note::COSIGNATURE_V1, &secret.public_key()).map_err(|e| WitnessError::Sign(e.to_string()))?;
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WitnessError::State { path: path.clone(), why: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(WitnessError::State { path, why: e.to_string() }),
        };
        Ok(Witness { dir: dir.to_path_buf(), secret, key, logs, state: Mutex::new(state) })
    }

    /// The witness's verifier key (`name+id+base64(0x04 ‖ key)`).
    pub fn vkey(&self) -> String {
        self.key.vkey()
    }

    /// What it last cosigned, per log.
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Handles one `add-checkpoint` body at `now` (seconds since the
    /// epoch): the cosignature line, once the new state is on disk.
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Result<String, Refusal> {
        let req = Request::parse(body).map_err(Refusal::Malformed)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let accepted = match decide(&self.logs, &state, &req) {
            Ok(a) => a,
            Err(r) => {
                if matches!(r, Refusal::Inconsistent(_)) {
                    self.keep_evidence(body, &r, now);
                }
                return Err(r);
            }
        };
        if state.logs.get(&accepted.origin) != Some(&accepted.next) {
            let mut next = state.clone();
            next.logs.insert(accepted.origin.clone(), accepted.next.clone());
            let bytes = serde_json::to_vec_pretty(&next).map_err(|e| Refusal::Malformed(e.to_string()))?;
            if let Err(e) = files::write_whole(&self.dir.join(STATE_FILE), &bytes, Mode::Shared) {
                // Not cosigned: what it cosigns must outlive a crash first.
                tracing::error!(error = %e, "cannot store the witness state");
                return Err(Refusal::Malformed(format!("the witness cannot store its state: {e}")));
            }
            *state = next;
        }
        let c = Cosignature::sign(&self.secret, &self.key, &accepted.next.text, now).map_err(|e| Refusal::Malformed(e.to_string()))?;
        tracing::info!(origin = %accepted.origin, size = accepted.next.size, "cosigned");
        Ok(c.line())
    }

    fn keep_evidence(&self, body: &str, why: &Refusal, now: u64) {
        let n = std::fs::read_dir(self.dir.join(EVIDENCE_DIR)).map(|d| d.count()).unwrap_or(0);
        let path = self.dir.join(EVIDENCE_DIR).join(format!("{now}-{n}.txt"));
        let text = format!("refused: {why}\n\n{body}");
        match files::write_whole(&path, text.as_bytes(), Mode::Shared) {
            Ok(()) => tracing::warn!(path = %path.display(), reason = %why, "refused a checkpoint that forks its log; evidence kept"),
            Err(e) => tracing::error!(error = %e, "cannot keep evidence"),
        }
    }
}

/// Serves `POST /add-checkpoint` on `listen` until `shutdown`.
pub async fn serve(
    witness: std::sync::Arc<Witness>,
    listen: std::net::SocketAddr,
    on_bound: impl FnOnce(std::net::SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), WitnessError> {
    use axum::extract::{DefaultBodyLimit, State as With};
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    async fn add(With(w): With<std::sync::Arc<Witness>>, body: axum::body::Bytes) -> axum::response::Response {
        let Ok(body) = std::str::from_utf8(&body) else { return (StatusCode::BAD_REQUEST, "malformed request: not UTF-8\n").into_response() };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match w.add_checkpoint(body, now) {
            Ok(line) => (StatusCode::OK, line).into_response(),
            Err(Refusal::Conflict { size }) => (StatusCode::CONFLICT, [(header::CONTENT_TYPE, SIZE_CONTENT_TYPE)], format!("{size}\n")).into_response(),
            Err(r) => (StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST), format!("{r}\n")).into_response(),
        }
    }
    let app = axum::Router::new().route("/add-checkpoint", axum::routing::post(add)).layer(DefaultBodyLimit::max(MAX_REQUEST)).with_state(witness);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| WitnessError::Listen { listen, source })?;
    on_bound(listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::checkpoint::Checkpoint;
    use custody_proto::merkle::Tree;

    fn tree(n: u64, salt: u8) -> Tree {
        let mut t = Tree::new();
        for i in 0..n {
            let mut b = [salt; 32];
            b[..8].copy_from_slice(&i.to_be_bytes());
            t.push(&Hash(b));
        }
        t
    }

    fn note(log: &nkeys::KeyPair, t: &Tree, size: u64) -> String {
        let c = Checkpoint::sign(log, "log.example", size, &t.root_at(size).unwrap(), Some(&Hash([1; 32])), "2026-12-02T00:00:00Z".parse().unwrap()).unwrap();
        c.note().unwrap()
    }

    #[test]
    fn cosigns_what_extends_and_refuses_a_fork_a_stale_size_and_strangers() {
        let log = nkeys::KeyPair::new_server();
        let logs = vec![NoteKey::from_nkey("log.example", note::ED25519, &log.public_key()).unwrap()];
        let (t, fork) = (tree(9, 0), tree(9, 1));
        let mut state = State::default();
        let first = Request { old: 0, proof: vec![], note: note(&log, &t, 4) };
        let a = decide(&logs, &state, &first).unwrap();
        state.logs.insert(a.origin, a.next);
        // Again, the same checkpoint: cosigned again (idempotent).
        assert!(decide(&logs, &state, &Request { old: 4, ..first.clone() }).is_ok());
        // A stale old size: 409 with where the witness is.
        let grown = Request { old: 0, proof: t.consistency(4, 9).unwrap(), note: note(&log, &t, 9) };
        assert_eq!(decide(&logs, &state, &grown), Err(Refusal::Conflict { size: 4 }));
        let grown = Request { old: 4, ..grown };
        // A fork at size 9, with a proof from its own history: 422.
        let forked = Request { old: 4, proof: fork.consistency(4, 9).unwrap(), note: note(&log, &fork, 9) };
        assert!(matches!(decide(&logs, &state, &forked), Err(Refusal::Inconsistent(_))));
        let a = decide(&logs, &state, &grown).unwrap();
        state.logs.insert(a.origin, a.next);
        // Another root for the size it cosigned, a smaller tree, someone else's log, a bad signature.
        assert!(matches!(decide(&logs, &state, &Request { old: 9, proof: vec![], note: note(&log, &fork, 9) }), Err(Refusal::Inconsistent(_))));
        assert!(matches!(decide(&logs, &state, &Request { old: 9, proof: vec![], note: note(&log, &t, 4) }), Err(Refusal::Malformed(_))));
        let stranger = nkeys::KeyPair::new_server();
        assert!(matches!(decide(&logs, &state, &Request { old: 9, proof: vec![], note: note(&stranger, &t, 9) }), Err(Refusal::NotSigned(_))));
        let other = vec![NoteKey::from_nkey("other.example", note::ED25519, &log.public_key()).unwrap()];
        assert!(matches!(decide(&other, &state, &grown), Err(Refusal::UnknownLog(_))));
        assert_eq!(Request::parse(&grown.to_text()).unwrap(), grown);
    }

    #[test]
    fn a_witness_reopened_from_its_folder_keeps_refusing_the_fork() {
        let dir = tempfile::tempdir().unwrap();
        let log = nkeys::KeyPair::new_server();
        let logs = vec![NoteKey::from_nkey("log.example", note::ED25519, &log.public_key()).unwrap()];
        let (t, fork) = (tree(6, 0), tree(6, 1));
        let w = Witness::open(dir.path(), "w.example", logs.clone()).unwrap();
        let line = w.add_checkpoint(&Request { old: 0, proof: vec![], note: note(&log, &t, 6) }.to_text(), 1_800_000_000).unwrap();
        assert!(line.starts_with("\u{2014} w.example "), "{line}");
        let vkey = w.vkey();
        drop(w);
        let w = Witness::open(dir.path(), "w.example", logs).unwrap();
        assert_eq!(w.vkey(), vkey, "the same key after a restart");
        let r = w.add_checkpoint(&Request { old: 6, proof: vec![], note: note(&log, &fork, 6) }.to_text(), 1_800_000_001);
        assert!(matches!(r, Err(Refusal::Inconsistent(_))));
        assert_eq!(std::fs::read_dir(dir.path().join(EVIDENCE_DIR)).unwrap().count(), 1, "the evidence is kept");
    }
}
