//! The ledger's write model: who is registered, who holds which lot, which
//! lots are spent or in transit, which certificates and event ids are used.
//! It decides whether an event keeps custody intact. Pure: no I/O, no clock;
//! it is rebuilt at start by replaying the stored entries.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use custody_proto::event::Certificate;
use custody_proto::{ActorKey, Body, Carats, Code, Country, Event, EventId, LotId, LotState, Receipt, Rejection, Role, Timestamp};

use crate::table::{Key, Table};

/// An actor's number: its place in [`Model::actors`], in the order actors
/// were registered (the genesis authority is 0). What a lot names as its
/// holder or consignee: four bytes, not the key's 56 characters of text
/// and its 32 bytes (which a saved model would decode for every lot).
type ActorNo = u32;

/// A lot's key in the model's tables: the one the lot map knows it by.
/// Fixed-size keys (this and [`id_key`]) make a saved model decode
/// without parsing or allocating per record.
fn lot_key(lot: &LotId) -> Key {
    custody_proto::lotmap::Subject::lot_key(lot.as_str()).0
}

/// An event id's key.
fn id_key(id: &EventId) -> Key {
    let mut h = blake3::Hasher::new_derive_key("custody 2026-12 ledger event id key v1");
    h.update(id.as_str().as_bytes());
    *h.finalize().as_bytes()
}

/// A registered organisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Actor {
    /// What it may do.
    roles: Vec<Role>,
    /// Where it is; `None` only for the genesis authority.
    country: Option<Country>,
    /// Withdrawn by the authority: signs nothing any more.
    revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Status {
    /// Held by `holder` in `country`, available for custody events.
    Held,
    /// Exported under this certificate, not yet imported.
    InTransit {
        certificate: String,
        consignee: ActorNo,
        #[serde(with = "code")]
        to_country: Country,
    },
    /// Spent by a split, merge or processing; never usable again.
    Consumed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lot {
    /// Its mass now (never changes: a lot is consumed, not reduced).
    #[serde(with = "hundredths")]
    carats: Carats,
    /// Rough until cut and polished.
    state: LotState,
    /// Who holds it (the exporter, while in transit).
    holder: ActorNo,
    /// Where it is held (the exporting country, while in transit).
    #[serde(with = "code")]
    country: Country,
    status: Status,
    /// The latest `occurred_at` of the events that made it or acted on it:
    /// no later event may claim to come before it.
    #[serde(with = "instant")]
    last_at: Timestamp,
}

/// What an event id is bound to: its payload digest and its entry, so the
/// same event again returns the same receipt and a different one is
/// refused. The receipt is made again when asked (its id is the key, its
/// time the entry's): one id string per event, not three.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    #[serde(with = "digest")]
    payload: blake3::Hash,
    seq: u64,
    hash: [u8; 32],
    #[serde(with = "instant")]
    recorded_at: Timestamp,
}

/// The state every custody rule is checked against. Serialized (for the
/// saved write model, [`crate::saved`]) with every map in key order, so
/// that one state has one encoding: its digest. The tables that grow with
/// history (lots, event ids) hold fixed-size records under fixed-size
/// keys, so that decoding a saved model is copying, not parsing.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "Parts")]
pub struct Model {
    /// Every actor with its key, by number.
    actors: Vec<(ActorKey, Actor)>,
    /// An actor's number by its key.
    #[serde(skip)]
    numbers: HashMap<ActorKey, ActorNo>,
    lots: Table<Lot>,
    /// KP certificate numbers used, with the lots still in transit under each.
    #[serde(serialize_with = "in_order::map", deserialize_with = "in_order::read_map")]
    certificates: HashMap<String, Vec<LotId>>,
    /// Every lot each certificate ever shipped: what a verification by
    /// certificate names, before or after the import.
    #[serde(serialize_with = "in_order::map", deserialize_with = "in_order::read_map")]
    shipped: HashMap<String, Vec<LotId>>,
    /// Verification numbers used (a node's stamp names one shipment).
    #[serde(serialize_with = "in_order::set", deserialize_with = "in_order::read_set")]
    verifications: std::collections::HashSet<String>,
    ids: Table<Seen>,
}

/// A [`Model`] as saved: the same fields, less the index of actors'
/// numbers, which is rebuilt.
#[derive(Deserialize)]
struct Parts {
    actors: Vec<(ActorKey, Actor)>,
    lots: Table<Lot>,
    #[serde(deserialize_with = "in_order::read_map")]
    certificates: HashMap<String, Vec<LotId>>,
    #[serde(deserialize_with = "in_order::read_map")]
    shipped: HashMap<String, Vec<LotId>>,
    #[serde(deserialize_with = "in_order::read_set")]
    verifications: std::collections::HashSet<String>,
    ids: Table<Seen>,
}

