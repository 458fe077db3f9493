//! Authenticated NATS, as `custody up` runs it by default: every actor
//! connects with its own nkey, and nats-server's authorization follows the
//! actor registry on the ledger. Denied by the server: an unauthenticated
//! client, a miner publishing on another actor's subject or on the
//! committed stream, a regulator submitting for someone else, an actor
//! reading the committed stream. A newly registered actor connects at once;
//! a revoked one is cut off. The ledger still refuses a kind the signer's
//! role may not emit.

mod common;

use std::time::Duration;

use common::*;
use custody_proto::Outcome;
use custody_wire::subjects;
use nkeys::KeyPair;
use serde_json::json;

async fn submit(client: &async_nats::Client, key: &KeyPair, payload: &serde_json::Value) -> Outcome {
    custody::client::submit(client, sign(key, payload).into()).await.expect("an answer")
}

async fn head(client: &async_nats::Client) -> u64 {
    let msg = client.request(subjects::HEAD_SUBJECT, "".into()).await.unwrap();
    serde_json::from_slice::<serde_json::Value>(&msg.payload).unwrap()["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_lets_in_only_registered_actors_each_on_its_own_subjects() {
    let up = up();
    let url = up.url.as_str();

    // Nobody gets in without a key, or with a key the registry lacks.
    let err = connect(url, None).await.expect_err("an unauthenticated client is refused");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    let miner = KeyPair::new_user();
    assert!(connect(url, Some(&miner)).await.is_err(), "an unregistered key is refused");

    // The authority registers a miner, a second miner and a regulator.
    let (miner2, regulator) = (KeyPair::new_user(), KeyPair::new_user());
    up.register(&[(&miner, "miner", "BW"), (&miner2, "miner", "CA"), (&regulator, "regulator", "US")]).await;

    // Registered: it connects at once and submits on its own subject.
    let (m, m_errors, waited) = connect_when_allowed(url, &miner).await;
    eprintln!("a registered miner got in after {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let mined = event(&miner, "auth-m1", "mined", json!({"lot": "AUTH1", "carats": "3.00", "country": "BW"}));
    let Outcome::Receipt(r) = submit(&m, &miner, &mined).await else { panic!("refused") };
    let before = head(&m).await;
    assert_eq!(before, r.seq);

    // On another actor's subject, or the committed stream: denied by the server.
    let as_other = sign(&miner, &event(&miner, "auth-m2", "mined", json!({"lot": "AUTH2", "carats": "1.00", "country": "BW"})));
    m.publish(subjects::submit(&miner2.public_key()), as_other.into()).await.unwrap();
    denied(&m_errors, &subjects::submit(&miner2.public_key())).await;
    m.publish(subjects::ENTRIES_SUBJECT, "forged".into()).await.unwrap();
    denied(&m_errors, subjects::ENTRIES_SUBJECT).await;
    m.publish(subjects::CHECKPOINTS_SUBJECT, "forged".into()).await.unwrap();
    denied(&m_errors, subjects::CHECKPOINTS_SUBJECT).await;
    // Nor may it read the committed stream (it holds others' secrets).
    let js = async_nats::jetstream::new(m.clone());
    assert!(js.get_stream(subjects::LEDGER_STREAM).await.is_err(), "an actor cannot read the committed stream");
    assert_eq!(head(&m).await, before, "nothing reached the ledger");

    // Who holds what: its own holdings, answered over NATS; another's,
    // denied by the server (the gateway is not the only way in).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let own = loop {
        let own = m.request(subjects::holdings(&miner.public_key()), "{}".into()).await.expect("its own holdings are answered");
        let own: serde_json::Value = serde_json::from_slice(&own.payload).unwrap();
        // Once the projection has applied the mining.
        if own["as_of_seq"].as_u64() >= Some(r.seq) || std::time::Instant::now() > deadline {
            break own;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(own["lots"][0]["lot"], "AUTH1", "{own}");
    m.publish(subjects::holdings(&miner2.public_key()), "{}".into()).await.unwrap();
    denied(&m_errors, &subjects::holdings(&miner2.public_key())).await;

    // The projection follows through a pull consumer the ledger made for
    // it, named by its key, across accounts (issue 29): its delivered
    // position is past the mining it answered for.
    let keys = up.dir.path().join("keys/services");
    let projection_key = custody::keys::load(&keys.join("projection-login.nk")).unwrap().public_key();
    let (as_ledger, _) = connect(url, Some(&custody::keys::load(&keys.join("ledger-login.nk")).unwrap())).await.unwrap();
    let follower = subjects::follower_consumer(&projection_key);
    let info = async_nats::jetstream::new(as_ledger).get_stream(subjects::LEDGER_STREAM).await.unwrap().consumer_info(&follower).await;
    assert!(
        info.as_ref().is_ok_and(|i| i.delivered.stream_sequence >= r.seq),
        "the projection's consumer {follower}: {:?}",
        info.as_ref().map(|i| i.delivered)
    );
    // No actor may ask for a follower's consumer or pull from one.
    m.publish(subjects::follower_next(&follower), "{\"batch\": 10}".into()).await.unwrap();
    denied(&m_errors, &subjects::follower_next(&follower)).await;
    m.publish(subjects::FOLLOW_SUBJECT, "{\"from\": 1}".into()).await.unwrap();
    denied(&m_errors, subjects::FOLLOW_SUBJECT).await;

    // The durable path works under authorization too: its own inbox, and
    // its own receipts only, through a named consumer (the filter is then
    // part of the subject the server authorizes).
    let (m2, _, _) = connect_when_allowed(url, &miner2).await;
    let js2 = async_nats::jetstream::new(m2.clone());
    let durable = sign(&miner2, &event(&miner2, "auth-d1", "mined", json!({"lot": "AUTHD1", "carats": "2.00", "country": "CA"})));
    js2.publish(subjects::inbox(&miner2.public_key()), durable.into()).await.unwrap().await.expect("the inbox takes its own actor's envelope");
    let mut outcomes = Vec::new();
    for _ in 0..40 {
        match custody::client::receipts(&m2, &miner2.public_key(), 10, Duration::from_millis(500)).await {
            Ok(o) if !o.is_empty() => {
                outcomes = o;
                break;
            }
            // Its consumer appears with the outcome of its first inbox message.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(matches!(outcomes.as_slice(), [Outcome::Receipt(r)] if r.id == "auth-d1"), "{outcomes:?}");
    // Another actor's receipts, or creating a consumer: denied.
    let (m2b, m2b_errors, _) = connect_when_allowed(url, &miner2).await;
    let spying = custody::client::receipts(&m2b, &miner.public_key(), 1, Duration::from_millis(300)).await;
    assert!(spying.map_or(true, |o| o.is_empty()), "no actor reads another's receipts");
    denied(&m2b_errors, &format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", subjects::RECEIPTS_STREAM, miner.public_key())).await;
    let before = head(&m).await;

    // A regulator queries and reads the stream, and may not submit for others.
    let (reg, reg_errors, _) = connect_when_allowed(url, &regulator).await;
    let answer = reg.request(subjects::QUERY_ORIGIN, json!({"lot": "AUTH1"}).to_string().into()).await.unwrap();
    let origin: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert!(origin.get("mine_origin").is_some() || origin["code"] == "unknown_lot", "{origin}");
    let held = reg.request(subjects::holdings(&miner.public_key()), "{}".into()).await.expect("a regulator asks what anyone holds");
    let held: serde_json::Value = serde_json::from_slice(&held.payload).unwrap();
    assert_eq!(held["lots"][0]["lot"], "AUTH1", "{held}");
    let on_stream = custody_wire::follow::Reader::ledger(&reg).last_seq().await.expect("a regulator reads the committed stream");
    assert_eq!(on_stream, before);
    let for_miner = sign(&miner, &event(&miner, "auth-m3", "mined", json!({"lot": "AUTH3", "carats": "1.00", "country": "BW"})));
    reg.publish(subjects::submit(&miner.public_key()), for_miner.into()).await.unwrap();
    denied(&reg_errors, &subjects::submit(&miner.public_key())).await;
    // On its own subject the server lets it through, and the ledger refuses
    // what its role may not emit (defence in depth).
    let by_regulator = event(&regulator, "auth-r1", "mined", json!({"lot": "AUTH4", "carats": "1.00", "country": "US"}));
    assert_eq!(code(&submit(&reg, &regulator, &by_regulator).await), "role_not_allowed");
    assert_eq!(head(&m).await, before);

    // Through the CLI too: verify needs a reader's key.
    let dir = up.dir.path();
    let reg_file = dir.join("regulator.nk");
    std::fs::write(&reg_file, regulator.seed().unwrap()).unwrap();
    let miner_file = dir.join("miner.nk");
    std::fs::write(&miner_file, miner.seed().unwrap()).unwrap();
    let out = run_cli(url, &["--nkey", reg_file.to_str().unwrap(), "verify", "--json"], None);
    assert!(out.status.success(), "a regulator verifies: {}", String::from_utf8_lossy(&out.stderr));
    let out = run_cli(url, &["--nkey", miner_file.to_str().unwrap(), "verify", "--json"], None);
    assert!(!out.status.success(), "a miner may not read the stream");
    let started = std::time::Instant::now();
    let out = run_cli(url, &["verify"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("give --nkey"), "without a key the CLI says what is missing: {err}");
    assert!(started.elapsed() < Duration::from_secs(5), "and says it at once ({:?})", started.elapsed());

    // Revoked: the server drops the miner and lets it in no more.
    let revoke = event(&up.authority, "revoke-m", "actor.revoked", json!({"subject": miner.public_key(), "reason": "licence withdrawn"}));
    let (auth, _) = connect(url, Some(&up.authority)).await.expect("the genesis authority connects");
    assert!(matches!(submit(&auth, &up.authority, &revoke).await, Outcome::Receipt(_)));
    let mut refused = false;
    for _ in 0..200 {
        if connect(url, Some(&miner)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a revoked actor cannot connect");
    let mut cut_off = false;
    for _ in 0..100 {
        if m.connection_state() != async_nats::connection::State::Connected {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cut_off, "the revoked actor's open connection is closed");
    // And the ledger refuses what it signs, whoever relays it (here the
    // operator, `custody up`'s demo loader, which may submit for anyone).
    let operator = custody::keys::load(&dir.join("keys/services/operator-login.nk")).unwrap();
    let (relay, _) = connect(url, Some(&operator)).await.unwrap();
    let late = event(&miner, "auth-m4", "mined", json!({"lot": "AUTH5", "carats": "1.00", "country": "BW"}));
    assert_eq!(code(&submit(&relay, &miner, &late).await), "actor_revoked");
}

/// Issue 25: an actor could open any number of NATS connections (300
/// were accepted), enough to exhaust the server. What all actors together
/// may hold is now bounded by nats-server (`--actors-max-connections`),
/// and the services and the operator, in accounts of their own, are
/// never crowded out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_together_hold_at_most_their_share_of_connections_and_services_stay_reachable() {
    let up = up_with(&["--actors-max-connections".as_ref(), "20".as_ref()], None);
    let url = up.url.as_str();
    let (greedy, other) = (KeyPair::new_user(), KeyPair::new_user());
    up.register(&[(&greedy, "miner", "BW"), (&other, "miner", "CA")]).await;
    let (first, _, _) = connect_when_allowed(url, &greedy).await;
    let mut held = vec![first];
    let mut refused = None;
    for _ in 0..300 {
        match connect(url, Some(&greedy)).await {
            Ok((c, _)) => held.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("past the limit, refused");
    assert!(held.len() <= 20, "{} connections held", held.len());
    // nats-server writes "maximum account active connections exceeded" and
    // then fails the login ("authorization violation") and closes the
    // connection; which the client sees first depends on timing (CI once
    // saw the second, and once only the closed socket: "broken pipe"; a
    // reset is the same close seen at another moment).
    let said = refused.to_lowercase();
    assert!(
        said.contains("maximum") || said.contains("authorization violation") || said.contains("broken pipe") || said.contains("connection reset"),
        "{refused}"
    );
    // The share full before another actor asks: a connection the server
    // accepted can be closed just after (CI once let the other actor in
    // here), so the held ones still connected are counted, and topped up
    // to the limit while the server lets them.
    let connected = |held: &[async_nats::Client]| held.iter().filter(|c| c.connection_state() == async_nats::connection::State::Connected).count();
    for _ in 0..100 {
        if connected(&held) >= 20 {
            break;
        }
        if let Ok((c, _)) = connect(url, Some(&greedy)).await {
            held.push(c);
        }
    }
    assert_eq!(connected(&held), 20, "the actors' share fills to its limit: {} held, first refusal {refused}", held.len());
    let another = connect(url, Some(&other)).await;
    assert!(another.is_err(), "the limit is for all actors together: {} of {} held connected", connected(&held), held.len());
    // The services still answer, and the operator still gets in.
    let r = reqwest::get(format!("{}/v1/lots/NONE/origin", up.http)).await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "the gateway asks the projection and answers");
    let operator = up.service("operator").await;
    let answer = operator.request(subjects::QUERY_DIGEST, "{}".into()).await.expect("the operator asks");
    assert!(!answer.payload.is_empty());
    // And the held connections still work: the ledger receipts.
    let mined = event(&greedy, "share-g1", "mined", json!({"lot": "SHARE1", "carats": "1.00", "country": "BW"}));
    assert!(matches!(submit(&held[0], &greedy, &mined).await, Outcome::Receipt(_)));
    // Once they are closed, others get in.
    drop(held);
    let (o, _, _) = connect_when_allowed(url, &other).await;
    let mined = event(&other, "share-o1", "mined", json!({"lot": "SHARE2", "carats": "1.00", "country": "CA"}));
    assert!(matches!(submit(&o, &other, &mined).await, Outcome::Receipt(_)));
}
