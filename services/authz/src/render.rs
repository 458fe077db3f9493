//! nats-server's `authorization` block for the registry and the services.
//!
//! | who | may publish | may subscribe |
//! |---|---|---|
//! | the ledger | everything | everything |
//! | a projection | read the committed stream | `custody.query.>` (answers) |
//! | the gateway, a regulator | queries, proofs, read the committed and checkpoints streams; a regulator also its own `custody.submit.<key>` (to flag) | its own inbox |
//! | authority, miner, trader, manufacturer | its own `custody.submit.<key>` and `custody.inbox.<key>`, a *named* consumer of its own receipts (the filter is then in the subject), queries and proofs | its own inbox |
//! | the operator (`custody up`'s demo loader) | any `custody.submit.>` and queries | its own inbox |
//!
//! Nobody but the ledger may publish on `custody.ledger.entries` or
//! `custody.ledger.checkpoints`, touch the streams' configuration or read
//! the inbox. Every user reads replies only on `_INBOX_<its key>.>`.

use custody_ledger::connect::inbox_prefix;
use custody_ledger::subjects::*;
use custody_proto::Role;

use crate::registry::Registry;

/// Public keys of the services, by kind.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub ledger: Vec<String>,
    pub projection: Vec<String>,
    pub gateway: Vec<String>,
    pub authz: Vec<String>,
    pub operator: Vec<String>,
}

/// What a user may publish and subscribe to.
struct Permissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
    responds: bool,
}

/// Creating, reading and deleting its own consumers on `stream`, and
/// direct reads: enough to follow it, not to change it.
fn read_stream(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
    ]
}

/// Questions anyone connected may ask.
fn ask() -> Vec<String> {
    vec!["$JS.API.INFO".into(), "custody.query.>".into(), HEAD_SUBJECT.into(), CHECKPOINT_SUBJECT.into(), PROOF_SUBJECT.into(), CONSISTENCY_SUBJECT.into()]
}

fn own_inbox(key: &str) -> String {
    format!("{}.>", inbox_prefix(key))
}

fn ledger() -> Permissions {
    Permissions { publish: vec![">".into()], subscribe: vec![">".into()], responds: true }
}

fn follower(key: &str) -> Permissions {
    let mut publish = vec!["$JS.API.INFO".into()];
    publish.extend(read_stream(LEDGER_STREAM));
    Permissions { publish, subscribe: vec![own_inbox(key)], responds: false }
}

fn projection(key: &str) -> Permissions {
    let mut p = follower(key);
    p.subscribe.push("custody.query.>".into());
    p.responds = true;
    p
}

fn reader(key: &str) -> Permissions {
    let mut publish = ask();
    publish.extend(read_stream(LEDGER_STREAM));
    publish.extend(read_stream(CHECKPOINTS_STREAM));
    Permissions { publish, subscribe: vec![own_inbox(key)], responds: false }
}

fn actor(key: &str, roles: &[Role]) -> Permissions {
    if roles.contains(&Role::Regulator) {
        let mut p = reader(key);
        p.publish.push(submit(key));
        return p;
    }
    let mut publish = ask();
    publish.push(submit(key));
    publish.push(inbox(key));
    publish.push(format!("$JS.API.STREAM.INFO.{RECEIPTS_STREAM}"));
    publish.push(format!("$JS.API.CONSUMER.CREATE.{RECEIPTS_STREAM}.*.{}", receipts(key)));
    publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{RECEIPTS_STREAM}.*"));
    publish.push(format!("$JS.API.CONSUMER.INFO.{RECEIPTS_STREAM}.*"));
    publish.push(format!("$JS.API.CONSUMER.DELETE.{RECEIPTS_STREAM}.*"));
    Permissions { publish, subscribe: vec![own_inbox(key)], responds: false }
}

fn operator(key: &str) -> Permissions {
    let mut publish = ask();
    publish.push(format!("{SUBMIT_PREFIX}.>"));
    Permissions { publish, subscribe: vec![own_inbox(key)], responds: false }
}

fn quoted(list: &[String]) -> String {
    list.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

fn user(out: &mut String, comment: &str, key: &str, p: Permissions) {
    out.push_str(&format!(
        "    # {comment}\n    {{ nkey: \"{key}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}{} }} }}\n",
        quoted(&p.publish),
        quoted(&p.subscribe),
        if p.responds { ", allow_responses: true" } else { "" }
    ));
}

/// A kind of service: its name, its keys, and what each key may do.
type ServiceKind<'a> = (&'a str, &'a [String], fn(&str) -> Permissions);

/// The whole file nats-server loads (`-c`): only an authorization block,
/// so listen address and JetStream stay on its command line.
pub fn render(registry: &Registry, services: &Services) -> String {
    let mut out = String::from("# Written by custody authz from the ledger's actor registry; do not edit.\nauthorization {\n  users = [\n");
    let mut seen = std::collections::BTreeSet::new();
    let kinds: [ServiceKind; 5] = [
        ("ledger", &services.ledger, |_| ledger()),
        ("projection", &services.projection, projection),
        ("authz", &services.authz, follower),
        ("gateway", &services.gateway, reader),
        ("operator", &services.operator, operator),
    ];
    for (kind, keys, permissions) in kinds {
        for k in keys {
            if seen.insert(k.clone()) {
                user(&mut out, &format!("service: {kind}"), k, permissions(k));
            }
        }
    }
    for (k, roles) in &registry.actors {
        if seen.insert(k.clone()) {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            user(&mut out, &format!("actor: {}", names.join(", ")), k, actor(k, roles));
        }
    }
    out.push_str("  ]\n}\n");
    out
}
