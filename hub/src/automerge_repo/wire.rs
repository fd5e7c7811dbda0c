//! The messages of `automerge-repo-network-websocket` as serde types over CBOR.
//!
//! Every WebSocket message is one CBOR map whose `type` names the variant of
//! [`WireMessage`]; field names are camelCase. `data` is a CBOR byte string (see
//! [`cbor_bytes`]). Types the hub does not know decode as [`WireMessage::Unknown`],
//! so a newer peer's extra messages are ignored rather than refused.

use flowhub_protocol::{Cursor, ErrorCode};
use serde::{Deserialize, Serialize};

/// One protocol message, in either direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum WireMessage {
    /// client → hub: the handshake's first message.
    Join {
        sender_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer_metadata: Option<PeerMetadata>,
        /// Absent from peers that predate versioning; they speak version 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        supported_protocol_versions: Option<Vec<String>>,
    },
    /// hub → client: the handshake's answer.
    Peer {
        sender_id: String,
        target_id: String,
        peer_metadata: PeerMetadata,
        selected_protocol_version: String,
    },
    /// A sync message for a document the sender does not have yet.
    Request {
        sender_id: String,
        target_id: String,
        document_id: String,
        #[serde(with = "cbor_bytes")]
        data: Vec<u8>,
    },
    /// An Automerge sync message for one document.
    Sync {
        sender_id: String,
        target_id: String,
        document_id: String,
        #[serde(with = "cbor_bytes")]
        data: Vec<u8>,
    },
    /// Application data that is not part of the document (presence, the hub's
    /// notices). A receiver drops a `(sessionId, count)` it has already seen, so
    /// `count` increases strictly per `sessionId`.
    Ephemeral {
        sender_id: String,
        target_id: String,
        document_id: String,
        session_id: String,
        count: u64,
        #[serde(with = "cbor_bytes")]
        data: Vec<u8>,
    },
    DocUnavailable {
        sender_id: String,
        target_id: String,
        document_id: String,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_id: Option<String>,
        message: String,
    },
    /// The hub keeps no remote-heads subscriptions: decoded only to be ignored, so
    /// every field is optional and no variant of it is ever an error.
    RemoteSubscriptionChange {
        #[serde(default)]
        sender_id: Option<String>,
        #[serde(default)]
        target_id: Option<String>,
    },
    RemoteHeadsChanged {
        #[serde(default)]
        sender_id: Option<String>,
        #[serde(default)]
        target_id: Option<String>,
        #[serde(default)]
        document_id: Option<String>,
    },
    /// Any other `type`.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_ephemeral: Option<bool>,
}

/// The `data` of an ephemeral message a peer sends: presence, each field optional
/// (a field left out keeps its value). Other keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PresenceData {
    #[serde(default)]
    pub cursor: Option<CursorData>,
    #[serde(default)]
    pub selection: Option<Vec<String>>,
    #[serde(default)]
    pub color: Option<String>,
}

/// A cursor as JavaScript encodes it: whole numbers arrive as CBOR integers.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct CursorData {
    #[serde(deserialize_with = "any_number")]
    pub x: f64,
    #[serde(deserialize_with = "any_number")]
    pub y: f64,
}

impl From<CursorData> for Cursor {
    fn from(c: CursorData) -> Cursor {
        Cursor { x: c.x, y: c.y }
    }
}

/// The `data` of the ephemeral messages in which the hub tells a peer's application
/// what became of its edits (see the module doc of `automerge_repo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum HubNotice {
    /// An edit or message was refused; nothing of it was stored.
    #[serde(rename = "flowhub/refused")]
    Refused { code: ErrorCode, message: String },
    /// The peer's edit broke the flow schema; the hub stored it together with the
    /// repair change `change` (hex hash), which reaches the peer by sync.
    #[serde(rename = "flowhub/repaired")]
    Repaired {
        change: String,
        problems: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("not an automerge-repo message: {0}")]
pub struct DecodeError(String);

/// Decodes one message.
///
/// Through a [`ciborium::Value`] with its tags removed: CBOR encoders may tag byte
/// strings (typed arrays, tag 64), and serde's internally tagged enums buffer their
/// input with `deserialize_any`, for which ciborium turns a tag into an enum that the
/// buffer refuses. Without the tags every byte string is a plain one.
pub fn decode(bytes: &[u8]) -> Result<WireMessage, DecodeError> {
    if let Some(msg) = decode_common(bytes) {
        return Ok(msg);
    }
    let value: ciborium::Value = read_cbor(bytes).map_err(|e| DecodeError(e.to_string()))?;
    untagged(value)
        .deserialized()
        .map_err(|e| DecodeError(e.to_string()))
}

