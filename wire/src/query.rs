//! Queries over NATS (request-reply, JSON): what a regulator, the gateway
//! or the command line asks the projection and the ledger, and the codes
//! of the error answers `{"code", "message"}`. The gateway maps each code
//! to an HTTP status in one place.

use serde::{Deserialize, Serialize};

/// The stable code of an error answer (from a projection, the ledger's
/// proof service, or the gateway itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerCode {
    /// The request is not JSON of the expected shape.
    BadRequest,
    /// A ledger request (proof, consistency) names impossible sizes.
    InvalidRequest,
    UnknownLot,
    UnknownActor,
    /// A request signer the authority revoked.
    ActorRevoked,
    InvalidDate,
    UnknownRules,
    InvalidRules,
    RulesTooLarge,
    /// The answer would exceed what one message may carry.
    AnswerTooLarge,
    /// The entry is not in the tree a proof was asked against.
    NotInTree,
    TreeTooSmall,
    /// No such ledger entry.
    UnknownEntry,
    /// No such HTTP path.
    NotFound,
    InvalidPath,
    InvalidSeq,
    InvalidParameter,
    MissingParameter,
    /// A signed HTTP request whose signature or time does not verify.
    BadCredentials,
    /// A caller who is who it says, but may not have this answer (an
    /// origin certificate carries every party's envelopes: regulators only).
    NotPermitted,
    /// What answered is not what it should have been (not JSON, an entry
    /// whose hash does not verify).
    BadAnswer,
    BadEntry,
    /// A fault of ours.
    Internal,
    /// Nothing is answering (yet).
    Unavailable,
    /// Nothing answered in time.
    Timeout,
}

/// An error answer, as every custody query service sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub code: AnswerCode,
    pub message: String,
}

impl ErrorAnswer {
    /// The code's wire name.
    pub fn code_str(&self) -> String {
        serde_json::to_value(self.code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("nothing answered on {subject} within {secs} s")]
    Timeout { subject: String, secs: u64 },
    #[error("nothing is answering on {subject}: {why}")]
    Unavailable { subject: String, why: String },
    #[error("the answer on {subject} is not JSON")]
    NotJson { subject: String },
}

/// The header in which a trusted service (the gateway) names the client it
/// asks for: `addr:<IP>` for an unsigned HTTP caller, `key:<nkey>` for a
/// signed one. Believed only from inside the services' own account.
pub const CLIENT_HEADER: &str = "Custody-Client";

/// The header nats-server sets, itself, on a request that crosses into
/// another account (any value a client sent is replaced): the asking
/// account, and its user when the import shares it (authz's accounts do).
const REQUEST_INFO_HEADER: &str = "Nats-Request-Info";

tokio::task_local! {
    /// Who the requests made in this task are made for (see [`on_behalf_of`]).
    static ASKER: String;
}

/// Runs `work` with every request it makes ([`request`]) naming `asker` as
/// the client it is made for, so that the service answering queues it
/// with that client's other work ([`crate::fair`]), not with everyone's.
pub async fn on_behalf_of<F: std::future::Future>(asker: String, work: F) -> F::Output {
    ASKER.scope(asker, work).await
}

/// Sends a request, naming the client it is made for when there is one
/// ([`on_behalf_of`]): the one way custody sends a request.
async fn send(client: &async_nats::Client, subject: &str, payload: bytes::Bytes) -> Result<async_nats::Message, async_nats::RequestError> {
    match ASKER.try_with(Clone::clone) {
        Ok(asker) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(CLIENT_HEADER, asker.as_str());
            client.request_with_headers(subject.to_owned(), headers, payload).await
        }
        Err(_) => client.request(subject.to_owned(), payload).await,
    }
}

#[derive(Deserialize)]
struct RequestInfo {
    #[serde(default)]
    acc: String,
    #[serde(default)]
    user: String,
}

/// Who sent a request, as nats-server itself wrote it (`Nats-Request-Info`,
/// whatever the sender put there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// From the same account, or with no accounts at all: NATS says nothing.
    Unsaid,
    /// A user of another account.
    User(String),
    /// Another account, no user named.
    Unnamed,
}

/// [`Requester`] of a request.
pub fn requester_of(msg: &async_nats::Message) -> Requester {
    let Some(info) = msg.headers.as_ref().and_then(|h| h.get(REQUEST_INFO_HEADER)) else { return Requester::Unsaid };
    match serde_json::from_str::<RequestInfo>(info.as_str()) {
        Ok(i) if !i.user.is_empty() => Requester::User(i.user),
        _ => Requester::Unnamed,
    }
}

/// Who asked: the fair-queue client of a request ([`crate::fair`]).
///
/// - From another account, nats-server's own `Nats-Request-Info` says
///   which user asked (`nats:<user>`), whatever headers the asker set;
///   except that the gateway, in the services' account, names the HTTP
///   client it asks for ([`CLIENT_HEADER`]), and is believed.
/// - From the same account (the gateway asking a projection), the named
///   client; with no accounts at all (a bare test server), likewise.
/// - Otherwise `anonymous`, one client for all who say nothing.
pub fn asker_of(msg: &async_nats::Message) -> String {
    let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    let info = header(REQUEST_INFO_HEADER).and_then(|v| serde_json::from_str::<RequestInfo>(&v).ok());
    match (info, header(CLIENT_HEADER)) {
        (Some(i), Some(named)) if i.acc == crate::subjects::SERVICES_ACCOUNT => named,
        (Some(i), _) if !i.user.is_empty() => format!("nats:{}", i.user),
        (Some(i), _) => format!("nats-account:{}", i.acc),
        (None, Some(named)) => named,
        (None, None) => "anonymous".to_owned(),
    }
}

