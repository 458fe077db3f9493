//! The projection survives being killed mid-stream (same final digest as a
//! clean replay, and `rebuild` gives it again), and halts with a clear error
//! when the committed stream breaks the chain.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use custody_wire::subjects;
use serde_json::{json, Value};

/// Thousands of entries: mined lots from four miners, then merges.
async fn history(sys: &System, tag: &str) {
    let mut miners = Vec::new();
    for (i, c) in ["RU", "BW", "CA", "ZA"].iter().enumerate() {
        miners.push((sys.actor(&format!("{tag}-miner-{i}"), "miner", c).await, *c));
    }
    sys.accept_all((0..3_000).map(|i| {
        let (m, c) = &miners[i % 4];
        sign(m, &event(m, &format!("{tag}-m{i}"), "mined", json!({"lot": format!("{tag}-L{i}"), "carats": format!("{}.25", 1 + i % 7), "country": c})))
    }))
    .await;
    // Each miner merges its own lots ten at a time, then splits a merge.
    for (mi, (m, _)) in miners.iter().enumerate() {
        for g in 0..5 {
            let lots: Vec<String> = (0..10).map(|k| format!("{tag}-L{}", mi + 4 * (g * 10 + k))).collect();
            let total: u64 = (0..10)
                .map(|k| {
                    let i = mi + 4 * (g * 10 + k);
                    (1 + i % 7) as u64 * 100 + 25
                })
                .sum();
            let into = format!("{tag}-M{mi}-{g}");
            sys.accept(
                m,
                &event(
                    m,
                    &format!("{tag}-merge-{mi}-{g}"),
                    "merged",
                    json!({"lots": lots, "into": {"lot": into, "carats": format!("{}.{:02}", total / 100, total % 100)}}),
                ),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_it_resumes_to_the_digest_of_a_clean_replay() {
    let mut sys = System::start().await;
    // More than one chunk (4,096 entries) of backlog: read ahead, the
    // first chunk may take up to that many at once.
    history(&sys, "a").await;
    history(&sys, "a2").await;
    let head = sys.head().await.0;

    // Start it on the whole backlog, and kill it while it is catching up.
    sys.start_projection().await;
    let mut seen = 0;
    for _ in 0..2_000 {
        if let Some(d) = sys.query(subjects::QUERY_DIGEST, json!({})).await {
            seen = d["seq"].as_u64().unwrap();
            if seen > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sys.kill_projection();
    assert!(seen < head, "killed mid-stream (at {seen} of {head})");

    sys.start_projection().await;
    history(&sys, "b").await; // and it keeps following new entries
    let resumed = sys.projection_caught_up().await;

    let rebuilt = sys.rebuild(&sys.dir.path().join("rebuilt"));
    assert_eq!(rebuilt["seq"], resumed["seq"]);
    assert_eq!(rebuilt["digest"], resumed["digest"], "resumed state equals a clean replay");

    // Rebuilding the running projection's own store gives it once more.
    sys.kill_projection();
    let again = sys.rebuild(&sys.projection_dir());
    assert_eq!(again["digest"], resumed["digest"]);
}

/// The names of the followers' consumers the ledger keeps.
async fn followers(js: &jetstream::Context) -> Vec<String> {
    use futures::TryStreamExt as _;
    let stream = js.get_stream(subjects::LEDGER_STREAM).await.unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    names.into_iter().filter(|n| n.starts_with("follow_")).collect()
}

/// Issue 29: a projection follows through a pull consumer the ledger makes
/// for it. Taken away mid-stream (a ledger restart, a second reader with
/// the same key, a NATS fault), the projection reads on by direct get from
/// where it stood, asks for another, and ends where a clean replay does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_consumer_taken_away_mid_stream_it_reads_on_to_the_digest_of_a_clean_replay() {
    let mut sys = System::start().await;
    history(&sys, "c").await;
    history(&sys, "c2").await;
    let head = sys.head().await.0;
    let js = jetstream::new(sys.client.clone());

    sys.start_projection().await;
    let (mut taken, mut at) = (None, 0);
    for _ in 0..5_000 {
        let seq = sys.query(subjects::QUERY_DIGEST, json!({})).await.and_then(|d| d["seq"].as_u64()).unwrap_or(0);
        if let (Some(name), true) = (followers(&js).await.pop(), seq > 0) {
            js.delete_consumer_from_stream(&name, subjects::LEDGER_STREAM).await.expect("the follower's consumer is deleted");
            (taken, at) = (Some(name), seq);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let taken = taken.expect("the projection follows through a consumer of its own");
    assert!(at < head, "taken away mid-stream (at {at} of {head})");

    history(&sys, "d").await; // and it keeps following new entries
    let resumed = sys.projection_caught_up().await;
    let rebuilt = sys.rebuild(&sys.dir.path().join("rebuilt"));
    assert_eq!(rebuilt["seq"], resumed["seq"]);
    assert_eq!(rebuilt["digest"], resumed["digest"], "read on past its lost consumer, it equals a clean replay");

    // It asked for another consumer, and follows new entries through it.
    let mut again = Vec::new();
    for _ in 0..200 {
        again = followers(&js).await.into_iter().filter(|n| *n != taken).collect();
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!again.is_empty(), "the projection asked for a new consumer after {taken} was taken away");
    // A request the ledger cannot read is refused with a code, and makes
    // no consumer.
    let before = followers(&js).await;
    let refused = sys.client.request(subjects::FOLLOW_SUBJECT, "from 1".into()).await.expect("the ledger answers");
    let refused: Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_eq!(refused["code"], "bad_request", "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("\"from\"")), "{refused}");
    // (One left idle by the rebuild may lapse meanwhile: none is new.)
    let after = followers(&js).await;
    assert!(after.iter().all(|n| before.contains(n)), "{before:?} then {after:?}");
    let m = sys.actor("e-miner", "miner", "BW").await;
    sys.accept(&m, &event(&m, "e-m1", "mined", json!({"lot": "E-L1", "carats": "1.00", "country": "BW"}))).await;
    sys.projection_caught_up().await;
    assert_eq!(sys.origin("E-L1").await["mine_origin"][0]["country"], "BW");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_entry_on_the_stream_halts_the_projection_and_the_ledger() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let m = sys.actor("m", "miner", "BW").await;
    sys.accept(&m, &event(&m, "ok-1", "mined", json!({"lot": "OK1", "carats": "1.00", "country": "BW"}))).await;
    let before = sys.projection_caught_up().await;

    // Someone with publish rights on the stream appends an entry whose
    // prev_hash does not link (issue 6 takes that right away from them).
    let head = sys.head().await.0;
    let forged = custody_proto::Entry::next(
        Some((head, custody_proto::Hash([9; 32]))),
        custody_proto::Timestamp::now(),
        sign(&m, &event(&m, "forged", "mined", json!({"lot": "F1", "carats": "1.00", "country": "BW"}))),
    );
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in forged.headers() {
        headers.insert(k, v.as_str());
    }
    let js = jetstream::new(sys.client.clone());
    js.send_publish(
        subjects::ENTRIES_SUBJECT,
        jetstream::message::PublishMessage::build().payload(forged.envelope.clone().into()).headers(headers).expected_last_sequence(head),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let (status, _) = sys.projection.take().unwrap().exit_within(Duration::from_secs(10)).await;
    let status = status.expect("the projection halts");
    assert!(!status.success());

    // Its store stopped before the break: a rebuild to the break fails too,
    // naming the entry.
    let out = sys.custody(&["projection", "rebuild", "--data", sys.dir.path().join("r").to_str().unwrap()], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("entry {}", head + 1)), "{err}");
    assert!(before["seq"].as_u64().unwrap() == head);

    // The ledger's next batch expects the stream to end at its own head:
    // the stream refuses it (10071), so nothing is receipted. Reading the
    // stream back, the ledger finds a foreign entry where its own would go
    // and stops loudly rather than let the stream and the store tell
    // different histories.
    let next = sign(&m, &event(&m, "ok-2", "mined", json!({"lot": "OK2", "carats": "1.00", "country": "BW"})));
    let answer = tokio::time::timeout(Duration::from_secs(5), sys.client.request(subjects::submit(&m.public_key()), next.into())).await;
    let receipted = matches!(&answer, Ok(Ok(msg)) if serde_json::from_slice::<custody_proto::Outcome>(&msg.payload).is_ok_and(|o| matches!(o, custody_proto::Outcome::Receipt(_))));
    assert!(!receipted, "an event is never receipted past a foreign entry: {answer:?}");
    let (status, _) = sys.ledger.take().unwrap().exit_within(Duration::from_secs(10)).await;
    let status = status.expect("the ledger stops");
    let err = sys.ledger_log();
    assert!(!status.success());
    assert!(err.contains("something other than this ledger wrote"), "{err}");
    // And it refuses to start again on the disagreeing stream.
    let (code, err) = sys.ledger_refusal();
    assert_ne!(code, Some(0));
    assert!(err.contains("refusing to go on"), "{err}");
}

/// Crashes at exact places: with entries applied in memory since the last
/// checkpoint, while a checkpoint's records are being written (before they
/// are registered), and right after one is written. Each time the
/// restarted projection resumes from its last whole checkpoint to the
/// digest of a clean replay. Then every file of the store is cut short:
/// the projection falls back to an older checkpoint, or to a full replay,
/// and still ends at the digest of a clean replay: never serving the
/// damaged state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_while_applying_or_snapshotting_it_resumes_to_the_digest_of_a_clean_replay() {
    use std::os::unix::process::ExitStatusExt as _;

    let mut sys = System::start().await;
    history(&sys, "c").await;
    let head = sys.head().await.0;
    let dir = sys.projection_dir();
    let saved = || {
        let store = custody_projection::store::Store::open(&dir, custody_projection::store::Budget { cache_mb: 16 }).unwrap();
        store.checkpoint().unwrap().unwrap_or(0)
    };

    let mut last_saved = 0;
    // Visits count per process: each run resumes where the last checkpoint
    // stands, and crashes further on.
    for point in ["projection.apply:1777", "projection.snapshot.writing:1", "projection.apply:500", "projection.snapshot.saved:1"] {
        sys.spawn_projection(&[("CUSTODY_CRASH", point), ("CUSTODY_SNAPSHOT_EVERY", "700")]);
        let status = sys.projection_exit().await;
        assert_eq!(status.signal(), Some(6), "{point}: aborted at the crash point: {}", sys.projection_log());
        assert!(sys.projection_log().contains("crash point"), "{point}");
        let now = saved();
        assert!(now >= last_saved && now < head, "{point}: checkpoint at {now} (before: {last_saved}, head {head})");
        if point == "projection.snapshot.writing:1" {
            assert_eq!(now, last_saved, "a checkpoint cut off before its batch is not one");
        }
        eprintln!("{point}: resumes from the checkpoint at {now} of {head}");
        last_saved = now;
    }
    assert!(last_saved > 0, "checkpoints were written");

    // Every file of the store cut to a third: whatever fjall makes of it
    // (an older checkpoint, or a store that does not open and is emptied),
    // the projection never serves a damaged state.
    let mut files = vec![dir.join("records")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let len = std::fs::metadata(&path).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 3).unwrap();
        }
    }

    sys.start_projection().await;
    let resumed = sys.projection_caught_up().await;
    assert_eq!(resumed["seq"].as_u64(), Some(head));
    eprintln!("{}", sys.projection_log());

    let clean = sys.rebuild(&sys.dir.path().join("clean"));
    assert_eq!(clean["digest"], resumed["digest"], "resumed state equals a clean replay");
}

/// While the projection replays a long stream from seq 1, queries are
/// answered at once from what it has applied so far, and each says which
/// seq it reflects: below the head until it has caught up. (200,000
/// entries: the test binary is a debug build; `custody bench replay`
/// measures 1,000,000 and more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_a_replay_answer_at_once_and_say_how_far_it_is() {
    const ENTRIES: usize = 200_000;
    let mut sys = System::without_ledger().await;
    let js = jetstream::new(sys.client.clone());
    custody_ledger::commit::committed_stream(&js, 1).await.unwrap();

    // A history written straight onto the committed stream, as the ledger
    // would: eight miners, a lot Q first, then mined lots merged ten at a time.
    let authority = nkeys::KeyPair::new_user();
    let miners: Vec<nkeys::KeyPair> = (0..8).map(|_| nkeys::KeyPair::new_user()).collect();
    let mut payloads: Vec<(usize, Value)> = Vec::new();
    let at = "2024-09-02T08:00:00Z";
    for (i, m) in miners.iter().enumerate() {
        payloads.push((
            usize::MAX,
            json!({"id": format!("reg-{i}"), "kind": "actor.registered", "actor": authority.public_key(), "occurred_at": at,
            "subject": m.public_key(), "name": format!("miner {i}"), "roles": ["miner"], "country": "BW"}),
        ));
    }
    payloads.push((0, json!({"id": "q", "kind": "mined", "actor": miners[0].public_key(), "occurred_at": at, "lot": "Q", "carats": "2.00", "country": "BW"})));
    let mut pending: Vec<Vec<String>> = vec![Vec::new(); miners.len()];
    let mut i = 0;
    while payloads.len() < ENTRIES {
        let m = i % miners.len();
        let actor = miners[m].public_key();
        if pending[m].len() == 10 {
            let lots = std::mem::take(&mut pending[m]);
            payloads.push((m, json!({"id": format!("e{i}"), "kind": "merged", "actor": actor, "occurred_at": at, "lots": lots, "into": {"lot": format!("M{i}"), "carats": "12.50"}})));
        } else {
            payloads.push((
                m,
                json!({"id": format!("e{i}"), "kind": "mined", "actor": actor, "occurred_at": at, "lot": format!("R{i}"), "carats": "1.25", "country": "BW"}),
            ));
            pending[m].push(format!("R{i}"));
        }
        i += 1;
    }
    // Signed on both cores, chained in order.
    let half = payloads.len() / 2;
    let sign_all = |part: &[(usize, Value)]| -> Vec<Vec<u8>> {
        part.iter().map(|(m, p)| custody_proto::envelope::sign(miners.get(*m).unwrap_or(&authority), p.to_string().as_bytes()).unwrap()).collect()
    };
    let envelopes: Vec<Vec<u8>> = std::thread::scope(|s| {
        let second = s.spawn(|| sign_all(&payloads[half..]));
        let mut first = sign_all(&payloads[..half]);
        first.extend(second.join().unwrap());
        first
    });
    let recorded: custody_proto::Timestamp = "2024-09-02T09:00:00Z".parse().unwrap();
    let mut head = None;
    let entries: Vec<custody_proto::Entry> = envelopes
        .into_iter()
        .map(|env| {
            let e = custody_proto::Entry::next(head, recorded, env);
            head = Some((e.seq, e.hash));
            e
        })
        .collect();
    custody_ledger::commit::send_all(&js, &entries).await.unwrap();
    let last = ENTRIES as u64;
    drop(entries);

    sys.spawn_projection(&[]);
    let mut during = Vec::new();
    let mut seqs = Vec::new();
    let mut settled = None;
    for _ in 0..60_000 {
        let t = std::time::Instant::now();
        let Some(answer) = sys.query(subjects::QUERY_ORIGIN, json!({"lot": "Q"})).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let took = t.elapsed();
        if answer.get("code").is_some() {
            // Not applied yet (the first entries), or not yet answering.
            assert_eq!(answer["code"], "unknown_lot", "{answer}");
            continue;
        }
        let seq = answer["as_of_seq"].as_u64().expect("an answer says its seq");
        if seq == last {
            settled = Some(answer);
            break;
        }
        assert!(seq < last);
        during.push(took);
        seqs.push(seq);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let settled = settled.expect("the projection caught up");
    assert!(seqs.len() >= 10, "answered {} times during the replay", seqs.len());
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "the seq answered from only moves forward");
    assert!(seqs.first() < seqs.last(), "answers came while the replay went on: {:?}..{:?}", seqs.first(), seqs.last());
    // The same answer throughout, only the seq it reflects moved.
    assert_eq!(settled["mine_origin"], json!([{"country": "BW", "share": "1.0000"}]));
    during.sort();
    let p99 = during[(during.len() * 99 / 100).min(during.len() - 1)];
    eprintln!(
        "{} answers during the replay, from seq {} to {}; p50 {:?}, p90 {:?}, p99 {p99:?}",
        during.len(),
        seqs[0],
        seqs[seqs.len() - 1],
        during[during.len() / 2],
        during[during.len() * 9 / 10]
    );
    // Generous for a debug build on a shared machine: the applier holds
    // the lock for 64 entries at a time, never while reading or writing.
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?} during the replay");
}

