//! The same event again returns the first receipt and writes nothing, on
//! both submission paths: request-reply and the durable inbox stream.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::*;
use custody_proto::Outcome;
use custody_wire::subjects;
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_envelope_three_times_gives_one_entry_and_three_identical_receipts() {
    let sys = System::start().await;
    let miner = sys.actor("m", "miner", "CA").await;
    let env = sign(&miner, &event(&miner, "once", "mined", json!({"lot": "O1", "carats": "3.00", "country": "CA"})));
    let before = sys.head().await;
    let mut receipts = Vec::new();
    for _ in 0..3 {
        let Outcome::Receipt(r) = sys.submit_raw(env.clone()).await else { panic!("refused") };
        receipts.push(r);
    }
    assert_eq!(receipts[0], receipts[1]);
    assert_eq!(receipts[1], receipts[2]);
    let after = sys.head().await;
    assert_eq!(after.0, before.0 + 1, "one entry, not three");
    assert_eq!(after.1.as_deref(), Some(receipts[0].hash.to_hex().as_str()));

    // Re-signed (new signature bytes, same payload): still the first receipt.
    let Outcome::Receipt(r) = sys.submit(&miner, &event(&miner, "once", "mined", json!({"lot": "O1", "carats": "3.00", "country": "CA"}))).await else {
        panic!()
    };
    assert_eq!(r, receipts[0]);
    assert_eq!(sys.head().await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_stream_submissions_get_receipts_and_rejections() {
    let sys = System::start().await;
    let miner = sys.actor("m", "miner", "CA").await;
    let js = jetstream::new(sys.client.clone());

    // Published without waiting on the ledger: JetStream holds them.
    let ok = sign(&miner, &event(&miner, "inbox-1", "mined", json!({"lot": "I1", "carats": "1.00", "country": "CA"})));
    let bad = sign(&miner, &event(&miner, "inbox-2", "mined", json!({"lot": "I1", "carats": "1.00", "country": "CA"})));
    for raw in [ok.clone(), bad, ok] {
        js.publish(subjects::inbox(&miner.public_key()), raw.into()).await.unwrap().await.unwrap();
    }

    let receipts = js.get_stream(subjects::RECEIPTS_STREAM).await.unwrap();
    let consumer = receipts
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: subjects::receipts(&miner.public_key()), ..Default::default() })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    // A marker after them: the ledger takes the inbox in order and the
    // receipts stream keeps it, so whatever the duplicate produced comes
    // before the marker's outcome.
    let marker = sign(&miner, &event(&miner, "inbox-marker", "mined", json!({"lot": "I2", "carats": "1.00", "country": "CA"})));
    js.publish(subjects::inbox(&miner.public_key()), marker.into()).await.unwrap().await.unwrap();
    let mut outcomes = Vec::new();
    while !outcomes.iter().any(|o| matches!(o, Outcome::Receipt(r) if r.id == "inbox-marker")) {
        let msg = tokio::time::timeout(Duration::from_secs(20), messages.next()).await.expect("outcome arrives").unwrap().unwrap();
        outcomes.push(serde_json::from_slice::<Outcome>(&msg.payload).unwrap());
    }
    let Outcome::Receipt(first) = &outcomes[0] else { panic!("{:?}", outcomes[0]) };
    assert_eq!(first.id, "inbox-1");
    assert_eq!(code(&outcomes[1]), "lot_exists");
    // The duplicate's receipt is deduplicated by message id on the receipts stream.
    assert_eq!(outcomes.len(), 3, "no third outcome message before the marker's: {outcomes:?}");
    let Outcome::Receipt(marked) = &outcomes[2] else { unreachable!() };
    assert_eq!(sys.head().await.0, marked.seq);
    assert_eq!(marked.seq, first.seq + 1, "the duplicate wrote nothing");
    // Acks follow the receipts; give the last one a moment to land.
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = js.get_stream(subjects::INBOX_STREAM).await.unwrap().get_info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "every inbox message was acked after its outcome");
}