/// One JSON request-reply within `wait`: the answer, which may be an error
/// answer ([`ErrorAnswer::of`]).
pub async fn request(
    client: &async_nats::Client,
    subject: &str,
    body: &serde_json::Value,
    wait: std::time::Duration,
) -> Result<serde_json::Value, RequestError> {
    let asked = send(client, subject, body.to_string().into());
    let msg = match tokio::time::timeout(wait, asked).await {
        Err(_) => return Err(RequestError::Timeout { subject: subject.to_owned(), secs: wait.as_secs() }),
        Ok(Err(e)) => return Err(RequestError::Unavailable { subject: subject.to_owned(), why: e.to_string() }),
        Ok(Ok(m)) => m,
    };
    serde_json::from_slice(&msg.payload).map_err(|_| RequestError::NotJson { subject: subject.to_owned() })
}

/// The answer, or, when it is larger than NATS carries (the server would
/// drop it and the asker would time out), a refusal that says so.
pub fn within_limit(answer: String, max_payload: usize) -> String {
    if answer.len() <= max_payload {
        return answer;
    }
    let why = format!("the answer is {} bytes, more than the {max_payload} bytes NATS carries; ask for less (fewer lots, a smaller genealogy)", answer.len());
    error_answer(AnswerCode::AnswerTooLarge, why).to_string()
}

/// The one builder of an error answer's JSON.
pub fn error_answer(code: AnswerCode, message: impl Into<String>) -> serde_json::Value {
    serde_json::to_value(ErrorAnswer { code, message: message.into() }).unwrap_or_default()
}

impl ErrorAnswer {
    /// The error an answer carries, if it is one.
    pub fn of(answer: &serde_json::Value) -> Option<ErrorAnswer> {
        answer.get("code")?;
        serde_json::from_value(answer.clone()).ok()
    }
}

/// `custody.query.search`: a lot id, or a number on a paper (an export's
/// certificate, a document's reference, a verification number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    pub q: String,
}

/// `custody.query.lots` (and `custody.holdings.<key>`): a page of lots in
/// id order, after `after`, that pass every filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LotsQuery {
    /// Part of its mass was mined in this country (ISO 3166-1 alpha-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mined_in: Option<String>,
    /// `rough` or `polished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Consumed (merged, split or cut into other lots) or still a lot of
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed: Option<bool>,
    /// With `verdict` and `date`: the verdict under this rule set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The date of entry the verdict is for (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// Came into being on or after this day (YYYY-MM-DD) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// ... and on or before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The page starts after this lot id (the last page's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Lots on a page (default 50, at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `custody.query.origin` and `custody.query.genealogy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotQuery {
    pub lot: String,
}

/// `custody.query.admissibility`: a preset's name or a rule file's text,
/// and a date `YYYY-MM-DD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissibilityQuery {
    pub lot: String,
    #[serde(default)]
    pub rules: String,
    #[serde(default)]
    pub date: Option<String>,
}

/// `custody.query.certificate`: a lot, one or more rule sets (preset
/// names or TOML text), and a date `YYYY-MM-DD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateQuery {
    pub lot: String,
    pub rules: Vec<String>,
    pub date: String,
}

/// `custody.query.verify_certificate`: a certificate, the ledger key the
/// verifier trusts, and optionally rule sets the verifier insists on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyCertificateQuery {
    pub certificate: custody_proto::certificate::OriginCertificate,
    pub key: String,
    #[serde(default)]
    pub rules: Vec<String>,
}

/// `custody.query.actor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorQuery {
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_round_trip_with_snake_case_codes() {
        let a = error_answer(AnswerCode::UnknownLot, "lot \"X\" is not in the projection");
        assert_eq!(a["code"], "unknown_lot");
        assert_eq!(ErrorAnswer::of(&a).map(|e| e.code), Some(AnswerCode::UnknownLot));
        assert_eq!(ErrorAnswer::of(&serde_json::json!({"lot": "X"})), None);
        assert_eq!(serde_json::to_value(AnswerCode::AnswerTooLarge).unwrap(), "answer_too_large");
    }

    fn asked(headers: &[(&str, &str)]) -> async_nats::Message {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        async_nats::Message {
            subject: "custody.query.origin".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers: (!headers.is_empty()).then_some(map),
            status: None,
            description: None,
            length: 0,
        }
    }

    /// Who is queued as whom: an actor cannot name itself someone else
    /// (nats-server's own header says who it is), the gateway can.
    #[test]
    fn the_asker_is_who_nats_server_says_unless_it_is_the_gateway() {
        let actor = r#"{"acc":"ACTORS","user":"UMINER","rtt":1000}"#;
        assert_eq!(asker_of(&asked(&[(REQUEST_INFO_HEADER, actor)])), "nats:UMINER");
        assert_eq!(asker_of(&asked(&[(REQUEST_INFO_HEADER, actor), (CLIENT_HEADER, "addr:10.0.0.1")])), "nats:UMINER", "a forged client name");
        let gateway = r#"{"acc":"SERVICES","user":"UGATE"}"#;
        assert_eq!(asker_of(&asked(&[(REQUEST_INFO_HEADER, gateway), (CLIENT_HEADER, "addr:10.0.0.1")])), "addr:10.0.0.1");
        assert_eq!(asker_of(&asked(&[(REQUEST_INFO_HEADER, gateway)])), "nats:UGATE");
        assert_eq!(asker_of(&asked(&[(REQUEST_INFO_HEADER, r#"{"acc":"ACTORS"}"#)])), "nats-account:ACTORS");
        assert_eq!(asker_of(&asked(&[(CLIENT_HEADER, "addr:127.0.0.2")])), "addr:127.0.0.2", "inside the account (the gateway to a projection)");
        assert_eq!(asker_of(&asked(&[])), "anonymous");
    }
}
