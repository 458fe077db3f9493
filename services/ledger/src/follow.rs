//! Reading the committed stream: for projections, auditors and `verify`.
//! An entry travels as one message whose payload is the envelope and whose
//! headers carry the chain fields.

use async_nats::jetstream::{self, consumer, stream};

use crate::subjects::LEDGER_STREAM;
use custody_proto::Entry;

/// The entry a committed-stream message carries (hash not yet checked).
pub fn entry_of(msg: &jetstream::Message) -> Result<Entry, String> {
    let headers = msg.headers.as_ref().ok_or("message has no headers")?;
    Entry::from_headers(|name| headers.get(name).map(|v| v.as_str().to_owned()), msg.payload.to_vec())
}

/// Messages of the committed stream from `seq` on, in order.
pub async fn from_seq(js: &jetstream::Context, seq: u64) -> anyhow::Result<(stream::Stream, consumer::pull::Ordered)> {
    let stream = js.get_stream(LEDGER_STREAM).await?;
    let deliver_policy = if seq <= 1 { consumer::DeliverPolicy::All } else { consumer::DeliverPolicy::ByStartSequence { start_sequence: seq } };
    let consumer = stream.create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() }).await?;
    let messages = consumer.messages().await?;
    Ok((stream, messages))
}
