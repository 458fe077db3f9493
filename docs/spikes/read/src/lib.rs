//! What both spikes share: the stream, filled.
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use std::future::IntoFuture;

/// `CUSTODY_LEDGER` holding `n` messages of 700 bytes with two
/// 64-character headers, as committed entries are about.
pub async fn filled(js: &jetstream::Context, n: u64) -> stream::Stream {
    let config = stream::Config { name: "CUSTODY_LEDGER".into(), subjects: vec!["custody.ledger.entries".into()], allow_direct: true, ..Default::default() };
    let s = js.get_or_create_stream(config).await.unwrap();
    let have = s.cached_info().state.messages;
    let payload = bytes::Bytes::from(vec![b'x'; 700]);
    let mut acks = futures::stream::FuturesOrdered::new();
    for i in have..n {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Custody-Hash", format!("{i:064x}").as_str());
        h.insert("Custody-Prev", format!("{i:064x}").as_str());
        acks.push_back(js.publish_with_headers("custody.ledger.entries", h, payload.clone()).await.unwrap().into_future());
        if acks.len() > 2000 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
    s
}

/// Reads messages 1 to `n` as custody's follower does, by batched direct
/// get; how many came.
pub async fn direct_get(client: &async_nats::Client, n: u64) -> u64 {
    let reader = custody_wire::follow::Reader::ledger(client);
    let mut msgs = std::pin::pin!(reader.range(1, n));
    let mut c = 0u64;
    while let Some(m) = msgs.next().await {
        m.unwrap();
        c += 1;
    }
    c
}

/// A pull consumer of the whole stream, without acks (as the ledger makes
/// a follower's).
pub async fn pull_consumer(s: &stream::Stream, name: Option<String>) -> consumer::PullConsumer {
    let config = consumer::pull::Config {
        name,
        ack_policy: consumer::AckPolicy::None,
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 },
        inactive_threshold: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    s.create_consumer(config).await.unwrap()
}