/// Issue 25: with its descriptors exhausted, the projection could not
/// write its snapshot and `custody up` ended with it. A checkpoint only
/// shortens a restart: one that cannot be written (here the first five
/// fail, by a fail point: root writes anywhere) is reported, the
/// projection keeps answering, and once the way is clear a later
/// checkpoint is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_written_is_reported_and_the_projection_answers_on() {
    let mut sys = System::start().await;
    let miner = sys.actor("snap-miner", "miner", "BW").await;
    sys.spawn_projection(&[("CUSTODY_SNAPSHOT_EVERY", "1"), ("CUSTODY_FAIL", "projection.checkpoint:5")]);
    for i in 0..10 {
        sys.accept(&miner, &event(&miner, &format!("snap-{i}"), "mined", json!({"lot": format!("SNAP{i}"), "carats": "1.00", "country": "BW"}))).await;
    }
    let mut answered = false;
    for _ in 0..200 {
        answered = sys.query(subjects::QUERY_ORIGIN, json!({"lot": "SNAP9"})).await.is_some_and(|v| v.get("mine_origin").is_some());
        if answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the projection answers for the last lot: {}", sys.projection_log());
    assert!(sys.projection_log().contains("cannot write the projection's snapshot"), "reported: {}", sys.projection_log());
    assert!(sys.projection.as_mut().unwrap().child_mut().try_wait().unwrap().is_none(), "the projection runs on: {}", sys.projection_log());

    // Past the failures: a later checkpoint is written, at the head.
    sys.accept(&miner, &event(&miner, "snap-after", "mined", json!({"lot": "SNAPX", "carats": "1.00", "country": "BW"}))).await;
    let (head, _) = sys.head().await;
    let written = format!("projection checkpoint written seq={head} ");
    for _ in 0..200 {
        if sys.projection_log().contains(&written) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sys.projection_log().contains(&written), "a checkpoint once the way is clear: {}", sys.projection_log());
}