impl From<Parts> for Model {
    fn from(p: Parts) -> Model {
        let numbers = p.actors.iter().enumerate().map(|(n, (k, _))| (k.clone(), ActorNo::try_from(n).unwrap_or(ActorNo::MAX))).collect();
        Model { actors: p.actors, numbers, lots: p.lots, certificates: p.certificates, shipped: p.shipped, verifications: p.verifications, ids: p.ids }
    }
}

/// Hash maps and sets serialized in key order, and read back into tables
/// sized once (serde's own reading grows them step by step, moving every
/// entry at each step: most of a saved model's decoding time).
mod in_order {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Serialize, Serializer};
    use std::collections::{HashMap, HashSet};
    use std::hash::Hash;
    use std::marker::PhantomData;

    /// Entries reserved up front at most, whatever the input claims.
    const MOST: usize = 1 << 27;

    pub fn read_map<'de, D: Deserializer<'de>, K: Deserialize<'de> + Eq + Hash, V: Deserialize<'de>>(d: D) -> Result<HashMap<K, V>, D::Error> {
        struct V_<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Eq + Hash, V: Deserialize<'de>> Visitor<'de> for V_<K, V> {
            type Value = HashMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut m = HashMap::with_capacity(a.size_hint().unwrap_or(0).min(MOST));
                while let Some((k, v)) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V_(PhantomData))
    }

    pub fn read_set<'de, D: Deserializer<'de>, K: Deserialize<'de> + Eq + Hash>(d: D) -> Result<HashSet<K>, D::Error> {
        struct V_<K>(PhantomData<K>);
        impl<'de, K: Deserialize<'de> + Eq + Hash> Visitor<'de> for V_<K> {
            type Value = HashSet<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a set")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut m = HashSet::with_capacity(a.size_hint().unwrap_or(0).min(MOST));
                while let Some(k) = a.next_element()? {
                    m.insert(k);
                }
                Ok(m)
            }
        }
        d.deserialize_seq(V_(PhantomData))
    }

    pub fn map<S: Serializer, K: Serialize + Ord, V: Serialize>(m: &HashMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&K, &V)> = m.iter().collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_map(pairs)
    }

    pub fn set<S: Serializer, K: Serialize + Ord>(m: &HashSet<K>, s: S) -> Result<S::Ok, S::Error> {
        let mut keys: Vec<&K> = m.iter().collect();
        keys.sort_unstable();
        s.collect_seq(keys)
    }
}

/// An instant as seconds and nanoseconds since 1970 (what a saved model
/// reads back without parsing text).
mod instant {
    use custody_proto::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        let t = t.as_datetime();
        (t.timestamp(), t.timestamp_subsec_nanos()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
        chrono::DateTime::from_timestamp(secs, nanos).map(Timestamp::from_datetime).ok_or_else(|| serde::de::Error::custom("an instant out of range"))
    }
}

/// A mass as its hundredths of a carat.
mod hundredths {
    use custody_proto::Carats;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Carats, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(c.hundredths())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Carats, D::Error> {
        Carats::from_hundredths(u64::deserialize(d)?).ok_or_else(|| serde::de::Error::custom("a mass of zero"))
    }
}

/// A country as its two letters, read without allocating.
mod code {
    use custody_proto::Country;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Country, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Country, D::Error> {
        <&str>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A blake3 digest as its 32 bytes.
mod digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &blake3::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(h.as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<blake3::Hash, D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(d)?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
        Ok(blake3::Hash::from_bytes(array))
    }
}

/// The existing lots an event acts on (not the ones it creates), borrowed:
/// `check` and `apply` both ask, once per admitted event.
fn acted_on<'a>(certificates: &'a HashMap<String, Vec<LotId>>, shipped: &'a HashMap<String, Vec<LotId>>, event: &'a Event) -> &'a [LotId] {
    match &event.body {
        Body::Verified { certificate: Some(c), .. } => shipped.get(c).map_or(&[], Vec::as_slice),
        Body::Verified { lots: Some(l), .. } => l,
        Body::Split { lot, .. } | Body::Processed { lot, .. } | Body::Flagged { lot, .. } => std::slice::from_ref(lot),
        Body::Merged { lots, .. } | Body::Transferred { lots, .. } | Body::Exported { lots, .. } => lots,
        Body::Imported { certificate: Some(c), .. } => certificates.get(c).map_or(&[], Vec::as_slice),
        Body::Imported { lots: Some(l), .. } => l,
        _ => &[],
    }
}

fn reject(code: Code, message: impl Into<String>) -> Rejection {
    Rejection::new(code, message)
}

impl Model {
    /// A ledger with only its genesis authority.
    pub fn new(authority: ActorKey) -> Model {
        let mut m = Model::default();
        m.register(authority, Actor { roles: vec![Role::Authority], country: None, revoked: false });
        m
    }

    fn register(&mut self, key: ActorKey, actor: Actor) {
        let Ok(no) = ActorNo::try_from(self.actors.len()) else { return };
        self.numbers.insert(key.clone(), no);
        self.actors.push((key, actor));
    }

