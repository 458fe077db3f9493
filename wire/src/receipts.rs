//! Receipts of durable submissions: how an outcome is kept on a receipts
//! stream and read back by its actor. The ledger writes them for inbox
//! submissions (`CUSTODY_RECEIPTS` on the hub), and an edge writes the
//! hub's answers to its own queued submissions the same way (its own
//! `CUSTODY_RECEIPTS`), so an actor reads its receipts with the same
//! client at either place (`custody::client::receipts`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use custody_proto::{ActorKey, Outcome};

use crate::subjects::{receipts, HDR_EVENT_ID, RECEIPTS_PREFIX, RECEIPTS_STREAM};

/// How long receipts are kept.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The receipts stream: file storage, kept [`KEEP`], on `replicas` servers.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: RECEIPTS_STREAM.into(),
        subjects: vec![format!("{RECEIPTS_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: KEEP,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The consumers kept on a receipts stream, one per actor: durable, named
/// by the actor's key, filtered to its receipts. Actors cannot create
/// consumers (on the hub their NATS account has no JetStream); they pull
/// from this one, and only from their own.
#[derive(Default)]
pub struct Consumers {
    made: std::collections::HashSet<String>,
}

impl Consumers {
    /// Makes the consumer of the actor a subject's key names, once; a key
    /// that is no actor's key gets none.
    pub async fn ensure(&mut self, js: &jetstream::Context, subject_key: Option<&str>) {
        if subject_key.is_some_and(|k| self.made.contains(k)) {
            return;
        }
        let Some(actor) = owner(subject_key) else { return };
        let actor = actor.as_str();
        let config = consumer::pull::Config {
            durable_name: Some(actor.to_owned()),
            filter_subject: receipts(actor),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        match js.create_consumer_on_stream(config, RECEIPTS_STREAM).await {
            Ok(_) => {
                self.made.insert(actor.to_owned());
            }
            Err(e) => tracing::warn!(error = %e, actor, "cannot create a receipts consumer; trying again with the next receipt"),
        }
    }
}

/// How a durable submission's outcome is published: on the receipts
/// subject of the actor whose subject it came on (NATS lets only that
/// actor publish there), with the headers and the message id that make a
/// republish a duplicate. Pure, so that a fuzz target can drive it with
/// any bytes. The event id comes from input: it is escaped into printable
/// ASCII, never put in a header as it came (a CR or LF there would break
/// the protocol, and async-nats panics on one).
pub fn message(subject_key: Option<&str>, outcome: &Outcome) -> (String, HeaderMap, String) {
    let actor = owner(subject_key).unwrap_or_else(|| "unattributed".into());
    let (id, tag) = match outcome {
        Outcome::Receipt(r) => (r.id.as_str(), r.seq.to_string()),
        Outcome::Rejected(r) => (r.id.as_deref().unwrap_or_default(), r.code.to_string()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(HDR_EVENT_ID, header_value(id));
    let message_id = header_text(&format!("{actor}:{id}:{tag}"));
    (receipts(&actor), headers, message_id)
}

/// The actor whose receipts a subject's key names, if it is a key.
fn owner(subject_key: Option<&str>) -> Option<String> {
    subject_key.and_then(|k| k.parse::<ActorKey>().ok()).map(|k| k.to_string())
}

/// Any text as header-safe printable ASCII: control characters, quotes,
/// backslashes and non-ASCII are escaped (`\n`, `\u{..}`). Safe text is
/// unchanged.
pub fn header_text(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return s.to_owned();
    }
    s.escape_default().to_string()
}

/// A header value that cannot fail: the text escaped by [`header_text`].
/// `HeaderValue::from(&str)` panics on CR or LF; this never does.
pub fn header_value(s: &str) -> async_nats::HeaderValue {
    let text = header_text(s);
    text.parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::Refusal;

    #[test]
    fn input_never_reaches_a_header_unescaped() {
        // The id of a refused envelope comes from whatever bytes were sent.
        let refused = Outcome::Rejected(Refusal {
            id: Some("x\r\ny\u{0}é\\".into()),
            code: custody_proto::Code::BadSignature,
            message: "no".into(),
            retry_after_ms: None,
        });
        let (subject, headers, message_id) = message(Some("not a key"), &refused);
        assert_eq!(subject, "custody.receipts.unattributed");
        let id = headers.get(HDR_EVENT_ID).expect("the id header").as_str();
        assert_eq!(id, r"x\r\ny\u{0}\u{e9}\\");
        assert_eq!(message_id, r"unattributed:x\r\ny\u{0}\u{e9}\\:bad_signature");
        // Safe text is left as it is.
        assert_eq!(header_text("lot-1:2024/09"), "lot-1:2024/09");
    }
}
