//! Scratch (issue 29, item 3): reading 1 M stream messages by batched
//! direct get, by a pull consumer and by an ordered push consumer, in one
//! account. Start `nats-server -js -sd /tmp/read-spike-js -p 14999`, then
//! `target/release/read-spike 1000000`. `src/bin/cross.rs` does the same
//! across accounts, against `nats-server -c accounts.conf`.
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use std::future::IntoFuture;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let url = std::env::var("URL").unwrap_or("nats://127.0.0.1:14999".into());
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    let s = js
        .get_or_create_stream(stream::Config {
            name: "CUSTODY_LEDGER".into(),
            subjects: vec!["custody.ledger.entries".into()],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let have = s.cached_info().state.messages;
    if have < n {
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
    }
    for round in 0..2 {
        let t = Instant::now();
        let reader = custody_wire::follow::Reader::ledger(&client);
        let mut msgs = std::pin::pin!(reader.range(1, n));
        let mut c = 0u64;
        let mut bytes = 0;
        while let Some(m) = msgs.next().await {
            let m = m.unwrap();
            c += 1;
            bytes += m.payload.len();
        }
        println!("round {round} direct get: {c} in {:.2}s = {:.0}/s ({bytes})", t.elapsed().as_secs_f64(), c as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let cons = s
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 },
                inactive_threshold: std::time::Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = cons.stream().max_messages_per_batch(1024).messages().await.unwrap();
        let mut c = 0u64;
        while c < n {
            let m = msgs.next().await.unwrap().unwrap();
            let _ = m.info().unwrap().stream_sequence;
            c += 1;
        }
        println!("round {round} pull consumer: {c} in {:.2}s = {:.0}/s", t.elapsed().as_secs_f64(), c as f64 / t.elapsed().as_secs_f64());
        drop(msgs);

        let t = Instant::now();
        let cons = s
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 },
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = cons.messages().await.unwrap();
        let mut c = 0u64;
        while c < n {
            let m = msgs.next().await.unwrap().unwrap();
            let _ = m.info().unwrap().stream_sequence;
            c += 1;
        }
        println!("round {round} ordered push: {c} in {:.2}s = {:.0}/s", t.elapsed().as_secs_f64(), c as f64 / t.elapsed().as_secs_f64());
    }
}
