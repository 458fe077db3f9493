//! What the write path (issue 12: the committed stream as the commit
//! point) relies on in the pinned nats-server, checked against the real
//! binary rather than trusted: an atomic batch with an expected last
//! sequence is stored whole or not at all, a stale expectation is refused
//! with JetStream error 10071 and stores nothing (so a batch whose ack was
//! lost cannot be appended twice by a retry), and a stream with
//! `deny_delete` and `deny_purge` cannot lose a message through the API.

mod common;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use custody::natsd::NatsServer;
use custody_wire::atomic::BatchError;

const SUBJECT: &str = "contract.entries";

/// Publishes `payloads` as one atomic batch, the first expecting the
/// stream to end at `expected_last`; returns the last message's stream
/// sequence, or the server's refusal.
async fn atomic(js: &jetstream::Context, id: &str, payloads: &[&str], expected_last: u64) -> Result<u64, BatchError> {
    let msgs = payloads.iter().map(|p| (HeaderMap::new(), bytes::Bytes::from(p.to_string()))).collect();
    custody_wire::atomic::send(js, SUBJECT, id, msgs, Some(expected_last)).await.await
}

async fn count(s: &mut stream::Stream) -> u64 {
    s.info().await.expect("stream info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_batches_fence_on_the_expected_sequence_and_the_stream_cannot_lose_messages() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).expect("nats-server starts");
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let js = jetstream::new(client);
    let mut s = js
        .create_stream(stream::Config {
            name: "CONTRACT".into(),
            subjects: vec![SUBJECT.into()],
            allow_atomic_publish: true,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        })
        .await
        .expect("a stream with atomic publish (2.12+)");

    let ack = atomic(&js, "b1", &["e1", "e2", "e3"], 0).await.expect("a fresh batch commits");
    assert_eq!(ack, 3, "the commit's ack names the batch's last seq");
    assert_eq!(count(&mut s).await, 3);

    // A writer that believes the stream still ends at 0: nothing is stored.
    let stale = atomic(&js, "b2", &["x1", "x2"], 0).await.expect_err("a stale expectation is refused");
    assert!(matches!(stale, BatchError::WrongLastSequence(_)), "{stale}");
    assert_eq!(count(&mut s).await, 3, "a refused batch stores none of its messages");

    // The writer that knows the head goes on.
    let ack = atomic(&js, "b3", &["e4", "e5"], 3).await.expect("the right expectation commits");
    assert_eq!(ack, 5);
    // A writer that lost the ack and sends the same batch again cannot
    // append it twice: its own expectation is now stale.
    let retry = atomic(&js, "b3-again", &["e4", "e5"], 3).await.expect_err("a committed batch sent again is refused");
    assert!(matches!(retry, BatchError::WrongLastSequence(_)), "{retry}");
    assert_eq!(count(&mut s).await, 5);

    // Two writers racing for the same seq: exactly one wins.
    let (a, b) = tokio::join!(atomic(&js, "r1", &["a6"], 5), atomic(&js, "r2", &["b6"], 5));
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "one of two racing writers commits: {a:?} / {b:?}");
    assert_eq!(count(&mut s).await, 6);

    // Nothing leaves a deny_delete, deny_purge stream through the API.
    assert!(s.purge().await.is_err(), "purge is refused");
    assert!(s.delete_message(1).await.is_err(), "deleting a message is refused");
    assert_eq!(count(&mut s).await, 6);
}