    /// A registered actor: its number and record.
    fn actor(&self, key: &ActorKey) -> Option<(ActorNo, &Actor)> {
        let no = *self.numbers.get(key)?;
        self.actors.get(no as usize).map(|(_, a)| (no, a))
    }

    /// The key of actor `no`, for messages.
    fn key_of(&self, no: ActorNo) -> &str {
        self.actors.get(no as usize).map_or("an unknown actor", |(k, _)| k.as_str())
    }

    /// Every actor's key and roles (what its quota follows).
    pub fn roles(&self) -> impl Iterator<Item = (&str, &[Role])> {
        self.actors.iter().map(|(k, a)| (k.as_str(), a.roles.as_slice()))
    }

    pub fn lot_count(&self) -> usize {
        self.lots.len()
    }

    /// Hundredths of a carat in lots not yet consumed (held or in transit):
    /// only `mined` and `declared` may raise it.
    pub fn live_hundredths(&self) -> u64 {
        self.lots.values().filter(|l| l.status != Status::Consumed).map(|l| l.carats.hundredths()).sum()
    }

    /// If this event id was seen: its receipt when the payload (by its
    /// blake3 `digest`) is the same, `id_conflict` when it differs. `None`
    /// for a new id.
    pub fn replay(&self, id: &EventId, digest: &blake3::Hash) -> Option<Result<Receipt, Rejection>> {
        let seen = self.ids.get(&id_key(id))?;
        if seen.payload == *digest {
            let hash = custody_proto::Hash(seen.hash);
            Some(Ok(Receipt { id: id.to_string(), seq: seen.seq, hash, recorded_at: seen.recorded_at.to_rfc3339() }))
        } else {
            Some(Err(reject(Code::IdConflict, format!("event id {id} was already used for a different event (seq {})", seen.seq))))
        }
    }

    /// Binds an id to its entry once the entry is built.
    pub fn remember(&mut self, id: EventId, digest: blake3::Hash, entry: &custody_proto::Entry) {
        self.ids.insert(id_key(&id), Seen { payload: digest, seq: entry.seq, hash: entry.hash.0, recorded_at: entry.recorded_at });
    }

    /// The keys of what `event` acts on in the lot map
    /// ([`custody_proto::lotmap`]); asked before the event is applied, so
    /// that an import by certificate names the lots its export shipped.
    pub fn subjects(&self, event: &Event) -> Vec<custody_proto::Hash> {
        custody_proto::lotmap::subjects(event, |c| custody_proto::lotmap::shipped_lots(&self.shipped, c))
            .iter()
            .map(custody_proto::lotmap::Subject::key)
            .collect()
    }