/// Issue 26: a projection whose snapshot is ahead of the committed stream
/// (a restored or shortened stream) reported lag 0 and ready, and answered
/// from a history the stream no longer holds. It is not ready now, and
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_ahead_of_its_stream_is_not_ready() {
    use futures::StreamExt as _;
    let mut sys = System::start().await;
    let miner = sys.actor("ahead-miner", "miner", "BW").await;
    for i in 0..5 {
        sys.accept(&miner, &event(&miner, &format!("ahead-{i}"), "mined", json!({"lot": format!("AH{i}"), "carats": "1.00", "country": "BW"}))).await;
    }
    let (head, _) = sys.head().await;
    sys.spawn_projection(&[("CUSTODY_SNAPSHOT_EVERY", "1")]);
    let written = format!("projection checkpoint written seq={head} ");
    for _ in 0..200 {
        if sys.projection_log().contains(&written) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sys.projection_log().contains(&written), "a checkpoint at the head {head}: {}", sys.projection_log());
    sys.kill_projection();
    sys.kill_ledger();

    // The stream now holds only its first two entries.
    let reader = custody_wire::follow::Reader::ledger(&sys.client);
    let mut first = Vec::new();
    let mut batches = std::pin::pin!(reader.entries(None, Some(2)));
    while let Some(batch) = batches.next().await {
        first.extend(batch.unwrap().into_iter().map(custody_proto::Linked::into_entry));
    }
    let js = jetstream::new(sys.client.clone());
    js.delete_stream(subjects::LEDGER_STREAM).await.unwrap();
    custody_ledger::commit::committed_stream(&js, 1).await.unwrap();
    custody_ledger::commit::send_all(&js, &first).await.unwrap();

    sys.spawn_projection(&[]);
    let mut status = Value::Null;
    for _ in 0..200 {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), sys.client.request("custody.status.projection", "".into())).await {
            status = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            if status["why"].as_str().is_some_and(|w| w.contains("ahead of the committed stream")) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["ready"], false, "{status}");
    assert!(status["why"].as_str().unwrap_or("").contains(&format!("applied up to entry {head}, the stream ends at 2")), "{status}");
}
