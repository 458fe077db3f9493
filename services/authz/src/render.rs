//! nats-server's `accounts` block for the registry and the services.
//!
//! Three NATS accounts, so that nobody but the ledger can reach the
//! custody streams' JetStream API at all:
//!
//! | account | who | holds | reaches the others through |
//! |---|---|---|---|
//! | `CUSTODY` | the ledger only | JetStream: every custody stream | exports (below) |
//! | `SERVICES` | projections, the gateway, authz, the operator | no JetStream | imports from `CUSTODY`; exports the queries and its services' status |
//! | `ACTORS` | every registered actor | no JetStream; at most [`ActorsLimits`] connections and leaf nodes together | imports from `CUSTODY` and `SERVICES` |
//!
//! `CUSTODY` exports, as services: submission (`custody.submit.*`), the
//! durable inbox (`custody.inbox.*`), the ledger's head, checkpoint and
//! proof answers, direct get on the committed and checkpoints streams,
//! pulling from and acking the receipts consumers (one per actor, named by
//! its key, created by the ledger), asking for and pulling from a
//! follower's consumer of the committed stream (one per follower, named by
//! its key, created by the ledger), and the ledgers' status
//! (`custody.status.ledger`, many answers). As streams: the committed and
//! checkpoint subjects, which only wake followers up. A request that
//! crosses an account has its reply subject chosen by the server, so no
//! answer can be steered onto a stream's subject, and since the other
//! accounts have no JetStream, no consumer can be created, read, deleted
//! or pointed anywhere by anyone but the ledger.
//!
//! Every service import shares the asker (`share: true`): nats-server
//! itself writes, on each request that crosses accounts, which user sent
//! it, and the projection and the ledger queue expensive answers per
//! asker (`custody_wire::fair`).
//!
//! Inside each account, every user may still use only its own subjects:
//!
//! | who | may publish | may subscribe |
//! |---|---|---|
//! | the ledger | everything (in `CUSTODY`) | everything |
//! | a projection | direct get on the committed stream, asking for and pulling from its own follower's consumer | `custody.query.>` and `custody.holdings.*` (answers), the committed subject, `custody.status.projection` |
//! | authz | direct get on the committed stream, asking for and pulling from its own follower's consumer | the committed subject, `custody.status.authz` |
//! | the gateway | queries, anyone's holdings (`custody.holdings.*`), proofs, direct get on both streams, the ledgers' status (refusals by code), submissions on any actor's subject (`POST /v1/submissions`: the ledger checks each envelope's signer against its subject) | the committed and checkpoint subjects, `custody.status.gateway` |
//! | any actor | its own `custody.submit.<key>`, `custody.inbox.<key>` and `custody.holdings.<key>`, pulling from and acking its own receipts consumer, queries and proofs, its own inbox (for an edge's leaf connection) | — |
//! | a regulator | also direct get on both streams and anyone's holdings | also the committed and checkpoint subjects |
//! | the operator (`custody up`'s demo loader, `custody status`, `custody backup`) | any `custody.submit.>`, queries, anyone's holdings, `custody.status.>`, direct get on both streams | — |
//!
//! Every user reads replies only on `_INBOX_<its key>.>`.

use custody_proto::Role;
use custody_wire::connect::inbox_prefix;
use custody_wire::subjects::*;

use crate::registry::Registry;

/// The account that holds the streams and the ledger.
pub const CUSTODY_ACCOUNT: &str = "CUSTODY";
/// The account of the read-side services.
pub use custody_wire::subjects::SERVICES_ACCOUNT;
/// The account of every registered actor.
pub const ACTORS_ACCOUNT: &str = "ACTORS";

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

fn direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// Receipts consumer of an actor: the ledger names it by the actor's key.
fn receipts_next(key: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{RECEIPTS_STREAM}.{key}")
}

fn receipts_ack(key: &str) -> String {
    format!("$JS.ACK.{RECEIPTS_STREAM}.{key}.>")
}

