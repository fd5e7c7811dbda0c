//! What flow actors say to each other over the bus, in a compact binary form (changes
//! are binary; JSON would triple their size).
//!
//! **Format versions.** Every message carries its format version, so nodes of two
//! releases can run side by side during a rolling upgrade: a node reads the previous
//! version and the current one, and writes the current one unless told otherwise
//! ([`BusFormat`], a switch for the upgrade window and for tests).
//! - Version 2 (current): the magic byte `0xFE`, the version (`2`), then the version 1
//!   layout below.
//! - Version 1 (the first release): the layout below with no prefix. Its first byte is
//!   a kind (1–5), never `0xFE`, which is how a reader tells the two apart.
//! - A later version (a `0xFE` prefix with a version above 2) is not understood: the
//!   message is dropped like a lost one (the store watch repairs what it carried).
//!
//! ```text
//! byte 0      kind: 1 = changes, 2 = heads, 3 = presence (one JSON item),
//!             4 = presence request (no items), 5 = membership change (one JSON
//!             item: `{"user_id", "access"}`)
//! byte 1      L, length of the origin node id
//! 2..2+L      origin node id (so a node ignores its own echo)
//! then        u32 BE count, and per item: u32 BE length + bytes
//!             (changes: raw Automerge changes; heads: 32-byte hashes)
//! ```

/// First byte of a versioned message (version 2 and later).
const VERSIONED: u8 = 0xFE;
/// The version this release writes by default.
pub const BUS_FORMAT_VERSION: u8 = 2;

/// Which format a node writes ([`FlowBusMessage::encode_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusFormat {
    /// What the previous release wrote and reads: for the upgrade window, while
    /// nodes of that release still run, and for the mixed-version tests.
    V1,
    #[default]
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowBusMessage {
    /// Changes the origin node has made durable.
    Changes {
        origin: String,
        changes: Vec<Vec<u8>>,
    },
    /// The origin node's current heads, for anti-entropy.
    Heads { origin: String, heads: Vec<Vec<u8>> },
    /// Presence of the origin node's sessions ([`PresenceUpdate`] as JSON).
    Presence { origin: String, json: Vec<u8> },
    /// A node that just opened the flow asks the others for their full presence.
    PresenceRequest { origin: String },
    /// A `flow_members` row changed ([`MemberUpdate`] as JSON): every node applies it
    /// to its open sessions at once.
    Member { origin: String, json: Vec<u8> },
}

/// A membership change, as carried by [`FlowBusMessage::Member`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemberUpdate {
    pub user_id: String,
    /// `owner`, `editor`, `viewer`, `revoked`; `None`: the override was removed.
    pub access: Option<String>,
}

/// Presence changes of one node's local sessions. `full`: the entries are all of
/// that node's sessions in the flow (anything else of that node is gone).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PresenceUpdate {
    pub full: bool,
    pub upserts: Vec<flowhub_protocol::PresenceEntry>,
    pub left: Vec<String>,
}

