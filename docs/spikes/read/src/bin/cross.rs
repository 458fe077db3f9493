//! A pull consumer in CUSTODY, pulled from SERVICES through an exported
//! MSG.NEXT (response_type stream), against direct get the same way.
//! Start `nats-server -c accounts.conf` (this folder), then
//! `target/release/cross 1000000`.
use async_nats::jetstream;
use futures::StreamExt;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let owner = async_nats::ConnectOptions::with_user_and_password("c".into(), "c".into()).connect("nats://127.0.0.1:14998").await.unwrap();
    let reader = async_nats::ConnectOptions::with_user_and_password("s".into(), "s".into()).connect("nats://127.0.0.1:14998").await.unwrap();
    let js = jetstream::new(owner.clone());
    let s = read_spike::filled(&js, n).await;
    for round in 0..2 {
        let t = Instant::now();
        let c = read_spike::direct_get(&reader, n).await;
        println!("round {round} direct get across accounts: {c} in {:.2}s = {:.0}/s", t.elapsed().as_secs_f64(), c as f64 / t.elapsed().as_secs_f64());

        for batch in [256u64, 1024, 4096] {
            let name = format!("follow{round}b{batch}");
            read_spike::pull_consumer(&s, Some(name.clone())).await;
            let t = Instant::now();
            let inbox = reader.new_inbox();
            let mut sub = reader.subscribe(inbox.clone()).await.unwrap();
            let next = format!("$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.{name}");
            let body: bytes::Bytes = format!("{{\"batch\":{batch},\"expires\":5000000000}}").into();
            let mut asked = 0u64;
            let mut c = 0u64;
            let mut last = 0u64;
            while c < n {
                while asked < c + 2 * batch {
                    reader.publish_with_reply(next.clone(), inbox.clone(), body.clone()).await.unwrap();
                    asked += batch;
                }
                let m = sub.next().await.unwrap();
                if m.status.is_some() {
                    asked = c;
                    continue;
                }
                let seq: u64 = m.reply.as_ref().unwrap().as_str().split('.').nth(5).unwrap().parse().unwrap();
                assert_eq!(seq, last + 1);
                last = seq;
                c += 1;
            }
            println!(
                "round {round} pull across accounts, batch {batch}: {c} in {:.2}s = {:.0}/s",
                t.elapsed().as_secs_f64(),
                c as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
}