/// Questions anyone connected may ask.
fn ask() -> Vec<String> {
    vec!["custody.query.>".into(), HEAD_SUBJECT.into(), CHECKPOINT_SUBJECT.into(), PROOF_SUBJECT.into(), CONSISTENCY_SUBJECT.into()]
}

fn own_inbox(key: &str) -> String {
    format!("{}.>", inbox_prefix(key))
}

fn ledger() -> Permissions {
    Permissions { publish: vec![">".into()], subscribe: vec![">".into()], responds: true }
}

/// Where a kind of service is asked how it is (`custody status`).
fn status(kind: &str) -> String {
    format!("{STATUS_PREFIX}.{kind}")
}

/// Follows the committed stream: by direct get, or by pulling from the
/// one consumer the ledger makes for it, named by its key.
fn follower(key: &str) -> Permissions {
    let publish = vec![direct_get(LEDGER_STREAM), FOLLOW_SUBJECT.into(), follower_next(&follower_consumer(key))];
    Permissions { publish, subscribe: vec![own_inbox(key), ENTRIES_SUBJECT.into()], responds: false }
}

fn authz(key: &str) -> Permissions {
    let mut p = follower(key);
    p.subscribe.push(status("authz"));
    p.responds = true;
    p
}

fn projection(key: &str) -> Permissions {
    let mut p = follower(key);
    p.subscribe.extend(["custody.query.>".into(), any_holdings(), status("projection")]);
    p.responds = true;
    p
}

fn gateway(key: &str) -> Permissions {
    let mut p = reader(key);
    // The ledger replicas' refusals by code, for the public statistics.
    p.publish.push(status("ledger"));
    // `POST /v1/submissions`: an envelope on its signer's subject, as the
    // signer would put it; the ledger checks the signature and who signed.
    p.publish.push(format!("{SUBMIT_PREFIX}.>"));
    p.subscribe.push(status("gateway"));
    p.responds = true;
    p
}

/// Asks, and reads both streams.
fn reader(key: &str) -> Permissions {
    let mut publish = ask();
    publish.extend([direct_get(LEDGER_STREAM), direct_get(CHECKPOINTS_STREAM), any_holdings()]);
    Permissions { publish, subscribe: vec![own_inbox(key), ENTRIES_SUBJECT.into(), CHECKPOINTS_SUBJECT.into()], responds: false }
}

/// An actor. Its own inbox is also among what it may publish: an actor's
/// key is how an edge's leaf node connects (`custody edge`), and on a leaf
/// connection nats-server checks what it delivers to the leaf, and what
/// the leaf may send, against the publish permissions; so the leaf
/// carries this actor's subjects and its replies, nothing else.
fn actor(key: &str, roles: &[Role]) -> Permissions {
    let mut p = if roles.contains(&Role::Regulator) { reader(key) } else { Permissions { publish: ask(), subscribe: vec![own_inbox(key)], responds: false } };
    p.publish.extend([submit(key), inbox(key), receipts_next(key), receipts_ack(key), own_inbox(key), holdings(key)]);
    p
}

/// Asks what any actor holds: who holds what is for regulators, the
/// gateway (which checks who asks) and the operator.
fn any_holdings() -> String {
    format!("{HOLDINGS_PREFIX}.*")
}

/// The operator: submits for the demo, asks how services are, and reads
/// both streams (`custody backup`, `custody audit`).
fn operator(key: &str) -> Permissions {
    let mut publish = ask();
    publish.extend([format!("{SUBMIT_PREFIX}.>"), format!("{STATUS_PREFIX}.>"), direct_get(LEDGER_STREAM), direct_get(CHECKPOINTS_STREAM), any_holdings()]);
    Permissions { publish, subscribe: vec![own_inbox(key)], responds: false }
}

