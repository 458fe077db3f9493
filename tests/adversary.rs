//! Attacks by a registered but hostile actor, each run as the attacker
//! would run it, against `custody up` (real nats-server with the
//! registry's authorization, the real ledger, projection, gateway and
//! authz). Every one of them worked once; each test asserts what a user of
//! the ledger would notice had it worked again: the committed stream
//! growing by something that is not a ledger entry, the ledger stopping,
//! an event accepted that must not be.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use custody_proto::Outcome;
use custody_wire::follow::Reader;
use custody_wire::subjects;
use nkeys::KeyPair;
use serde_json::json;

/// `custody up`, with a Botswanan and a Russian miner, a trader and a
/// regulator registered, each connected as itself.
struct World {
    up: Up,
    miner: KeyPair,
    m: async_nats::Client,
    m_errors: Complaints,
    miner_ru: KeyPair,
    trader: KeyPair,
    regulator: KeyPair,
    reg: async_nats::Client,
}

async fn world() -> World {
    let up = up();
    let (miner, miner_ru, trader, regulator) = (KeyPair::new_user(), KeyPair::new_user(), KeyPair::new_user(), KeyPair::new_user());
    up.register(&[(&miner, "miner", "BW"), (&miner_ru, "miner", "RU"), (&trader, "trader", "AE"), (&regulator, "regulator", "US")]).await;
    let (m, m_errors, _) = connect_when_allowed(&up.url, &miner).await;
    let (reg, _, _) = connect_when_allowed(&up.url, &regulator).await;
    World { up, miner, m, m_errors, miner_ru, trader, regulator, reg }
}

async fn outcome(client: &async_nats::Client, key: &KeyPair, payload: &serde_json::Value) -> Outcome {
    custody::client::submit(client, sign(key, payload).into()).await.expect("an answer")
}

async fn head(client: &async_nats::Client) -> u64 {
    let msg = client.request(subjects::HEAD_SUBJECT, "".into()).await.expect("the ledger answers its head");
    serde_json::from_slice::<serde_json::Value>(&msg.payload).unwrap()["seq"].as_u64().unwrap()
}

/// The outcomes of `key`'s inbox submissions, waiting up to 20 s until
/// `n` arrived.
async fn receipts(client: &async_nats::Client, key: &KeyPair, n: usize) -> Vec<Outcome> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(more) = custody::client::receipts(client, &key.public_key(), n - got.len(), Duration::from_millis(300)).await {
            got.extend(more);
        }
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("only {} of {n} receipts arrived: {got:?}", got.len());
}

