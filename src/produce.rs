//! Events from plain fields, for people and spreadsheets rather than
//! programmers: `custody event <kind> --field value` and `custody import`
//! give each field as text, and this shapes it into DOMAIN.md's payload
//! (lists, `{lot, carats}` portions, nested objects) and checks it with
//! the ledger's own stateless rules (`Event::parse`), so what is refused
//! here is refused with the code the ledger would give.
//!
//! A field's text: a list is items separated by `;` (`lots = "A; B"`); a
//! portion `LOT:CARATS` (`into = "S1:1.02; S2:0.98"`); a declared origin
//! `unknown` or `COUNTRY:SHARE; ...`; a nested field by a dotted name
//! (`certificate.number`). An empty value leaves an optional field out.

use std::collections::BTreeMap;

use custody_proto::{Body, Code, Event, Timestamp};
use serde_json::{json, Map, Value};

/// How a field's text becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text,
    /// `a; b; c`
    List,
    /// `LOT:CARATS; LOT:CARATS`
    Portions,
    /// `LOT:CARATS`
    Portion,
    /// `unknown` or `RU:0.6; BW:0.4`
    Origin,
}

/// One field of a kind: its name (dotted for a nested one), shape, whether
/// it is required, and what it is, for `--help`.
pub struct Field {
    pub name: &'static str,
    pub shape: Shape,
    pub required: bool,
    pub help: &'static str,
}

const fn f(name: &'static str, shape: Shape, required: bool, help: &'static str) -> Field {
    Field { name, shape, required, help }
}

use Shape::{List, Origin, Portion, Portions, Text};

/// Every kind an actor submits, with its fields (DOMAIN.md, "Submission
/// format"); `evidence` is common to all and not listed.
pub const KINDS: &[(&str, &str, &[Field])] = &[
    (
        "mined",
        "A new rough lot from the miner's own mine.",
        &[
            f("lot", Text, true, "the new lot's id (unique forever)"),
            f("carats", Text, true, "its weight in carats, e.g. 12.34"),
            f("country", Text, true, "country of mining (ISO 3166 alpha-2, the miner's own)"),
            f("mine", Text, false, "the mine's name"),
        ],
    ),
    (
        "split",
        "A lot divided into new lots whose carats sum to it exactly.",
        &[f("lot", Text, true, "the lot divided"), f("into", Portions, true, "the new lots, LOT:CARATS; LOT:CARATS")],
    ),
    (
        "merged",
        "Lots of one state combined into one new lot of their total carats.",
        &[f("lots", List, true, "the lots combined, A; B; C"), f("into", Portion, true, "the new lot, LOT:CARATS")],
    ),
    (
        "transferred",
        "A domestic sale: the receiver holds the lots.",
        &[f("lots", List, true, "the lots sold, A; B"), f("to", Text, true, "the buyer's actor key (U...)")],
    ),
    (
        "exported",
        "Lots sent abroad under their export document.",
        &[
            f("lots", List, true, "the lots exported, A; B"),
            f("to", Text, true, "the consignee's actor key (U...)"),
            f("to_country", Text, true, "destination country (ISO 3166 alpha-2)"),
            f("certificate.number", Text, true, "the KP certificate (rough) or export declaration (polished), prefixed with the exporting country's code"),
            f("certificate.value_usd", Text, true, "declared value in US dollars, e.g. 125000.00"),
        ],
    ),
    (
        "imported",
        "The consignee confirms it received a shipment.",
        &[f("certificate", Text, false, "the shipment's certificate number"), f("lots", List, false, "or the lots received, A; B")],
    ),
    (
        "processed",
        "A manufacturing step on a lot; the outputs weigh at most the input.",
        &[
            f("lot", Text, true, "the lot processed"),
            f("process", Text, true, "sorting, planning, sawing, cleaving, bruting or cutting_polishing"),
            f("country", Text, true, "where it was processed (where the lot is held)"),
            f("into", Portions, true, "the resulting lots, LOT:CARATS; LOT:CARATS"),
        ],
    ),
    (
        "declared",
        "Stock held before the ledger existed; its origin is claimed, not traced.",
        &[
            f("lot", Text, true, "the lot's id"),
            f("carats", Text, true, "its weight in carats"),
            f("state", Text, true, "rough or polished"),
            f("origin", Origin, true, "unknown, or COUNTRY:SHARE; COUNTRY:SHARE"),
        ],
    ),
    ("flagged", "A regulator's note on a lot; custody is unchanged.", &[f("lot", Text, true, "the lot"), f("reason", Text, true, "why")]),
    (
        "verified",
        "A verification node weighed a shipment.",
        &[
            f("certificate", Text, false, "the shipment's certificate number"),
            f("lots", List, false, "or its lots, A; B"),
            f("carats", Text, true, "what the node weighed"),
            f("verification", Text, true, "the node's own number for it"),
            f("finding", Text, true, "conforms or does_not_conform"),
            f("reason", Text, false, "why it does not conform"),
        ],
    ),
    (
        "actor.registered",
        "The authority admits an actor.",
        &[
            f("subject", Text, true, "the actor's key (U...)"),
            f("name", Text, true, "its registered name"),
            f("roles", List, true, "miner; trader; manufacturer; ..."),
            f("country", Text, true, "its country"),
        ],
    ),
    (
        "actor.revoked",
        "The authority withdraws an actor: its key may no longer sign or connect.",
        &[f("subject", Text, true, "the actor's key (U...)"), f("reason", Text, true, "why")],
    ),
];