fn quoted(list: &[String]) -> String {
    list.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

fn user(out: &mut String, comment: &str, key: &str, p: Permissions) {
    out.push_str(&format!(
        "      # {comment}\n      {{ nkey: \"{key}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}{} }} }}\n",
        quoted(&p.publish),
        quoted(&p.subscribe),
        if p.responds { ", allow_responses: true" } else { "" }
    ));
}

/// A kind of service: its name, its keys, and what each key may do.
type ServiceKind<'a> = (&'a str, &'a [String], fn(&str) -> Permissions);

/// What `CUSTODY` exports as services (requests; the server picks the
/// reply subject), with whether more than one answer may come back.
fn custody_services() -> Vec<(String, bool)> {
    vec![
        (format!("{SUBMIT_PREFIX}.*"), false),
        (format!("{INBOX_PREFIX}.*"), false),
        (HEAD_SUBJECT.to_owned(), false),
        (CHECKPOINT_SUBJECT.to_owned(), false),
        (PROOF_SUBJECT.to_owned(), false),
        (CONSISTENCY_SUBJECT.to_owned(), false),
        (direct_get(LEDGER_STREAM), true),
        (direct_get(CHECKPOINTS_STREAM), true),
        (FOLLOW_SUBJECT.to_owned(), false),
        (follower_next("*"), true),
        (format!("$JS.API.CONSUMER.MSG.NEXT.{RECEIPTS_STREAM}.*"), true),
        (format!("$JS.ACK.{RECEIPTS_STREAM}.>"), false),
        (status("ledger"), true),
    ]
}

/// What `SERVICES` exports: the queries, and how its services are.
fn services_services() -> Vec<(String, bool)> {
    vec![("custody.query.>".to_owned(), false), (any_holdings(), false), (status("projection"), true), (status("gateway"), true), (status("authz"), true)]
}

/// What `CUSTODY` exports as streams: wake-ups for followers.
fn custody_streams() -> [&'static str; 2] {
    [ENTRIES_SUBJECT, CHECKPOINTS_SUBJECT]
}

fn exports(out: &mut String, services: &[(String, bool)], streams: &[&str]) {
    out.push_str("    exports: [\n");
    for (subject, many) in services {
        out.push_str(&format!("      {{ service: \"{subject}\"{} }}\n", if *many { ", response_type: stream" } else { "" }));
    }
    for subject in streams {
        out.push_str(&format!("      {{ stream: \"{subject}\" }}\n"));
    }
    out.push_str("    ]\n");
}

fn imports(out: &mut String, from: &str, services: &[(String, bool)], streams: &[&str]) {
    for (subject, _) in services {
        // `share`: nats-server tells the answering service which user asked
        // (`Nats-Request-Info`), so expensive answers are queued per asker.
        out.push_str(&format!("      {{ service: {{ account: {from}, subject: \"{subject}\" }}, share: true }}\n"));
    }
    for subject in streams {
        out.push_str(&format!("      {{ stream: {{ account: {from}, subject: \"{subject}\" }} }}\n"));
    }
}

/// The whole file nats-server loads (`-c`): only the accounts, so listen
/// address and JetStream stay on its command line.
pub fn render(registry: &Registry, services: &Services, limits: &ActorsLimits) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut users = |out: &mut String, kinds: &[ServiceKind]| {
        for (kind, keys, permissions) in kinds {
            for k in *keys {
                if seen.insert(k.clone()) {
                    user(out, &format!("service: {kind}"), k, permissions(k));
                }
            }
        }
    };
    let mut out = String::from("# Written by custody authz from the ledger's actor registry; do not edit.\n");
    out.push_str("# Accounts: CUSTODY (the ledger, JetStream), SERVICES, ACTORS. See ARCHITECTURE.md.\naccounts {\n");

    out.push_str(&format!("  {CUSTODY_ACCOUNT} {{\n    jetstream: enabled\n    users: [\n"));
    users(&mut out, &[("ledger", &services.ledger, |_| ledger())]);
    out.push_str("    ]\n");
    exports(&mut out, &custody_services(), &custody_streams());
    out.push_str("  }\n");

    out.push_str(&format!("  {SERVICES_ACCOUNT} {{\n    users: [\n"));
    users(
        &mut out,
        &[
            ("projection", &services.projection, projection),
            ("authz", &services.authz, authz),
            ("gateway", &services.gateway, gateway),
            ("operator", &services.operator, operator),
        ],
    );
    out.push_str("    ]\n    imports: [\n");
    imports(&mut out, CUSTODY_ACCOUNT, &custody_services(), &custody_streams());
    out.push_str("    ]\n");
    exports(&mut out, &services_services(), &[]);
    out.push_str("  }\n");

    out.push_str(&format!("  {ACTORS_ACCOUNT} {{\n    users: [\n"));
    for (k, roles) in &registry.actors {
        if seen.insert(k.clone()) {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            user(&mut out, &format!("actor: {}", names.join(", ")), k, actor(k, roles));
        }
    }
    out.push_str("    ]\n    imports: [\n");
    imports(&mut out, CUSTODY_ACCOUNT, &custody_services(), &custody_streams());
    imports(&mut out, SERVICES_ACCOUNT, &services_services(), &[]);
    out.push_str(&format!("    ]\n    limits: {{ max_connections: {}, max_leafnodes: {} }}\n  }}\n}}\n", limits.max_connections, limits.max_leafnodes));
    out
}