    /// Checks every custody rule for `event`, signed by `event.actor`.
    pub fn check(&self, event: &Event) -> Result<(), Rejection> {
        let signer = &event.actor;
        let (me, actor) = self.actor(signer).ok_or_else(|| reject(Code::UnknownActor, format!("{signer} is not a registered actor")))?;
        if actor.revoked {
            return Err(reject(Code::ActorRevoked, format!("{signer} was revoked by the authority and may sign nothing")));
        }
        if !event.body.allowed_roles().iter().any(|r| actor.roles.contains(r)) {
            return Err(reject(
                Code::RoleNotAllowed,
                format!("{} needs one of the roles {:?}; {signer} has {:?}", event.body.kind(), event.body.allowed_roles(), actor.roles),
            ));
        }
        match &event.body {
            Body::ActorRegistered { subject, .. } => {
                if self.numbers.contains_key(subject) {
                    return Err(reject(Code::ActorExists, format!("{subject} is already registered")));
                }
            }
            Body::ActorRevoked { subject, .. } => match self.actor(subject).map(|(_, a)| a) {
                None => return Err(reject(Code::UnknownActor, format!("{subject} is not a registered actor"))),
                Some(a) if a.revoked => return Err(reject(Code::ActorRevoked, format!("{subject} is already revoked"))),
                Some(a) if a.country.is_none() => {
                    return Err(reject(Code::RoleNotAllowed, "the genesis authority cannot be revoked: it is the ledger's root of trust"))
                }
                Some(_) => {}
            },
            Body::Mined { lot, country, .. } => {
                if actor.country != Some(*country) {
                    return Err(reject(Code::WrongCountry, format!("a miner mines in its own country ({}), not {country}", show(actor.country))));
                }
                self.fresh(lot)?;
            }
            Body::Declared { lot, .. } => self.fresh(lot).map(|_| ())?,
            Body::Split { lot, into } => {
                let input = self.held(lot, me)?;
                self.fresh_all(into.iter().map(|p| &p.lot))?;
                let out = sum(into.iter().map(|p| &p.carats))?;
                if out != input.carats.hundredths() {
                    return Err(reject(
                        Code::CaratsMismatch,
                        format!("split of {lot} ({} ct) into {} ct: outputs must sum to the input exactly", input.carats, hundredths(out)),
                    ));
                }
            }
            Body::Merged { lots, into } => {
                let inputs = self.held_all(lots, me)?;
                same(&inputs, |l| l.state, Code::StateMismatch, "a merge takes lots of one state (all rough or all polished)")?;
                same(&inputs, |l| l.country, Code::WrongCountry, "a merge takes lots held in one country")?;
                self.fresh(&into.lot)?;
                let total = sum(inputs.iter().map(|l| &l.carats))?;
                if total != into.carats.hundredths() {
                    return Err(reject(
                        Code::CaratsMismatch,
                        format!("merge of {} ct into {} ct: the output must equal the inputs' sum exactly", hundredths(total), into.carats),
                    ));
                }
            }
            Body::Transferred { lots, to } => {
                let inputs = self.held_all(lots, me)?;
                let receiver = self.custodian(to)?;
                let here = inputs[0].country;
                same(&inputs, |l| l.country, Code::WrongCountry, "a transfer moves lots held in one country")?;
                if receiver.country != Some(here) {
                    return Err(reject(Code::WrongCountry, format!("transferred stays inside {here}; {to} is in {}: use exported", show(receiver.country))));
                }
            }
            Body::Exported { lots, to, to_country, certificate } => self.check_export(me, lots, to, *to_country, certificate)?,
            Body::Imported { certificate, lots } => {
                let named: Vec<LotId> = match (certificate, lots) {
                    (Some(c), _) => self
                        .certificates
                        .get(c)
                        .filter(|l| !l.is_empty())
                        .cloned()
                        .ok_or_else(|| reject(Code::UnknownCertificate, format!("no shipment is in transit under certificate {c}")))?,
                    (None, Some(l)) => l.clone(),
                    (None, None) => return Err(reject(Code::InvalidField, "imported names a certificate or lots")),
                };
                for l in &named {
                    let lot = self.known(l)?;
                    match &lot.status {
                        Status::InTransit { consignee, .. } if *consignee == me => {}
                        Status::InTransit { consignee, .. } => {
                            return Err(reject(Code::NotConsignee, format!("{l} is consigned to {}, not {signer}", self.key_of(*consignee))))
                        }
                        Status::Consumed => return Err(reject(Code::LotConsumed, format!("{l} is consumed"))),
                        Status::Held => return Err(reject(Code::NotConsignee, format!("{l} is not in transit; there is nothing to import"))),
                    }
                }
            }
            Body::Processed { lot, country, into, .. } => {
                let input = self.held(lot, me)?;
                if input.country != *country {
                    return Err(reject(Code::WrongCountry, format!("{lot} is held in {}; processing in {country} is not where it is", input.country)));
                }
                self.fresh_all(into.iter().map(|p| &p.lot))?;
                let out = sum(into.iter().map(|p| &p.carats))?;
                if out > input.carats.hundredths() {
                    return Err(reject(
                        Code::CaratsCreated,
                        format!("processing {lot} ({} ct) cannot yield {} ct: outputs weigh at most the input", input.carats, hundredths(out)),
                    ));
                }
            }
            Body::Flagged { lot, .. } => self.known(lot).map(|_| ())?,
            Body::Verified { certificate, verification, .. } => {
                if self.verifications.contains(verification) {
                    return Err(reject(Code::VerificationReused, format!("verification number {verification} was already used")));
                }
                if let Some(c) = certificate {
                    if !self.shipped.contains_key(c) {
                        return Err(reject(Code::UnknownCertificate, format!("no shipment was exported under certificate {c}")));
                    }
                }
                // What a node inspects exists now: not a lot consumed into
                // others; and it is someone else's: not held by the node,
                // nor on its way to it.
                for l in acted_on(&self.certificates, &self.shipped, event) {
                    let lot = self.known(l)?;
                    if lot.status == Status::Consumed {
                        return Err(reject(Code::LotConsumed, format!("lot {l} is consumed; inspect what it became")));
                    }
                    let own = match &lot.status {
                        Status::InTransit { consignee, .. } => *consignee == me || lot.holder == me,
                        _ => lot.holder == me,
                    };
                    if own {
                        return Err(reject(
                            Code::SelfVerification,
                            format!("lot {l} is {signer}'s own (held by it, or shipped to it): a verification node verifies others' goods"),
                        ));
                    }
                }
            }
        }
        // A lot cannot be exported before it was mined, imported, merged or
        // split: a date before the lot's latest event is a claim the ledger
        // can see is false (and backdating a departure is how a Russian lot
        // would pass for grandfathered).
        for l in acted_on(&self.certificates, &self.shipped, event) {
            if let Some(lot) = self.lots.get(&lot_key(l)) {
                if event.occurred_at < lot.last_at {
                    return Err(reject(
                        Code::PredatesLot,
                        format!(
                            "occurred_at {} is before {}, the date of lot {l}'s latest event; an event cannot precede what it acts on",
                            event.occurred_at, lot.last_at
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_export(&self, me: ActorNo, lots: &[LotId], to: &ActorKey, to_country: Country, cert: &Certificate) -> Result<(), Rejection> {
        let inputs = self.held_all(lots, me)?;
        same(&inputs, |l| l.country, Code::WrongCountry, "an export ships lots held in one country")?;
        let from = inputs[0].country;
        let receiver = self.custodian(to)?;
        if receiver.country != Some(to_country) {
            return Err(reject(Code::WrongCountry, format!("{to} is in {}, not {to_country}", show(receiver.country))));
        }
        if to_country == from {
            return Err(reject(Code::WrongCountry, format!("an export leaves {from}; inside one country it is transferred")));
        }
        if self.certificates.contains_key(&cert.number) {
            return Err(reject(Code::CertificateReused, format!("certificate {} was already used", cert.number)));
        }
        let rough = inputs.iter().any(|l| l.state == LotState::Rough);
        if rough && !cert.number.starts_with(&format!("{from}-")) {
            return Err(reject(Code::CertificateCountry, format!("rough leaving {from} needs a KP certificate numbered {from}-...; got {}", cert.number)));
        }
        Ok(())
    }

    /// Applies an event that passed [`Model::check`].
    pub fn apply(&mut self, event: &Event) {
        let Some((signer, actor)) = self.actor(&event.actor) else { return };
        let here = actor.country;
        let at = event.occurred_at;
        for l in acted_on(&self.certificates, &self.shipped, event) {
            if let Some(lot) = self.lots.get_mut(&lot_key(l)) {
                lot.last_at = lot.last_at.max(at);
            }
        }
        match &event.body {
            Body::ActorRegistered { subject, roles, country, .. } => {
                self.register(subject.clone(), Actor { roles: roles.clone(), country: Some(*country), revoked: false });
            }
            Body::ActorRevoked { subject, .. } => {
                if let Some(no) = self.numbers.get(subject) {
                    if let Some((_, a)) = self.actors.get_mut(*no as usize) {
                        a.revoked = true;
                    }
                }
            }
            Body::Mined { lot, carats, country, .. } => self.create(lot, *carats, LotState::Rough, signer, *country, at),
            // The claimed origin matters to projections only.
            Body::Declared { lot, carats, state, .. } => {
                if let Some(country) = here {
                    self.create(lot, *carats, *state, signer, country, at);
                }
            }
            Body::Split { lot, into } | Body::Processed { lot, into, .. } => {
                let Some((state, country)) = self.consume(lot) else { return };
                let state = match &event.body {
                    Body::Processed { process, .. } if state == LotState::Rough => process.output_state(),
                    _ => state,
                };
                for p in into {
                    self.create(&p.lot, p.carats, state, signer, country, at);
                }
            }
            Body::Merged { lots, into } => {
                let mut first = None;
                for l in lots {
                    first = first.or(self.consume(l));
                }
                if let Some((state, country)) = first {
                    self.create(&into.lot, into.carats, state, signer, country, at);
                }
            }
            Body::Transferred { lots, to } => {
                let Some((to, _)) = self.actor(to) else { return };
                for l in lots {
                    if let Some(lot) = self.lots.get_mut(&lot_key(l)) {
                        lot.holder = to;
                    }
                }
            }
            Body::Exported { lots, to, to_country, certificate } => {
                let Some((to, _)) = self.actor(to) else { return };
                for l in lots {
                    if let Some(lot) = self.lots.get_mut(&lot_key(l)) {
                        lot.status = Status::InTransit { certificate: certificate.number.clone(), consignee: to, to_country: *to_country };
                    }
                }
                self.certificates.insert(certificate.number.clone(), lots.clone());
                self.shipped.insert(certificate.number.clone(), lots.clone());
            }
            Body::Imported { certificate, lots } => {
                let named = match (certificate, lots) {
                    (Some(c), _) => self.certificates.get(c).cloned().unwrap_or_default(),
                    (None, Some(l)) => l.clone(),
                    (None, None) => Vec::new(),
                };
                for l in &named {
                    let Some(lot) = self.lots.get_mut(&lot_key(l)) else { continue };
                    if let Status::InTransit { certificate, consignee, to_country } = lot.status.clone() {
                        lot.holder = consignee;
                        lot.country = to_country;
                        lot.status = Status::Held;
                        if let Some(pending) = self.certificates.get_mut(&certificate) {
                            pending.retain(|p| p != l);
                        }
                    }
                }
            }
            Body::Flagged { .. } => {}
            Body::Verified { verification, .. } => {
                self.verifications.insert(verification.clone());
            }
        }
    }

    fn create(&mut self, lot: &LotId, carats: Carats, state: LotState, holder: ActorNo, country: Country, at: Timestamp) {
        self.lots.insert(lot_key(lot), Lot { carats, state, holder, country, status: Status::Held, last_at: at });
    }

    fn consume(&mut self, lot: &LotId) -> Option<(LotState, Country)> {
        let l = self.lots.get_mut(&lot_key(lot))?;
        l.status = Status::Consumed;
        Some((l.state, l.country))
    }

    fn known(&self, lot: &LotId) -> Result<&Lot, Rejection> {
        self.lots.get(&lot_key(lot)).ok_or_else(|| reject(Code::UnknownLot, format!("lot {lot} is not in the ledger")))
    }

    /// A lot the signer (actor `me`) holds and may act on now.
    fn held(&self, lot: &LotId, me: ActorNo) -> Result<&Lot, Rejection> {
        let l = self.known(lot)?;
        match l.status {
            Status::Consumed => Err(reject(Code::LotConsumed, format!("lot {lot} is consumed; its carats live on in its outputs"))),
            Status::InTransit { .. } => Err(reject(Code::LotInTransit, format!("lot {lot} is in transit; the consignee must import it first"))),
            Status::Held if l.holder != me => Err(reject(Code::NotHolder, format!("lot {lot} is held by {}, not {}", self.key_of(l.holder), self.key_of(me)))),
            Status::Held => Ok(l),
        }
    }

    fn held_all(&self, lots: &[LotId], me: ActorNo) -> Result<Vec<&Lot>, Rejection> {
        lots.iter().map(|l| self.held(l, me)).collect()
    }

    fn fresh(&self, lot: &LotId) -> Result<(), Rejection> {
        if self.lots.contains_key(&lot_key(lot)) {
            return Err(reject(Code::LotExists, format!("lot id {lot} already exists; lot ids are unique forever")));
        }
        Ok(())
    }

    fn fresh_all<'a>(&self, lots: impl Iterator<Item = &'a LotId>) -> Result<(), Rejection> {
        let mut lots = lots;
        lots.try_for_each(|l| self.fresh(l))
    }

    /// A registered actor who can hold lots.
    fn custodian(&self, key: &ActorKey) -> Result<&Actor, Rejection> {
        let (_, a) = self.actor(key).ok_or_else(|| reject(Code::UnknownActor, format!("receiver {key} is not a registered actor")))?;
        if !a.roles.iter().any(|r| matches!(r, Role::Miner | Role::Trader | Role::Manufacturer)) {
            return Err(reject(Code::RoleNotAllowed, format!("receiver {key} has no role that may hold lots")));
        }
        Ok(a)
    }
}

fn same<T: PartialEq>(lots: &[&Lot], f: impl Fn(&Lot) -> T, code: Code, message: &str) -> Result<(), Rejection> {
    match lots.split_first() {
        Some((first, rest)) if rest.iter().any(|l| f(l) != f(first)) => Err(reject(code, message)),
        _ => Ok(()),
    }
}

fn sum<'a>(c: impl IntoIterator<Item = &'a Carats>) -> Result<u64, Rejection> {
    Carats::sum(c).ok_or_else(|| reject(Code::InvalidCarats, "carats overflow"))
}

fn hundredths(h: u64) -> String {
    custody_proto::units::show_hundredths(h)
}

fn show(c: Option<Country>) -> String {
    c.map_or_else(|| "no country".to_owned(), |c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A world every case starts from: who is registered, which lots exist.
    struct World {
        model: Model,
        authority: String,
        keys: HashMap<&'static str, String>,
        n: u64,
    }

    impl World {
        fn event(&mut self, who: &str, kind: &str, fields: Value) -> Event {
            self.n += 1;
            let actor = if who == "authority" { self.authority.clone() } else { self.keys[who].clone() };
            let mut v = json!({"id": format!("e{}", self.n), "kind": kind, "actor": actor, "occurred_at": "2024-09-10T00:00:00Z"});
            v.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            Event::decode(v.to_string().as_bytes()).unwrap_or_else(|r| panic!("{v}: {r}"))
        }

        /// Checks and applies; the setup must be valid.
        fn ok(&mut self, who: &str, kind: &str, fields: Value) {
            let e = self.event(who, kind, fields);
            self.model.check(&e).unwrap_or_else(|r| panic!("setup {kind}: {r}"));
            self.model.apply(&e);
        }

        fn key(&self, who: &str) -> String {
            self.keys[who].clone()
        }
    }

    fn world() -> World {
        let authority = nkeys::KeyPair::new_user().public_key();
        let mut w = World { model: Model::new(authority.parse().unwrap()), authority, keys: HashMap::new(), n: 0 };
        let parties = [
            ("m_ru", "miner", "RU"),
            ("m_bw", "miner", "BW"),
            ("t_ae", "trader", "AE"),
            ("t_ae2", "trader", "AE"),
            ("c_in", "manufacturer", "IN"),
            ("reg", "regulator", "BE"),
            ("gone", "trader", "AE"),
        ];
        for (name, role, country) in parties {
            let k = nkeys::KeyPair::new_user().public_key();
            w.keys.insert(name, k.clone());
            w.ok("authority", "actor.registered", json!({"subject": k, "name": name, "roles": [role], "country": country}));
        }
        let gone = w.key("gone");
        w.ok("authority", "actor.revoked", json!({"subject": gone, "reason": "licence withdrawn"}));
        w.ok("m_ru", "mined", json!({"lot": "R1", "carats": "100.00", "country": "RU"}));
        w.ok("m_bw", "mined", json!({"lot": "B1", "carats": "50.00", "country": "BW"}));
        w.ok("m_bw", "mined", json!({"lot": "B2", "carats": "30.00", "country": "BW"}));
        w.ok("m_bw", "split", json!({"lot": "B2", "into": [{"lot": "B3", "carats": "10.00"}, {"lot": "B4", "carats": "20.00"}]}));
        // R1 shipped to t_ae, not yet imported.
        let t_ae = w.key("t_ae");
        w.ok("m_ru", "exported", json!({"lots": ["R1"], "to": t_ae, "to_country": "AE", "certificate": {"number": "RU-1", "value_usd": "1.00"}}));
        // B1 shipped to t_ae and imported; then polished stock declared there.
        w.ok("m_bw", "exported", json!({"lots": ["B1"], "to": t_ae, "to_country": "AE", "certificate": {"number": "BW-1", "value_usd": "1.00"}}));
        w.ok("t_ae", "imported", json!({"certificate": "BW-1"}));
        w.ok("t_ae", "declared", json!({"lot": "P1", "carats": "5.00", "state": "polished", "origin": "unknown"}));
        w
    }

    /// Every custody rule, one case each: (what, who, kind, fields, code).
    #[test]
    fn every_rule_refuses_with_its_code_and_changes_nothing() {
        let base = world();
        let k = |who: &str| base.key(who);
        let cert = |n: &str| json!({"number": n, "value_usd": "1.00"});
        let stranger = nkeys::KeyPair::new_user().public_key();
        let cases: Vec<(&str, &str, &str, Value, Code)> = vec![
            ("an unregistered signer", "stranger", "mined", json!({"lot": "X", "carats": "1.00", "country": "RU"}), Code::UnknownActor),
            ("a revoked signer", "gone", "declared", json!({"lot": "X", "carats": "1.00", "state": "rough", "origin": "unknown"}), Code::ActorRevoked),
            ("a kind the role may not sign", "t_ae", "mined", json!({"lot": "X", "carats": "1.00", "country": "AE"}), Code::RoleNotAllowed),
            ("a regulator mining", "reg", "mined", json!({"lot": "X", "carats": "1.00", "country": "BE"}), Code::RoleNotAllowed),
            (
                "registering twice",
                "authority",
                "actor.registered",
                json!({"subject": k("m_ru"), "name": "x", "roles": ["miner"], "country": "RU"}),
                Code::ActorExists,
            ),
            ("revoking the unknown", "authority", "actor.revoked", json!({"subject": stranger, "reason": "x"}), Code::UnknownActor),
            ("revoking twice", "authority", "actor.revoked", json!({"subject": k("gone"), "reason": "x"}), Code::ActorRevoked),
            ("revoking the genesis authority", "authority", "actor.revoked", json!({"subject": base.authority, "reason": "x"}), Code::RoleNotAllowed),
            ("mining abroad", "m_ru", "mined", json!({"lot": "X", "carats": "1.00", "country": "BW"}), Code::WrongCountry),
            ("a lot id again", "m_bw", "mined", json!({"lot": "B1", "carats": "1.00", "country": "BW"}), Code::LotExists),
            ("declaring an existing id", "t_ae", "declared", json!({"lot": "R1", "carats": "1.00", "state": "rough", "origin": "unknown"}), Code::LotExists),
            (
                "splitting a consumed lot",
                "m_bw",
                "split",
                json!({"lot": "B2", "into": [{"lot": "X1", "carats": "15.00"}, {"lot": "X2", "carats": "15.00"}]}),
                Code::LotConsumed,
            ),
            (
                "splitting a lot in transit",
                "m_ru",
                "split",
                json!({"lot": "R1", "into": [{"lot": "X1", "carats": "50.00"}, {"lot": "X2", "carats": "50.00"}]}),
                Code::LotInTransit,
            ),
            (
                "splitting another's lot",
                "m_ru",
                "split",
                json!({"lot": "B3", "into": [{"lot": "X1", "carats": "5.00"}, {"lot": "X2", "carats": "5.00"}]}),
                Code::NotHolder,
            ),
            (
                "splitting an unknown lot",
                "m_bw",
                "split",
                json!({"lot": "NOPE", "into": [{"lot": "X1", "carats": "5.00"}, {"lot": "X2", "carats": "5.00"}]}),
                Code::UnknownLot,
            ),
            (
                "a split that creates carats",
                "m_bw",
                "split",
                json!({"lot": "B3", "into": [{"lot": "X1", "carats": "6.00"}, {"lot": "X2", "carats": "5.00"}]}),
                Code::CaratsMismatch,
            ),
            (
                "a split that loses carats",
                "m_bw",
                "split",
                json!({"lot": "B3", "into": [{"lot": "X1", "carats": "4.00"}, {"lot": "X2", "carats": "5.00"}]}),
                Code::CaratsMismatch,
            ),
            (
                "a split into an existing id",
                "m_bw",
                "split",
                json!({"lot": "B3", "into": [{"lot": "B4", "carats": "5.00"}, {"lot": "X2", "carats": "5.00"}]}),
                Code::LotExists,
            ),
            ("a merge whose sum is off", "m_bw", "merged", json!({"lots": ["B3", "B4"], "into": {"lot": "X", "carats": "31.00"}}), Code::CaratsMismatch),
            ("a merge of rough and polished", "t_ae", "merged", json!({"lots": ["B1", "P1"], "into": {"lot": "X", "carats": "55.00"}}), Code::StateMismatch),
            ("a transfer abroad", "m_bw", "transferred", json!({"lots": ["B3"], "to": k("t_ae")}), Code::WrongCountry),
            ("a transfer to a regulator", "t_ae", "transferred", json!({"lots": ["B1"], "to": k("reg")}), Code::RoleNotAllowed),
            (
                "an export to a receiver elsewhere",
                "m_bw",
                "exported",
                json!({"lots": ["B3"], "to": k("c_in"), "to_country": "AE", "certificate": cert("BW-2")}),
                Code::WrongCountry,
            ),
            (
                "an export within one country",
                "t_ae",
                "exported",
                json!({"lots": ["B1"], "to": k("t_ae2"), "to_country": "AE", "certificate": cert("AE-2")}),
                Code::WrongCountry,
            ),
            (
                "a certificate used twice",
                "m_bw",
                "exported",
                json!({"lots": ["B3"], "to": k("t_ae"), "to_country": "AE", "certificate": cert("BW-1")}),
                Code::CertificateReused,
            ),
            (
                "rough under another country's certificate",
                "m_bw",
                "exported",
                json!({"lots": ["B3"], "to": k("t_ae"), "to_country": "AE", "certificate": cert("ZA-9")}),
                Code::CertificateCountry,
            ),
            ("importing an unknown certificate", "t_ae", "imported", json!({"certificate": "RU-404"}), Code::UnknownCertificate),
            ("importing another's consignment", "t_ae2", "imported", json!({"certificate": "RU-1"}), Code::NotConsignee),
            ("importing a lot not in transit", "t_ae", "imported", json!({"lots": ["B1"]}), Code::NotConsignee),
            (
                "a trader processing",
                "t_ae",
                "processed",
                json!({"lot": "B1", "process": "sawing", "country": "IN", "into": [{"lot": "X", "carats": "1.00"}]}),
                Code::RoleNotAllowed,
            ),
            ("flagging an unknown lot", "reg", "flagged", json!({"lot": "NOPE", "reason": "x"}), Code::UnknownLot),
            (
                "an event before the lot's latest",
                "m_bw",
                "split",
                json!({"lot": "B3", "occurred_at": "2024-01-01T00:00:00Z", "into": [{"lot": "X1", "carats": "5.00"}, {"lot": "X2", "carats": "5.00"}]}),
                Code::PredatesLot,
            ),
        ];
        for (what, who, kind, fields, code) in cases {
            let mut w = World { model: base.model.clone(), authority: base.authority.clone(), keys: base.keys.clone(), n: 1000 };
            w.keys.insert("stranger", stranger.clone());
            let e = w.event(who, kind, fields);
            let before = (w.model.lot_count(), w.model.live_hundredths());
            let got = w.model.check(&e).unwrap_err_or_ok();
            assert_eq!(got, Some(code), "{what}");
            assert_eq!((w.model.lot_count(), w.model.live_hundredths()), before, "{what}: a refusal changes nothing");
        }
    }

    #[test]
    fn processing_rules() {
        let mut w = world();
        let c_in = w.key("c_in");
        w.ok("m_bw", "exported", json!({"lots": ["B3"], "to": c_in, "to_country": "IN", "certificate": {"number": "BW-3", "value_usd": "1.00"}}));
        w.ok("c_in", "imported", json!({"certificate": "BW-3"}));
        let cases: Vec<(&str, Value, Option<Code>)> = vec![
            (
                "yield above the input",
                json!({"lot": "B3", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "S1", "carats": "10.01"}]}),
                Some(Code::CaratsCreated),
            ),
            (
                "processing elsewhere than the lot",
                json!({"lot": "B3", "process": "sawing", "country": "BW", "into": [{"lot": "S1", "carats": "1.00"}]}),
                Some(Code::WrongCountry),
            ),
            ("a plausible cut", json!({"lot": "B3", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "S1", "carats": "4.20"}]}), None),
        ];
        for (what, fields, code) in cases {
            let e = w.event("c_in", "processed", fields);
            assert_eq!(w.model.check(&e).unwrap_err_or_ok(), code, "{what}");
        }
    }

    trait ErrOrOk {
        fn unwrap_err_or_ok(self) -> Option<Code>;
    }

    impl ErrOrOk for Result<(), Rejection> {
        fn unwrap_err_or_ok(self) -> Option<Code> {
            self.err().map(|r| r.code)
        }
    }
}