/// The fields of `kind`, if custody has it.
pub fn fields_of(kind: &str) -> Option<&'static [Field]> {
    KINDS.iter().find(|(k, _, _)| *k == kind).map(|(_, _, f)| *f)
}

/// What is wrong with a row or a command line's fields, before the ledger
/// sees it: `code` as the ledger would give it, or `mapping` when the
/// fields cannot make a payload at all.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    pub code: String,
    pub message: String,
}

impl Problem {
    /// A problem the ledger would refuse with `code`.
    pub fn new(code: Code, message: String) -> Problem {
        Problem { code: code.as_str().to_owned(), message }
    }
}

fn items(text: &str) -> Vec<&str> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).collect()
}

fn pair<'a>(item: &'a str, field: &str, what: &str) -> Result<(&'a str, &'a str), Problem> {
    item.rsplit_once(':')
        .map(|(a, b)| (a.trim(), b.trim()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| Problem::new(Code::MalformedEvent, format!("{field}: {item:?} is not {what}")))
}

/// `A:B; A:B` as `[{a: A, b: B}, ...]`.
fn pairs(text: &str, field: &str, (a, b): (&str, &str), what: &str) -> Result<Vec<Value>, Problem> {
    items(text).into_iter().map(|i| pair(i, field, what).map(|(x, y)| portion(a, x, b, y))).collect()
}

fn portion(a: &str, x: &str, b: &str, y: &str) -> Value {
    Value::Object(Map::from_iter([(a.to_owned(), json!(x)), (b.to_owned(), json!(y))]))
}

fn shaped(field: &Field, text: &str) -> Result<Value, Problem> {
    let name = field.name;
    Ok(match field.shape {
        Text => json!(text),
        List => json!(items(text)),
        Portion => {
            let (lot, carats) = pair(text, name, "LOT:CARATS")?;
            portion("lot", lot, "carats", carats)
        }
        Portions => Value::Array(pairs(text, name, ("lot", "carats"), "LOT:CARATS")?),
        Origin if text.trim() == "unknown" => json!("unknown"),
        Origin => Value::Array(pairs(text, name, ("country", "share"), "COUNTRY:SHARE")?),
    })
}

/// The lots an event makes, and the lots it acts on.
pub fn lots_of(event: &Event) -> (Vec<&str>, Vec<&str>) {
    fn ids(lots: &[custody_proto::LotId]) -> Vec<&str> {
        lots.iter().map(|l| l.as_str()).collect()
    }
    fn outputs(into: &[custody_proto::event::Portion]) -> Vec<&str> {
        into.iter().map(|p| p.lot.as_str()).collect()
    }
    match &event.body {
        Body::Mined { lot, .. } | Body::Declared { lot, .. } => (vec![lot.as_str()], Vec::new()),
        Body::Split { lot, into } | Body::Processed { lot, into, .. } => (outputs(into), vec![lot.as_str()]),
        Body::Merged { lots, into } => (vec![into.lot.as_str()], ids(lots)),
        Body::Flagged { lot, .. } => (Vec::new(), vec![lot.as_str()]),
        Body::Transferred { lots, .. } | Body::Exported { lots, .. } => (Vec::new(), ids(lots)),
        Body::Imported { lots, .. } | Body::Verified { lots, .. } => (Vec::new(), lots.as_deref().map(ids).unwrap_or_default()),
        Body::ActorRegistered { .. } | Body::ActorRevoked { .. } => (Vec::new(), Vec::new()),
    }
}

/// A time as the ledger takes it: RFC 3339, or a plain date (its midnight,
/// UTC), as spreadsheets write it.
pub fn occurred_at(text: &str) -> Result<String, Problem> {
    let t = text.trim();
    let full = if t.len() == 10 { format!("{t}T00:00:00Z") } else { t.to_owned() };
    full.parse::<Timestamp>()
        .map(|_| full)
        .map_err(|e| Problem::new(Code::InvalidTime, format!("occurred_at {t:?}: {e} (a date 2026-11-30 or a time 2026-11-30T14:05:00Z)")))
}

/// A default id: the kind and a hash of everything the event says, so the
/// same row or command given twice is the same event (its first receipt
/// comes back), never a second one.
pub fn default_id(kind: &str, actor: &str, occurred_at: &str, fields: &BTreeMap<String, String>) -> String {
    let mut h = blake3::Hasher::new();
    for part in [kind, actor, occurred_at] {
        h.update(part.as_bytes()).update(&[0]);
    }
    for (k, v) in fields {
        h.update(k.as_bytes()).update(&[0]).update(v.as_bytes()).update(&[0]);
    }
    format!("{kind}-{}", &h.finalize().to_hex()[..20])
}

/// The payload of one event of `kind` by `actor`, from its fields as text,
/// checked as the ledger checks a submission before it looks at any state;
/// with the event it reads as.
pub fn payload(
    kind: &str,
    actor: &str,
    id: Option<&str>,
    occurred: &str,
    fields: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<(Value, Event), Problem> {
    let Some(known) = fields_of(kind) else {
        let kinds: Vec<&str> = KINDS.iter().map(|(k, _, _)| *k).collect();
        return Err(Problem::new(Code::MalformedEvent, format!("{kind:?} is not a kind of event; the kinds are {}", kinds.join(", "))));
    };
    let occurred = occurred_at(occurred)?;
    let mut body = Map::new();
    for (name, text) in fields {
        let field = known
            .iter()
            .find(|f| f.name == name)
            .or_else(|| (name == "evidence").then_some(&Field { name: "evidence", shape: Text, required: false, help: "" }))
            .ok_or_else(|| {
                let names: Vec<&str> = known.iter().map(|f| f.name).collect();
                Problem::new(Code::MalformedEvent, format!("{kind} has no field {name:?}; its fields are {}", names.join(", ")))
            })?;
        if text.trim().is_empty() {
            continue;
        }
        let value = shaped(field, text.trim())?;
        match name.split_once('.') {
            Some((outer, inner)) => {
                let slot = body.entry(outer.to_owned()).or_insert_with(|| json!({}));
                slot[inner] = value;
            }
            None => {
                body.insert(name.clone(), value);
            }
        }
    }
    for f in known.iter().filter(|f| f.required) {
        let present = match f.name.split_once('.') {
            Some((outer, inner)) => body.get(outer).and_then(|o| o.get(inner)).is_some(),
            None => body.contains_key(f.name),
        };
        if !present {
            return Err(Problem::new(Code::MalformedEvent, format!("{kind} needs {}: {}", f.name, f.help)));
        }
    }
    let id = id.filter(|i| !i.trim().is_empty()).map_or_else(|| default_id(kind, actor, &occurred, fields), |i| i.trim().to_owned());
    let mut event = json!({"id": id, "kind": kind, "actor": actor, "occurred_at": occurred});
    if let Some(o) = event.as_object_mut() {
        o.extend(body);
    }
    let bytes = serde_json::to_vec(&event).map_err(|e| Problem::new(Code::MalformedEvent, e.to_string()))?;
    let parsed = Event::parse(&bytes, now).map_err(|r| Problem::new(r.code, r.message))?;
    Ok((event, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn now() -> Timestamp {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    fn actor() -> &'static str {
        static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        KEY.get_or_init(|| nkeys::KeyPair::new_user().public_key())
    }

    #[test]
    fn text_fields_become_the_domain_shapes() {
        let e = payload(
            "exported",
            actor(),
            None,
            "2026-11-30",
            &fields(&[("lots", "L1; L2"), ("to", actor()), ("to_country", "IN"), ("certificate.number", "BW-1"), ("certificate.value_usd", "1000.00")]),
            now(),
        )
        .unwrap()
        .0;
        assert_eq!(e["lots"], json!(["L1", "L2"]));
        assert_eq!(e["certificate"], json!({"number": "BW-1", "value_usd": "1000.00"}));
        assert_eq!(e["occurred_at"], "2026-11-30T00:00:00Z");
        let e = payload("split", actor(), Some("s-1"), "2026-11-30T10:00:00Z", &fields(&[("lot", "L1"), ("into", "A:1.00; B:0.50")]), now()).unwrap().0;
        assert_eq!(e["into"], json!([{"lot": "A", "carats": "1.00"}, {"lot": "B", "carats": "0.50"}]));
        assert_eq!(e["id"], "s-1");
        let e = payload(
            "declared",
            actor(),
            None,
            "2026-11-30",
            &fields(&[("lot", "D"), ("carats", "3.00"), ("state", "rough"), ("origin", "RU:0.25; BW:0.75")]),
            now(),
        )
        .unwrap()
        .0;
        assert_eq!(e["origin"], json!([{"country": "RU", "share": "0.25"}, {"country": "BW", "share": "0.75"}]));
    }

    #[test]
    fn an_event_names_the_lots_it_makes_and_those_it_acts_on() {
        let (_, split) = payload("split", actor(), None, "2026-11-30", &fields(&[("lot", "L1"), ("into", "A:1.00; B:0.50")]), now()).unwrap();
        assert_eq!(lots_of(&split), (vec!["A", "B"], vec!["L1"]));
        let (_, merged) = payload("merged", actor(), None, "2026-11-30", &fields(&[("lots", "A; B"), ("into", "M:1.50")]), now()).unwrap();
        assert_eq!(lots_of(&merged), (vec!["M"], vec!["A", "B"]));
        let (_, mined) = payload("mined", actor(), None, "2026-11-30", &fields(&[("lot", "L1"), ("carats", "1.00"), ("country", "BW")]), now()).unwrap();
        assert_eq!(lots_of(&mined), (vec!["L1"], Vec::<&str>::new()));
    }

    #[test]
    fn the_same_fields_make_the_same_id_and_other_fields_another() {
        let a = payload("mined", actor(), None, "2026-11-30", &fields(&[("lot", "L1"), ("carats", "1.00"), ("country", "BW")]), now()).unwrap().0;
        let b = payload("mined", actor(), None, "2026-11-30", &fields(&[("lot", "L1"), ("carats", "1.00"), ("country", "BW")]), now()).unwrap().0;
        let c = payload("mined", actor(), None, "2026-11-30", &fields(&[("lot", "L2"), ("carats", "1.00"), ("country", "BW")]), now()).unwrap().0;
        assert_eq!(a["id"], b["id"]);
        assert_ne!(a["id"], c["id"]);
    }

    #[test]
    fn what_the_ledger_would_refuse_is_refused_with_its_code() {
        let p = |k: &str, f: &[(&str, &str)], at: &str| payload(k, actor(), None, at, &fields(f), now()).unwrap_err();
        assert_eq!(p("mined", &[("lot", "L1"), ("carats", "-1"), ("country", "BW")], "2026-11-30").code, "invalid_carats");
        assert_eq!(p("mined", &[("lot", "L1"), ("carats", "1.00")], "2026-11-30").code, "malformed_event");
        assert!(p("mined", &[("lot", "L1"), ("carats", "1.00")], "2026-11-30").message.contains("needs country"));
        assert_eq!(p("mined", &[("lot", "L1"), ("carats", "1.00"), ("country", "BW")], "2027-11-30").code, "invalid_time");
        assert_eq!(p("mined", &[("lot", "L1"), ("carats", "1.00"), ("country", "BW")], "30/11/2026").code, "invalid_time");
        assert!(p("mined", &[("lot", "L1"), ("weight", "1.00")], "2026-11-30").message.contains("no field \"weight\""));
        assert!(p("split", &[("lot", "L1"), ("into", "A=1.00")], "2026-11-30").message.contains("LOT:CARATS"));
        assert!(p("mine", &[], "2026-11-30").message.contains("not a kind"));
    }
}