/// What all actors together may hold of nats-server, which refuses more:
/// however many connections actors open, the ledger's, the services' and
/// the operator's (in accounts of their own) always get in. Per actor it
/// cannot be set in a config file (nats-server bounds accounts, not
/// users), and an account per actor does not work: nats-server 2.15.1
/// starts no service imports for an account a reload adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActorsLimits {
    pub max_connections: u32,
    /// Leaf nodes (edges).
    pub max_leafnodes: u32,
}

impl Default for ActorsLimits {
    fn default() -> ActorsLimits {
        ActorsLimits { max_connections: 8_192, max_leafnodes: 4_096 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permission line of `key` in the rendered file.
    fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
        text.lines().find(|l| l.contains(&format!("nkey: \"{key}\""))).unwrap_or_else(|| panic!("no user {key}"))
    }

    fn allowed(line: &str, which: &str) -> Vec<String> {
        let start = line.find(&format!("{which}: {{ allow: [")).unwrap_or_else(|| panic!("no {which} in {line}")) + which.len() + 12;
        let end = start + line[start..].find(']').unwrap();
        line[start..end].split(", ").filter(|s| !s.is_empty()).map(|s| s.trim_matches('"').to_owned()).collect()
    }

    #[test]
    fn each_party_gets_only_its_own_subjects() {
        let mut registry = Registry::new("UGENESIS");
        registry.actors.insert("UMINER".into(), vec![Role::Miner]);
        registry.actors.insert("UREG".into(), vec![Role::Regulator]);
        let services = Services {
            ledger: vec!["ULEDGER".into()],
            projection: vec!["UPROJ".into()],
            gateway: vec!["UGATE".into()],
            authz: vec!["UAUTHZ".into()],
            operator: vec!["UOP".into()],
        };
        let text = render(&registry, &services, &ActorsLimits { max_connections: 77, max_leafnodes: 5 });
        /// (user, publish must contain, publish must not contain, subscribe must contain)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let table: &[Case] = &[
            ("ULEDGER", &[">"], &[], &[">"]),
            (
                "UMINER",
                &[
                    "custody.submit.UMINER",
                    "custody.inbox.UMINER",
                    "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_RECEIPTS.UMINER",
                    "custody.query.>",
                    "_INBOX_UMINER.>",
                    "custody.holdings.UMINER",
                ],
                &[
                    "custody.submit.UREG",
                    "$JS.API.DIRECT.GET.CUSTODY_LEDGER",
                    ">",
                    "_INBOX_UREG.>",
                    "_INBOX_>",
                    "custody.status.>",
                    "custody.holdings.*",
                    "custody.holdings.UREG",
                    FOLLOW_SUBJECT,
                ],
                &["_INBOX_UMINER.>"],
            ),
            (
                "UREG",
                &["custody.submit.UREG", "$JS.API.DIRECT.GET.CUSTODY_LEDGER", "$JS.API.DIRECT.GET.CUSTODY_CHECKPOINTS", "custody.holdings.*"],
                &["custody.submit.UMINER", FOLLOW_SUBJECT, "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.follow_UPROJ"],
                &[ENTRIES_SUBJECT],
            ),
            (
                "UPROJ",
                &["$JS.API.DIRECT.GET.CUSTODY_LEDGER", FOLLOW_SUBJECT, "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.follow_UPROJ"],
                &[
                    "custody.submit.UMINER",
                    "custody.submit.>",
                    "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.*",
                    "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.follow_UAUTHZ",
                ],
                &["custody.query.>", "custody.holdings.*", ENTRIES_SUBJECT, "custody.status.projection"],
            ),
            (
                "UAUTHZ",
                &["$JS.API.DIRECT.GET.CUSTODY_LEDGER", "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.follow_UAUTHZ"],
                &["custody.query.>", "custody.submit.>", "$JS.API.CONSUMER.MSG.NEXT.CUSTODY_LEDGER.follow_UPROJ"],
                &[ENTRIES_SUBJECT],
            ),
            (
                "UGATE",
                &["custody.query.>", "custody.holdings.*", "$JS.API.DIRECT.GET.CUSTODY_LEDGER", "custody.status.ledger", "custody.submit.>"],
                &["custody.status.>", "custody.inbox.UMINER"],
                &["_INBOX_UGATE.>"],
            ),
            ("UOP", &["custody.submit.>", "custody.status.>", "$JS.API.DIRECT.GET.CUSTODY_LEDGER"], &["custody.inbox.UMINER", ">"], &["_INBOX_UOP.>"]),
            ("UGENESIS", &["custody.submit.UGENESIS"], &["custody.submit.UMINER"], &["_INBOX_UGENESIS.>"]),
        ];
        for (user, may, may_not, hears) in table {
            let line = line_of(&text, user);
            let (publish, subscribe) = (allowed(line, "publish"), allowed(line, "subscribe"));
            for s in *may {
                assert!(publish.iter().any(|p| p == s), "{user} may publish {s}: {line}");
            }
            for s in *may_not {
                assert!(!publish.iter().any(|p| p == s), "{user} may not publish {s}: {line}");
            }
            for s in *hears {
                assert!(subscribe.iter().any(|p| p == s), "{user} may subscribe to {s}: {line}");
            }
        }
        // Only the ledger's account has JetStream, and only the ledger is in it.
        let custody = &text[text.find("  CUSTODY {").unwrap()..text.find("  SERVICES {").unwrap()];
        assert!(custody.contains("jetstream: enabled") && custody.contains("ULEDGER") && !custody.contains("UPROJ"));
        assert_eq!(text.matches("jetstream").count(), 1, "{text}");
        // Every service import tells the answering service who asked.
        let imports: Vec<&str> = text.lines().filter(|l| l.contains("{ service: { account:")).collect();
        assert!(!imports.is_empty() && imports.iter().all(|l| l.contains("share: true")), "{text}");
        // What all actors together may hold is bounded.
        let actors = &text[text.find("  ACTORS {").unwrap()..];
        assert!(actors.contains("limits: { max_connections: 77, max_leafnodes: 5 }"), "{actors}");
        // A revoked actor is not in the registry, so not in the file.
        registry.actors.remove("UMINER");
        assert!(!render(&registry, &services, &ActorsLimits::default()).contains("UMINER"));
    }
}
