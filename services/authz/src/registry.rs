//! The actor registry as the ledger recorded it: registered, not revoked,
//! with roles. Applying an entry the ledger accepted cannot fail; an entry
//! that does not parse is not an actor event and changes nothing.

use std::collections::BTreeMap;

use custody_proto::{Body, Entry, Event, Opened, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The genesis authority (given to the ledger at start).
    pub genesis: String,
    /// Actors that may connect, with their roles.
    pub actors: BTreeMap<String, Vec<Role>>,
}

impl Registry {
    pub fn new(genesis: &str) -> Registry {
        Registry { genesis: genesis.to_owned(), actors: BTreeMap::from([(genesis.to_owned(), vec![Role::Authority])]) }
    }

    /// Applies one committed entry; true if who may connect changed.
    pub fn apply(&mut self, entry: &Entry) -> bool {
        let Ok(payload) = Opened::payload_of(&entry.envelope) else { return false };
        let Ok(event) = Event::decode(&payload) else { return false };
        match event.body {
            Body::ActorRegistered { subject, roles, .. } => {
                self.actors.insert(subject.to_string(), roles);
                true
            }
            Body::ActorRevoked { subject, .. } if subject.as_str() != self.genesis => self.actors.remove(subject.as_str()).is_some(),
            _ => false,
        }
    }
}