/// `ciborium::de::from_reader` with a small scratch buffer. Its own is 4 KiB, zeroed
/// on every call, where the messages' strings (peer and document ids, types) are
/// short; longer strings and byte strings go through it in pieces.
fn read_cbor<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, ciborium::de::Error<std::io::Error>> {
    let mut scratch = [0u8; 256];
    ciborium::de::from_reader_with_buffer(bytes, &mut scratch)
}

/// Encodes one message (or any serde value, e.g. a [`HubNotice`]) as CBOR.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_into(value, Vec::with_capacity(256))
}

impl WireMessage {
    /// [`encode`], into a buffer that holds the whole message: a whole document in
    /// one `sync` otherwise grows the buffer a dozen times, copying it each time.
    pub fn encode(&self) -> Vec<u8> {
        let data = match self {
            WireMessage::Request { data, .. }
            | WireMessage::Sync { data, .. }
            | WireMessage::Ephemeral { data, .. } => data.len(),
            _ => 0,
        };
        encode_into(self, Vec::with_capacity(256 + data))
    }
}

fn encode_into<T: Serialize + ?Sized>(value: &T, mut out: Vec<u8>) -> Vec<u8> {
    // Writing into a Vec fails only for values serde cannot represent in CBOR, which
    // none of the hub's types are.
    if let Err(e) = ciborium::ser::into_writer(value, &mut out) {
        tracing::error!(error = %e, "cannot encode a CBOR message");
    }
    out
}

/// Presence carried by an ephemeral message's `data`; `None` when it holds none.
pub fn presence_of(data: &[u8]) -> Option<PresenceData> {
    let value: ciborium::Value = read_cbor(data).ok()?;
    let presence: PresenceData = untagged(value).deserialized().ok()?;
    let empty =
        presence.cursor.is_none() && presence.selection.is_none() && presence.color.is_none();
    (!empty).then_some(presence)
}

/// The fields of the messages a peer sends most (`sync`, `request`, `join`,
/// `ephemeral`), all optional; any other field is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommonFields {
    #[serde(rename = "type")]
    kind: String,
    sender_id: Option<String>,
    target_id: Option<String>,
    document_id: Option<String>,
    #[serde(default, deserialize_with = "some_bytes")]
    data: Option<Vec<u8>>,
    session_id: Option<String>,
    count: Option<u64>,
    peer_metadata: Option<PeerMetadata>,
    supported_protocol_versions: Option<Vec<String>>,
}

fn some_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    cbor_bytes::deserialize(d).map(Some)
}

/// The fast path of [`decode`] for the messages a peer sends most: read straight
/// into typed fields (ciborium skips tags there), without building a
/// [`ciborium::Value`] tree and buffering it again for the internally tagged enum,
/// which copies `data` twice and took more than half of what decoding a peer's
/// messages cost an open. `None` for any other message, or anything amiss:
/// [`decode`] then takes the general path, which also words the error.
fn decode_common(bytes: &[u8]) -> Option<WireMessage> {
    let fields: CommonFields = read_cbor(bytes).ok()?;
    let sender_id = fields.sender_id?;
    Some(match fields.kind.as_str() {
        "join" => WireMessage::Join {
            sender_id,
            peer_metadata: fields.peer_metadata,
            supported_protocol_versions: fields.supported_protocol_versions,
        },
        "sync" => WireMessage::Sync {
            sender_id,
            target_id: fields.target_id?,
            document_id: fields.document_id?,
            data: fields.data?,
        },
        "request" => WireMessage::Request {
            sender_id,
            target_id: fields.target_id?,
            document_id: fields.document_id?,
            data: fields.data?,
        },
        "ephemeral" => WireMessage::Ephemeral {
            sender_id,
            target_id: fields.target_id?,
            document_id: fields.document_id?,
            session_id: fields.session_id?,
            count: fields.count?,
            data: fields.data?,
        },
        _ => return None,
    })
}

fn untagged(value: ciborium::Value) -> ciborium::Value {
    use ciborium::Value;
    match value {
        Value::Tag(_, inner) => untagged(*inner),
        Value::Array(items) => Value::Array(items.into_iter().map(untagged).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (untagged(k), untagged(v)))
                .collect(),
        ),
        other => other,
    }
}