/// A batch request (`Custody-Batch: ndjson`) gets, in order, what each of
/// its envelopes would get alone: two ledgers with the same actors, one
/// sent the envelopes one by one, the other as one batch, answer the same
/// ids, seqs and codes, and end at the same head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_what_each_envelope_would_get_alone_in_order() {
    let miner = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let (alone, batched) = (System::start().await, System::start().await);
    for sys in [&alone, &batched] {
        for (who, name) in [(&miner, "m"), (&stranger, "s")] {
            let reg = json!({"subject": who.public_key(), "name": name, "roles": ["miner"], "country": "BW"});
            sys.accept(&sys.authority, &event(&sys.authority, &format!("reg-{name}"), "actor.registered", reg)).await;
        }
    }
    let mined = sign(&miner, &event(&miner, "b-1", "mined", json!({"lot": "B1", "carats": "10.00", "country": "BW"})));
    let mut forged = mined.clone();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let split = json!({"lot": "B1", "into": [{"lot": "B1a", "carats": "4.00"}, {"lot": "B1b", "carats": "6.00"}]});
    let envelopes: Vec<Vec<u8>> = vec![
        mined.clone(),
        // The same bytes again: the same receipt.
        mined.clone(),
        forged,
        b"not an envelope".to_vec(),
        // Depends on the first, in the same batch.
        sign(&miner, &event(&miner, "b-2", "split", split.clone())),
        // The first id, another event.
        sign(&miner, &event(&miner, "b-1", "mined", json!({"lot": "B9", "carats": "1.00", "country": "BW"}))),
        sign(&miner, &event(&miner, "b-3", "split", split)),
        // Another actor's envelope on the miner's subject.
        sign(&stranger, &event(&stranger, "b-4", "mined", json!({"lot": "B4", "carats": "1.00", "country": "BW"}))),
        sign(&miner, &event(&miner, "b-5", "mined", json!({"lot": "B5", "carats": "2.50", "country": "BW"}))),
    ];
    let subject = subjects::submit(&miner.public_key());
    let mut one_by_one = Vec::new();
    for e in &envelopes {
        one_by_one.push(custody::client::submit_to(&alone.client, subject.clone(), e.clone().into()).await.unwrap());
    }
    let mut body = envelopes.join(&b'\n');
    // Blank lines and CRLF endings are not envelopes.
    body.extend_from_slice(b"\r\n\n");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(subjects::HDR_BATCH, subjects::BATCH_NDJSON);
    let request = async_nats::Request::new().headers(headers.clone()).payload(body.into()).timeout(Some(Duration::from_secs(30)));
    let answer = batched.client.send_request(subject.clone(), request).await.unwrap();
    let in_batch: Vec<Outcome> = serde_json::from_slice(&answer.payload).expect("an array of outcomes");

    // What a person compares: the id and seq of a receipt, the id, code
    // and message of a refusal (the times and hashes differ by ledger).
    let shown = |o: &Outcome| match o {
        Outcome::Receipt(r) => json!({"id": r.id, "seq": r.seq}),
        Outcome::Rejected(r) => json!({"id": r.id, "code": r.code, "message": r.message}),
    };
    assert_eq!(in_batch.len(), envelopes.len());
    let codes: Vec<String> = in_batch.iter().map(|o| code(o).to_owned()).collect();
    assert_eq!(
        codes,
        ["receipt", "receipt", "bad_signature", "malformed_envelope", "receipt", "id_conflict", "lot_consumed", "subject_mismatch", "receipt"],
        "{in_batch:?}"
    );
    for (i, (a, b)) in one_by_one.iter().zip(&in_batch).enumerate() {
        assert_eq!(shown(a), shown(b), "envelope {i}");
    }
    let (Outcome::Receipt(first), Outcome::Receipt(again)) = (&in_batch[0], &in_batch[1]) else { panic!() };
    assert_eq!(first, again, "a duplicate in a batch gets the first receipt itself");
    assert_eq!(alone.head().await.0, batched.head().await.0);

    // A batch of more envelopes than the ledger takes, or in a format it
    // does not read, is refused whole, and nothing of it is written.
    let head = batched.head().await;
    let many: Vec<Vec<u8>> = (0..=subjects::BATCH_MAX_ENVELOPES)
        .map(|i| sign(&miner, &event(&miner, &format!("many-{i}"), "mined", json!({"lot": format!("M{i}"), "carats": "1.00", "country": "BW"}))))
        .collect();
    for (format, body) in [(subjects::BATCH_NDJSON, many.join(&b'\n')), ("csv", mined.clone())] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::HDR_BATCH, format);
        let request = async_nats::Request::new().headers(headers).payload(body.into()).timeout(Some(Duration::from_secs(30)));
        let answer = batched.client.send_request(subject.clone(), request).await.unwrap();
        let refused: Outcome = serde_json::from_slice(&answer.payload).expect("one refusal");
        assert_eq!(code(&refused), "batch_too_large", "{format}: {refused:?}");
    }
    assert_eq!(batched.head().await, head);

    // `custody submit` sends a file as batches: the same outcomes again
    // (every line now a duplicate or refused as before), and its exit
    // status says some were refused.
    let file: String = envelopes.iter().map(|e| format!("{}\n", String::from_utf8_lossy(e))).collect();
    let out = batched.custody(&["submit", "--signed", "-"], Some(&file));
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Outcome> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The stranger's envelope goes on its own subject from the CLI.
    let from_cli: Vec<String> = lines.iter().map(|o| code(o).to_owned()).collect();
    assert_eq!(from_cli, ["receipt", "receipt", "bad_signature", "malformed_envelope", "receipt", "id_conflict", "lot_consumed", "receipt", "receipt"]);
    assert_eq!(shown(&lines[0]), shown(&in_batch[0]));
    assert_eq!(shown(&lines[8]), shown(&in_batch[8]));
    assert_eq!(batched.head().await.0, head.0 + 1, "only the stranger's event is new");
}