/// The committed stream holds exactly the ledger's entries: once the
/// ledger has published what it receipted (a receipt leaves before its
/// entry is published, so the stream may lag a moment, never lead), its
/// last position is the ledger's head, and every entry verifies.
async fn stream_is_the_ledger(w: &World) {
    let ledger_head = head(&w.reg).await;
    let mut on_stream = 0;
    for _ in 0..100 {
        on_stream = Reader::ledger(&w.reg).last_seq().await.expect("a regulator reads the stream");
        if on_stream >= ledger_head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(on_stream, ledger_head, "the committed stream holds something that is not a ledger entry");
    let key = w.up.dir.path().join("regulator.nk");
    std::fs::write(&key, w.regulator.seed().unwrap()).unwrap();
    let out = run_cli(&w.up.url, &["--nkey", key.to_str().unwrap(), "verify", "--json"], None);
    assert!(out.status.success(), "verify: {} {}", stdout(&out), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_actor_can_make_nats_write_onto_the_committed_stream() {
    let mut w = world().await;
    let me = w.miner.public_key();
    // A receipt exists for it to have delivered anywhere.
    let mined = sign(&w.miner, &event(&w.miner, "adv-m1", "mined", json!({"lot": "ADV1", "carats": "2.00", "country": "BW"})));
    let js = async_nats::jetstream::new(w.m.clone());
    js.publish(subjects::inbox(&me), mined.clone().into()).await.unwrap().await.expect("its inbox takes it");
    assert!(matches!(receipts(&w.m, &w.miner, 1).await.as_slice(), [Outcome::Receipt(_)]));
    let before = head(&w.m).await;

    // 1. A push consumer of its own receipts delivering onto the committed
    //    subject (this once put receipts into CUSTODY_LEDGER and stopped
    //    the ledger for good).
    let create = format!("$JS.API.CONSUMER.CREATE.{}.probe.{}", subjects::RECEIPTS_STREAM, subjects::receipts(&me));
    let body = json!({"stream_name": subjects::RECEIPTS_STREAM, "config": {"name": "probe", "filter_subject": subjects::receipts(&me),
        "deliver_subject": subjects::ENTRIES_SUBJECT, "deliver_policy": "all", "ack_policy": "none"}});
    let answer = tokio::time::timeout(Duration::from_secs(2), w.m.request(create.clone(), body.to_string().into())).await;
    if let Ok(Ok(a)) = answer {
        assert!(String::from_utf8_lossy(&a.payload).contains("error"), "a consumer was created: {:?}", a.payload);
    }
    // 2. Answers steered onto the committed subject through the reply
    //    subject: of the ledger (submit, the inbox's ack), of a projection
    //    (a query), of JetStream itself (a regulator's direct get).
    let entries = subjects::ENTRIES_SUBJECT.to_owned();
    w.m.publish_with_reply(subjects::submit(&me), entries.clone(), mined.clone().into()).await.unwrap();
    w.m.publish_with_reply(subjects::inbox(&me), entries.clone(), mined.clone().into()).await.unwrap();
    w.m.publish_with_reply(subjects::QUERY_ORIGIN, entries.clone(), json!({"lot": "ADV1"}).to_string().into()).await.unwrap();
    let direct = format!("$JS.API.DIRECT.GET.{}", subjects::LEDGER_STREAM);
    w.reg.publish_with_reply(direct, entries.clone(), json!({"seq": 1, "batch": 5}).to_string().into()).await.unwrap();
    // 3. Writing or managing the streams outright, or someone else's
    //    receipts consumer: the server refuses.
    w.m.publish(entries.clone(), "forged".into()).await.unwrap();
    denied(&w.m_errors, &entries).await;
    denied(&w.m_errors, &create).await;
    // Managing the streams, or the ledger's own inbox consumer: denied to
    // an actor and to a regulator alike.
    let (reg_errors, reg2) = {
        let (c, e) = connect(&w.up.url, Some(&w.regulator)).await.expect("the regulator connects");
        (e, c)
    };
    for subject in [
        format!("$JS.API.STREAM.DELETE.{}", subjects::LEDGER_STREAM),
        format!("$JS.API.STREAM.PURGE.{}", subjects::LEDGER_STREAM),
        format!("$JS.API.STREAM.UPDATE.{}", subjects::LEDGER_STREAM),
        format!("$JS.API.STREAM.MSG.DELETE.{}", subjects::LEDGER_STREAM),
        format!("$JS.API.CONSUMER.DELETE.{}.{}", subjects::INBOX_STREAM, subjects::INBOX_CONSUMER),
    ] {
        w.m.publish(subject.clone(), "{}".into()).await.unwrap();
        denied(&w.m_errors, &subject).await;
        reg2.publish(subject.clone(), "{}".into()).await.unwrap();
        denied(&reg_errors, &subject).await;
    }
    let other = w.miner_ru.public_key();
    for api in ["DELETE", "INFO"] {
        let subject = format!("$JS.API.CONSUMER.{api}.{}.{other}", subjects::RECEIPTS_STREAM);
        w.m.publish(subject.clone(), "".into()).await.unwrap();
        denied(&w.m_errors, &subject).await;
    }
    let _ = w.m.flush().await;
    let _ = w.reg.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Nothing landed: the stream is still exactly the ledger, which still
    // serves; `custody up` is still running.
    assert_eq!(head(&w.reg).await, before, "a resent envelope is answered from the first receipt");
    stream_is_the_ledger(&w).await;
    let r = outcome(&w.m, &w.miner, &event(&w.miner, "adv-m2", "mined", json!({"lot": "ADV2", "carats": "1.00", "country": "BW"}))).await;
    assert!(matches!(r, Outcome::Receipt(ref r) if r.seq == before + 1), "{r:?}");
    stream_is_the_ledger(&w).await;
    assert!(w.up.alive(), "custody up stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_envelope_on_the_inbox_cannot_stop_the_ledger() {
    let mut w = world().await;
    let me = w.miner.public_key();
    // A refusal whose event id holds a line break: its id once went raw into
    // a NATS header, async-nats panicked, and the ledger died (and, the
    // message being durable, would have died again at every start).
    let b64 = base64::engine::general_purpose::STANDARD;
    let envelope = json!({"payloadType": "application/vnd.custody.event+json", "payload": b64.encode(br#"{"id":"x\ny"}"#),
        "signatures": [{"keyid": me, "sig": b64.encode([0u8; 64])}]});
    let before = head(&w.m).await;
    let js = async_nats::jetstream::new(w.m.clone());
    js.publish(subjects::inbox(&me), envelope.to_string().into()).await.unwrap().await.expect("the inbox takes it");
    let got = receipts(&w.m, &w.miner, 1).await;
    let [Outcome::Rejected(r)] = got.as_slice() else { panic!("{got:?}") };
    assert_eq!((r.code.as_str(), r.id.as_deref()), ("bad_signature", Some("x\ny")), "{}", r.message);

    // Still serving, on both paths, and nothing changed.
    assert_eq!(head(&w.m).await, before);
    let ok = sign(&w.miner, &event(&w.miner, "adv-after", "mined", json!({"lot": "ADV3", "carats": "1.00", "country": "BW"})));
    js.publish(subjects::inbox(&me), ok.into()).await.unwrap().await.unwrap();
    assert!(matches!(receipts(&w.m, &w.miner, 1).await.as_slice(), [Outcome::Receipt(r)] if r.seq == before + 1));
    assert!(w.up.alive(), "custody up stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_speaks_for_its_own_actor_and_a_key_counts_once() {
    let mut w = world().await;
    let before = head(&w.m).await;
    // Signed by the Russian miner, sent by the Botswanan one on its own
    // subject: NATS lets it through, the ledger must not.
    let russian = sign(&w.miner_ru, &event(&w.miner_ru, "adv-ru", "mined", json!({"lot": "ADVRU", "carats": "5.00", "country": "RU"})));
    let got = custody::client::submit_to(&w.m, subjects::submit(&w.miner.public_key()), russian.into()).await.unwrap();
    assert_eq!(code(&got), "subject_mismatch", "{got:?}");
    // A declared origin with "country" twice: Botswana to a last-wins
    // reader, Russia to a first-wins one. Refused.
    let (t, _, _) = connect_when_allowed(&w.up.url, &w.trader).await;
    let payload = format!(
        r#"{{"id":"adv-dup","kind":"declared","actor":"{}","occurred_at":"2024-09-02T08:00:00Z","lot":"ADVDUP","carats":"10.00","state":"rough","origin":[{{"country":"RU","share":"1.0000","country":"BW"}}]}}"#,
        w.trader.public_key()
    );
    let raw = custody_proto::envelope::sign(&w.trader, payload.as_bytes()).unwrap();
    let got = custody::client::submit(&t, raw.into()).await.unwrap();
    assert_eq!(code(&got), "malformed_event", "{got:?}");
    assert_eq!(head(&w.m).await, before, "nothing was recorded");
    assert!(w.up.alive());
}

/// Waits until the projection knows `lot`, then asks for its verdict.
async fn verdict(w: &World, lot: &str, rules: &str, date: &str) -> serde_json::Value {
    for _ in 0..200 {
        let msg = w.reg.request(subjects::QUERY_ADMISSIBILITY, json!({"lot": lot, "rules": rules, "date": date}).to_string().into()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        if v["code"] != "unknown_lot" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the projection never learnt of {lot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backdated_departure_cannot_launder_russian_rough() {
    let mut w = world().await;
    let (ru, trader) = (&w.miner_ru, &w.trader);
    let (r, t) = (connect_when_allowed(&w.up.url, ru).await.0, connect_when_allowed(&w.up.url, trader).await.0);
    let now = chrono::Utc::now();
    let day = |d: chrono::DateTime<chrono::Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dated = |key: &KeyPair, id: &str, kind: &str, fields: serde_json::Value, at: &str| {
        let mut e = event(key, id, kind, fields);
        e["occurred_at"] = json!(at);
        e
    };
    let ship = |lot: &str, at: &str| {
        dated(
            ru,
            &format!("ship-{lot}"),
            "exported",
            json!({"lots": [lot], "to": trader.public_key(), "to_country": "AE", "certificate": {"number": format!("RU-{lot}"), "value_usd": "1.00"}}),
            at,
        )
    };
    let mine = |lot: &str, at: &str| dated(ru, &format!("mine-{lot}"), "mined", json!({"lot": lot, "carats": "5.00", "country": "RU"}), at);
    let import = |lot: &str| dated(trader, &format!("take-{lot}"), "imported", json!({"certificate": format!("RU-{lot}")}), &day(now));

    // As found: mined today, "exported" on 2023-01-01, before the EU ban.
    // An export cannot precede the mining of what it ships.
    assert!(matches!(outcome(&r, ru, &mine("LAUNDER", &day(now - chrono::TimeDelta::minutes(1)))).await, Outcome::Receipt(_)));
    let before = head(&w.reg).await;
    assert_eq!(code(&outcome(&r, ru, &ship("LAUNDER", "2023-01-01T00:00:00Z")).await), "predates_lot");
    assert_eq!(head(&w.reg).await, before);

    // Backdating both mining and export passes custody, but the ledger
    // recorded the departure years after its claimed date: a late record,
    // so the grandfathering it would earn cannot be established.
    assert!(matches!(outcome(&r, ru, &mine("OLDCLAIM", "2022-12-31T00:00:00Z")).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&r, ru, &ship("OLDCLAIM", "2023-01-01T00:00:00Z")).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&t, trader, &import("OLDCLAIM")).await, Outcome::Receipt(_)));
    let v = verdict(&w, "OLDCLAIM", "eu-2024", "2024-11-15").await;
    assert_eq!(v["verdict"], "undetermined", "{v}");
    assert!(v["reasons"].as_array().unwrap().iter().any(|r| r["text"].as_str().unwrap().contains("only claimed")), "{v}");
    // Under us-2024, EO 14068 (2022-03-11) bans the rough outright; the
    // OFAC rules, which once called it grandfathered, cannot.
    let v = verdict(&w, "OLDCLAIM", "us-2024", "2024-11-15").await;
    assert_eq!(v["verdict"], "prohibited", "{v}");
    for r in v["reasons"].as_array().unwrap().iter().filter(|r| r["rule"].as_str().unwrap().starts_with("ofac")) {
        assert_eq!(r["finding"], "undetermined", "{v}");
    }
    // A late record against the actor's interest (left after the ban took
    // effect) stands as recorded; so does a departure recorded today.
    assert!(matches!(outcome(&r, ru, &mine("LATEBAN", "2024-09-01T00:00:00Z")).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&r, ru, &ship("LATEBAN", "2024-09-05T00:00:00Z")).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&t, trader, &import("LATEBAN")).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&r, ru, &mine("TODAY", &day(now - chrono::TimeDelta::minutes(1)))).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&r, ru, &ship("TODAY", &day(now))).await, Outcome::Receipt(_)));
    assert!(matches!(outcome(&t, trader, &import("TODAY")).await, Outcome::Receipt(_)));
    for lot in ["LATEBAN", "TODAY"] {
        let v = verdict(&w, lot, "eu-2024", "2024-11-15").await;
        assert_eq!(v["verdict"], "prohibited", "{lot}: {v}");
    }
    assert!(w.up.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_questions_get_an_answer_that_says_so() {
    let mut w = world().await;
    let ask = |subject: &'static str, body: serde_json::Value| {
        let reg = w.reg.clone();
        async move {
            let msg = tokio::time::timeout(Duration::from_secs(5), reg.request(subject, body.to_string().into()))
                .await
                .expect("an answer, not silence")
                .expect("an answer");
            serde_json::from_slice::<serde_json::Value>(&msg.payload).unwrap()
        }
    };
    // A rule set of about 800 KB sent inline: once no reply at all.
    let m = &w.miner;
    assert!(matches!(outcome(&w.m, m, &event(m, "big-0", "mined", json!({"lot": "BIG", "carats": "10000.00", "country": "BW"}))).await, Outcome::Receipt(_)));
    let rules = format!("name = \"huge\"\n{}", "[[rule]]\nid = \"r\"\nbanned = [\"RU\"]\nbasis = \"mine_origin\"\nfrom = \"2024-01-01\"\n".repeat(11_000));
    assert!(rules.len() > 700_000);
    let v = verdict(&w, "BIG", "us-2024", "2024-11-15").await;
    assert_eq!(v["verdict"], "admissible", "{v}");
    let v = ask(subjects::QUERY_ADMISSIBILITY, json!({"lot": "BIG", "rules": rules, "date": "2024-11-15"})).await;
    assert_eq!(v["code"], "rules_too_large", "{v}");

    // A genealogy of 8,000 descendants is more than NATS carries (1 MB):
    // once dropped silently, the asker timing out.
    let pieces = |prefix: &str, n: usize, ct: &str| -> serde_json::Value {
        json!((0..n).map(|i| json!({"lot": format!("{prefix}-{i}"), "carats": ct})).collect::<Vec<_>>())
    };
    assert!(matches!(outcome(&w.m, m, &event(m, "big-1", "split", json!({"lot": "BIG", "into": pieces("BIG", 1000, "10.00")}))).await, Outcome::Receipt(_)));
    for i in 0..7 {
        let lot = format!("BIG-{i}");
        let e = event(m, &format!("big-split-{i}"), "split", json!({"lot": lot, "into": pieces(&lot, 1000, "0.01")}));
        assert!(matches!(outcome(&w.m, m, &e).await, Outcome::Receipt(_)));
    }
    let last = head(&w.reg).await;
    for _ in 0..200 {
        let d = ask(subjects::QUERY_DIGEST, json!({})).await;
        if d["seq"].as_u64() == Some(last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = ask(subjects::QUERY_GENEALOGY, json!({"lot": "BIG"})).await;
    assert_eq!(v["code"], "answer_too_large", "{}", v.to_string().chars().take(300).collect::<String>());
    // A smaller one still answers.
    let v = ask(subjects::QUERY_GENEALOGY, json!({"lot": "BIG-0-1"})).await;
    assert_eq!(v["lot"], "BIG-0-1", "{v}");

    // A lot-map proof of 60,000 lots (a 600 KB request) cannot fit in an
    // answer: `answer_too_large`, within the 5 s allowed.
    let lots: Vec<String> = (0..60_000).map(|i| format!("N{i}")).collect();
    let v = ask(subjects::PROOF_SUBJECT, json!({"ranges": [[1, 3]], "lots": lots})).await;
    assert_eq!(v["code"], "answer_too_large", "{}", v.to_string().chars().take(300).collect::<String>());
    // One that fits is answered.
    let v = ask(subjects::PROOF_SUBJECT, json!({"ranges": [[1, 3]], "lots": ["BIG-0-1", "BIG"]})).await;
    assert!(v.get("map").is_some(), "{}", v.to_string().chars().take(300).collect::<String>());
    assert!(w.up.alive());
}
