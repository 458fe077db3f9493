//! Scratch (issue 29, item 3): reading 1 M stream messages by batched
//! direct get, by a pull consumer and by an ordered push consumer, in one
//! account. Start `nats-server -js -sd /tmp/read-spike-js -p 14999`, then
//! `target/release/read-spike 1000000`. `src/bin/cross.rs` does the same
//! across accounts, against `nats-server -c accounts.conf`.
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let url = std::env::var("URL").unwrap_or("nats://127.0.0.1:14999".into());
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    let s = read_spike::filled(&js, n).await;
    for round in 0..2 {
        let t = Instant::now();
        let c = read_spike::direct_get(&client, n).await;
        println!("round {round} direct get: {c} in {:.2}s = {:.0}/s", t.elapsed().as_secs_f64(), c as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let cons = read_spike::pull_consumer(&s, None).await;
        let mut msgs = cons.stream().max_messages_per_batch(1024).messages().await.unwrap();
        let c = count(&mut msgs, n).await;
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
        let c = count(&mut msgs, n).await;
        println!("round {round} ordered push: {c} in {:.2}s = {:.0}/s", t.elapsed().as_secs_f64(), c as f64 / t.elapsed().as_secs_f64());
    }
}

/// Reads `n` consumer messages, each with its stream position.
async fn count<S, E>(msgs: &mut S, n: u64) -> u64
where
    S: futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Debug,
{
    let mut c = 0u64;
    while c < n {
        let m = msgs.next().await.unwrap().unwrap();
        let _ = m.info().unwrap().stream_sequence;
        c += 1;
    }
    c
}