/// A loader that starts before any ledger takes submissions (NATS answers
/// "no responders") sends everything unanswered again, in order, and gets
/// every receipt once a ledger is up: nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_waits_through_no_ledger_and_loses_nothing() {
    let mut sys = System::without_ledger().await;
    let miner = nkeys::KeyPair::new_user();
    let reg = json!({"subject": miner.public_key(), "name": "m", "roles": ["miner"], "country": "BW"});
    let mut envelopes = vec![sign(&sys.authority, &event(&sys.authority, "reg-m", "actor.registered", reg))];
    for i in 0..20 {
        envelopes.push(sign(&miner, &event(&miner, &format!("w-{i}"), "mined", json!({"lot": format!("W{i}"), "carats": "1.00", "country": "BW"}))));
    }
    let client = sys.client.clone();
    let load = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        custody::client::submit_in_order(&client, envelopes.into_iter().map(bytes::Bytes::from), 8, Duration::from_secs(20), |i, o| {
            outcomes.push((i, o));
            Ok(())
        })
        .await
        .map(|()| outcomes)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!load.is_finished(), "it waits for a ledger");
    sys.start_ledger().await;
    let outcomes = load.await.unwrap().expect("every envelope answered");
    let seqs: Vec<u64> = outcomes
        .iter()
        .map(|(_, o)| match o {
            Outcome::Receipt(r) => r.seq,
            Outcome::Rejected(r) => panic!("refused: {} {}", r.code, r.message),
        })
        .collect();
    assert_eq!(seqs, (1..=21).collect::<Vec<u64>>(), "in order, each once");
    assert_eq!(sys.head().await.0, 21);
}

/// A writer that steps down can lose a request it held without a word,
/// and answer the next one (from the same loader) as the writer after it.
/// Between the loader and a real ledger, a relay drops one request, once:
/// the `mined` that makes a lot. The `split` of that lot, sent right
/// after, overtakes it and is refused (`unknown_lot`). The loader sees an
/// answer overtake an unanswered envelope, sends both again in order, and
/// ends with every envelope receipted, in order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_order_loader_sends_again_what_a_writer_lost_and_takes_no_refusal_that_overtook_it() {
    use futures::StreamExt as _;
    let sys = System::start().await;
    let front = custody::natsd::NatsServer::start(&sys.dir.path().join("front")).expect("the loader's nats-server");
    let loader = custody::client::connect(&front.url).await.unwrap();
    let miner = nkeys::KeyPair::new_user();
    let reg = json!({"subject": miner.public_key(), "name": "m", "roles": ["miner"], "country": "BW"});
    let envelopes: Vec<bytes::Bytes> = vec![
        sign(&sys.authority, &event(&sys.authority, "reg-lost", "actor.registered", reg)).into(),
        sign(&miner, &event(&miner, "lost-mined", "mined", json!({"lot": "LOST", "carats": "2.00", "country": "BW"}))).into(),
        sign(
            &miner,
            &event(&miner, "lost-split", "split", json!({"lot": "LOST", "into": [{"lot": "LOST-A", "carats": "1.00"}, {"lot": "LOST-B", "carats": "1.00"}]})),
        )
        .into(),
    ];
    let lost = envelopes[1].clone();

    // The relay: one request at a time, in order, to the real ledger; the
    // `mined` is lost the first time it comes.
    let mut requests = loader.subscribe("custody.submit.>").await.unwrap();
    loader.flush().await.unwrap();
    let (ledger, relay_side) = (sys.client.clone(), loader.clone());
    let relay = tokio::spawn(async move {
        let mut dropped = 0;
        while let Some(msg) = requests.next().await {
            if msg.payload == lost && dropped == 0 {
                dropped += 1;
                continue;
            }
            let answer = ledger.request(msg.subject.to_string(), msg.payload).await.expect("the ledger answers");
            relay_side.publish(msg.reply.expect("a request"), answer.payload).await.unwrap();
        }
    });

    let mut outcomes = Vec::new();
    custody::client::submit_in_order(&loader, envelopes, 8, Duration::from_secs(20), |i, o| {
        outcomes.push((i, o));
        Ok(())
    })
    .await
    .expect("every envelope answered");
    relay.abort();
    let ids: Vec<(usize, &str, u64)> = outcomes
        .iter()
        .map(|(i, o)| match o {
            Outcome::Receipt(r) => (*i, r.id.as_str(), r.seq),
            Outcome::Rejected(r) => panic!("{i} refused: {} {}", r.code, r.message),
        })
        .collect();
    assert_eq!(ids, [(0, "reg-lost", 1), (1, "lost-mined", 2), (2, "lost-split", 3)], "in order, each once");
    assert_eq!(sys.head().await.0, 3);
}