impl FlowBusMessage {
    /// The message in the current format ([`BusFormat::V2`]).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(BusFormat::default())
    }

    /// The message in a given format.
    pub fn encode_as(&self, format: BusFormat) -> Vec<u8> {
        let single;
        let (kind, origin, items): (u8, &String, &[Vec<u8>]) = match self {
            FlowBusMessage::Changes { origin, changes } => (1, origin, changes),
            FlowBusMessage::Heads { origin, heads } => (2, origin, heads),
            FlowBusMessage::Presence { origin, json } => {
                single = [json.clone()];
                (3, origin, &single)
            }
            FlowBusMessage::PresenceRequest { origin } => (4, origin, &[]),
            FlowBusMessage::Member { origin, json } => {
                single = [json.clone()];
                (5, origin, &single)
            }
        };
        let origin = &origin.as_bytes()[..origin.len().min(255)];
        let size: usize = items.iter().map(|i| 4 + i.len()).sum();
        let mut out = Vec::with_capacity(4 + origin.len() + 4 + size);
        if format == BusFormat::V2 {
            out.push(VERSIONED);
            out.push(BUS_FORMAT_VERSION);
        }
        out.push(kind);
        out.push(origin.len() as u8);
        out.extend_from_slice(origin);
        out.extend_from_slice(&(items.len() as u32).to_be_bytes());
        for item in items {
            out.extend_from_slice(&(item.len() as u32).to_be_bytes());
            out.extend_from_slice(item);
        }
        out
    }

    /// Whether encoded `bytes` are a [`FlowBusMessage::Changes`], without decoding
    /// (copying) them. Such a message may be skipped by a bus that lost contact with
    /// the broker for a while: the changes are in the store, and the origin's next
    /// `Heads` makes every other node read them from there, at once, instead of
    /// replaying a backlog one message at a time.
    pub fn is_changes(bytes: &[u8]) -> bool {
        Self::body(bytes).and_then(|b| b.first()) == Some(&1)
    }

    /// The version-1 layout inside `bytes` (`None`: a version this node does not know).
    fn body(bytes: &[u8]) -> Option<&[u8]> {
        match bytes {
            [VERSIONED, BUS_FORMAT_VERSION, body @ ..] => Some(body),
            [VERSIONED, ..] => None,
            body => Some(body),
        }
    }

    /// The format version of an encoded message (1 when it has no prefix).
    pub fn version_of(bytes: &[u8]) -> Option<u8> {
        match bytes {
            [VERSIONED, version, ..] => Some(*version),
            [] => None,
            _ => Some(1),
        }
    }

    /// The origin node of encoded `bytes`, without decoding the items: a flow actor
    /// hears its own publishes back (pub/sub delivers to every subscriber) and skips
    /// them here, before they cost a wake-up, a mailbox message and a copy of the
    /// changes.
    pub fn origin_of(bytes: &[u8]) -> Option<&str> {
        let body = Self::body(bytes)?;
        let len = usize::from(*body.get(1)?);
        std::str::from_utf8(body.get(2..2 + len)?).ok()
    }

    /// `None` for anything malformed: the bus is shared infrastructure, and a message
    /// we cannot read is dropped, like any lost message (the store repairs it).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&kind, rest) = Self::body(bytes)?.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let (origin, mut rest) = rest.split_at_checked(usize::from(len))?;
        let origin = std::str::from_utf8(origin).ok()?.to_owned();
        let count = read_u32(&mut rest)? as usize;
        let mut items = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let n = read_u32(&mut rest)? as usize;
            let (item, tail) = rest.split_at_checked(n)?;
            items.push(item.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return None;
        }
        match kind {
            1 => Some(FlowBusMessage::Changes {
                origin,
                changes: items,
            }),
            2 => Some(FlowBusMessage::Heads {
                origin,
                heads: items,
            }),
            3 if items.len() == 1 => Some(FlowBusMessage::Presence {
                origin,
                json: items.into_iter().next()?,
            }),
            4 if items.is_empty() => Some(FlowBusMessage::PresenceRequest { origin }),
            5 if items.len() == 1 => Some(FlowBusMessage::Member {
                origin,
                json: items.into_iter().next()?,
            }),
            _ => None,
        }
    }
}

fn read_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_at_checked(4)?;
    *rest = tail;
    Some(u32::from_be_bytes(head.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_decode_and_an_unknown_one_is_dropped() {
        let m = FlowBusMessage::Changes {
            origin: "node-a".into(),
            changes: vec![vec![1, 2, 3]],
        };
        let v1 = m.encode_as(BusFormat::V1);
        let v2 = m.encode();
        assert_eq!(v2[..2], [0xFE, 2]);
        assert_eq!(v2[2..], v1[..], "version 2 is version 1 with a prefix");
        for bytes in [&v1, &v2] {
            assert_eq!(FlowBusMessage::decode(bytes).as_ref(), Some(&m));
            assert_eq!(FlowBusMessage::origin_of(bytes), Some("node-a"));
            assert!(FlowBusMessage::is_changes(bytes));
        }
        assert_eq!(FlowBusMessage::version_of(&v1), Some(1));
        assert_eq!(FlowBusMessage::version_of(&v2), Some(2));
        let mut v3 = v2.clone();
        v3[1] = 3;
        assert_eq!(FlowBusMessage::decode(&v3), None);
        assert_eq!(FlowBusMessage::origin_of(&v3), None);
    }

    #[test]
    fn roundtrip_and_reject_garbage() {
        let m = FlowBusMessage::Changes {
            origin: "node-a".into(),
            changes: vec![vec![1, 2], vec![]],
        };
        assert_eq!(FlowBusMessage::decode(&m.encode()), Some(m));
        let h = FlowBusMessage::Heads {
            origin: "b".into(),
            heads: vec![vec![7; 32]],
        };
        assert_eq!(FlowBusMessage::decode(&h.encode()), Some(h.clone()));
        let mut bad = h.encode();
        bad.push(0);
        assert_eq!(FlowBusMessage::decode(&bad), None);
        assert_eq!(FlowBusMessage::decode(&[1, 5, b'a']), None);
        assert_eq!(FlowBusMessage::decode(&[]), None);
        let p = FlowBusMessage::Presence {
            origin: "c".into(),
            json: b"{}".to_vec(),
        };
        assert_eq!(FlowBusMessage::decode(&p.encode()), Some(p));
        let m = FlowBusMessage::Member {
            origin: "e".into(),
            json: b"{}".to_vec(),
        };
        assert_eq!(FlowBusMessage::decode(&m.encode()), Some(m.clone()));
        let r = FlowBusMessage::PresenceRequest { origin: "d".into() };
        assert_eq!(FlowBusMessage::decode(&r.encode()), Some(r.clone()));
        assert_eq!(FlowBusMessage::origin_of(&r.encode()), Some("d"));
        assert_eq!(FlowBusMessage::origin_of(&m.encode()), Some("e"));
        assert_eq!(FlowBusMessage::origin_of(&[1, 5, b'a']), None);
        assert_eq!(FlowBusMessage::origin_of(&[]), None);
    }
}