fn any_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Number;
    impl serde::de::Visitor<'_> for Number {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
    }
    d.deserialize_any(Number)
}

/// `data` as a CBOR byte string: serde would write a `Vec<u8>` as an array of
/// integers, which automerge-repo cannot read.
pub mod cbor_bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::Value;

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn data_is_a_byte_string_both_ways() {
        let msg = WireMessage::Sync {
            sender_id: "hub".into(),
            target_id: "peer".into(),
            document_id: "doc".into(),
            data: vec![1, 2, 3],
        };
        let bytes = encode(&msg);
        let value: Value = ciborium::de::from_reader(&bytes[..]).unwrap();
        let Value::Map(entries) = &value else {
            panic!("a map")
        };
        assert_eq!(entries[0], (text("type"), text("sync")));
        assert!(entries.contains(&(text("data"), Value::Bytes(vec![1, 2, 3]))));
        assert!(entries.contains(&(text("documentId"), text("doc"))));
        assert_eq!(decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn tagged_byte_strings_are_accepted() {
        // A Uint8Array as some encoders write it: tag 64 around the byte string.
        let value = Value::Map(vec![
            (text("type"), text("request")),
            (text("senderId"), text("p")),
            (text("targetId"), text("hub")),
            (text("documentId"), text("doc")),
            (
                text("data"),
                Value::Tag(64, Box::new(Value::Bytes(vec![0x42, 0]))),
            ),
        ]);
        match decode(&cbor(&value)).unwrap() {
            WireMessage::Request { data, .. } => assert_eq!(data, vec![0x42, 0]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_fast_path_reads_what_the_general_path_reads() {
        let general = |bytes: &[u8]| -> WireMessage {
            let value: Value = ciborium::de::from_reader(bytes).unwrap();
            untagged(value).deserialized().unwrap()
        };
        let with = |kind: &str, data: Value, extra: Vec<(Value, Value)>| {
            let mut entries = vec![
                (text("type"), text(kind)),
                (text("senderId"), text("p")),
                (text("targetId"), text("hub")),
                (text("documentId"), text("doc")),
                (text("data"), data),
            ];
            entries.extend(extra);
            cbor(&Value::Map(entries))
        };
        let tagged = || Value::Tag(64, Box::new(Value::Bytes(vec![7; 300])));
        let extra = vec![
            (text("timestamp"), Value::Integer(5.into())),
            (text("meta"), Value::Map(vec![(text("k"), tagged())])),
        ];
        for bytes in [
            with("sync", Value::Bytes(vec![1, 2, 3]), Vec::new()),
            with("request", tagged(), Vec::new()),
            with("sync", tagged(), extra),
        ] {
            let fast = decode_common(&bytes).expect("taken by the fast path");
            assert_eq!(fast, general(&bytes));
            assert_eq!(decode(&bytes).unwrap(), fast);
        }
        // Anything else is left to the general path, which words the error.
        let no_data = cbor(&Value::Map(vec![
            (text("type"), text("sync")),
            (text("senderId"), text("p")),
            (text("targetId"), text("hub")),
            (text("documentId"), text("doc")),
        ]));
        assert!(decode_common(&no_data).is_none());
        assert!(decode(&no_data).is_err());
        // An ephemeral without its sessionId and count is not one.
        let ephemeral = with("ephemeral", Value::Bytes(vec![1]), Vec::new());
        assert!(decode_common(&ephemeral).is_none());
        assert!(decode(&ephemeral).is_err());
        let ephemeral = with(
            "ephemeral",
            tagged(),
            vec![
                (text("sessionId"), text("s")),
                (text("count"), Value::Integer(3.into())),
            ],
        );
        let fast = decode_common(&ephemeral).expect("taken by the fast path");
        assert_eq!(fast, general(&ephemeral));
        assert!(matches!(fast, WireMessage::Ephemeral { count: 3, .. }));
        for join in [
            vec![(text("type"), text("join")), (text("senderId"), text("p"))],
            vec![
                (text("type"), text("join")),
                (text("senderId"), text("p")),
                (
                    text("peerMetadata"),
                    Value::Map(vec![(text("isEphemeral"), Value::Bool(true))]),
                ),
                (
                    text("supportedProtocolVersions"),
                    Value::Array(vec![text("1"), text("2")]),
                ),
            ],
        ] {
            let bytes = cbor(&Value::Map(join));
            let fast = decode_common(&bytes).expect("taken by the fast path");
            assert_eq!(fast, general(&bytes));
        }
        let unknown = cbor(&Value::Map(vec![
            (text("type"), text("remote-heads-changed")),
            (text("senderId"), text("p")),
        ]));
        assert!(decode_common(&unknown).is_none());
        let text_data = with("sync", text("not bytes"), Vec::new());
        assert!(decode_common(&text_data).is_none());
        assert!(decode(&text_data).is_err());
    }

    #[test]
    fn unknown_types_decode_and_missing_fields_do_not() {
        let unknown = Value::Map(vec![
            (text("type"), text("teleport")),
            (text("senderId"), text("p")),
            (
                text("whatever"),
                Value::Tag(64, Box::new(Value::Bytes(vec![1]))),
            ),
        ]);
        assert_eq!(decode(&cbor(&unknown)).unwrap(), WireMessage::Unknown);
        let remote = Value::Map(vec![
            (text("type"), text("remote-subscription-change")),
            (text("add"), Value::Array(vec![text("storage")])),
        ]);
        assert!(matches!(
            decode(&cbor(&remote)).unwrap(),
            WireMessage::RemoteSubscriptionChange { .. }
        ));
        let no_sender = Value::Map(vec![(text("type"), text("join"))]);
        assert!(decode(&cbor(&no_sender)).is_err());
        assert!(decode(&cbor(&text("not a map"))).is_err());
        assert!(decode(b"\xff\x00").is_err());
    }

    #[test]
    fn join_with_metadata_and_versions() {
        let join = Value::Map(vec![
            (text("type"), text("join")),
            (text("senderId"), text("p")),
            (
                text("peerMetadata"),
                Value::Map(vec![
                    (text("storageId"), text("s")),
                    (text("isEphemeral"), Value::Bool(false)),
                ]),
            ),
            (
                text("supportedProtocolVersions"),
                Value::Array(vec![text("1")]),
            ),
        ]);
        assert_eq!(
            decode(&cbor(&join)).unwrap(),
            WireMessage::Join {
                sender_id: "p".into(),
                peer_metadata: Some(PeerMetadata {
                    storage_id: Some("s".into()),
                    is_ephemeral: Some(false),
                }),
                supported_protocol_versions: Some(vec!["1".into()]),
            }
        );
    }

    #[test]
    fn presence_from_ephemeral_data() {
        let data = cbor(&Value::Map(vec![
            (
                text("cursor"),
                Value::Map(vec![
                    (text("x"), Value::Float(1.5)),
                    (text("y"), Value::Integer(2.into())),
                ]),
            ),
            (text("selection"), Value::Array(vec![text("n1")])),
            (text("color"), text("#ff0000")),
        ]));
        let presence = presence_of(&data).unwrap();
        assert_eq!(
            presence.cursor.map(Cursor::from),
            Some(Cursor { x: 1.5, y: 2.0 })
        );
        assert_eq!(presence.selection, Some(vec!["n1".to_string()]));
        assert_eq!(presence.color.as_deref(), Some("#ff0000"));
        assert!(presence_of(&cbor(&Value::Map(vec![(text("hello"), text("world"))]))).is_none());
        assert!(presence_of(b"\xff").is_none());
    }

    #[test]
    fn notices_encode_as_documented() {
        let refused = encode(&HubNotice::Refused {
            code: ErrorCode::Forbidden,
            message: "role viewer cannot edit this flow".into(),
        });
        let value: Value = ciborium::de::from_reader(&refused[..]).unwrap();
        assert_eq!(
            value,
            Value::Map(vec![
                (text("type"), text("flowhub/refused")),
                (text("code"), text("forbidden")),
                (text("message"), text("role viewer cannot edit this flow")),
            ])
        );
        let repaired = encode(&HubNotice::Repaired {
            change: "ab".into(),
            problems: vec!["nodes/n1/label: missing".into()],
        });
        let value: Value = ciborium::de::from_reader(&repaired[..]).unwrap();
        assert_eq!(
            value,
            Value::Map(vec![
                (text("type"), text("flowhub/repaired")),
                (text("change"), text("ab")),
                (
                    text("problems"),
                    Value::Array(vec![text("nodes/n1/label: missing")])
                ),
            ])
        );
    }
}
