//! What a transport hands the session core: one client frame, decoded.

use flowhub_protocol::{decode_client_text, ClientMessage, ErrorCode, RequestId, SyncFrame};

/// One frame from a client, as its transport decoded it.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A request (`hello`, `subscribe_flow`, `presence`, …).
    Request(ClientMessage),
    /// Automerge sync bytes (or a change frame) for one flow.
    Sync(SyncFrame),
    /// A frame the transport could not decode or accept: refused with this error,
    /// and counted toward the abuse limit.
    Invalid {
        id: Option<RequestId>,
        flow_id: Option<String>,
        code: ErrorCode,
        message: String,
    },
    /// A frame above the soft size limit (its bytes were not kept).
    Oversize(usize),
    /// A frame the transport has no use for (an automerge-repo message type the hub
    /// does not act on): still counted by the rate limit, so a flood of them is one.
    Ignored,
}

impl Inbound {
    /// A text frame of the native protocol: one JSON [`ClientMessage`].
    pub fn from_native_text(text: &str) -> Inbound {
        match decode_client_text(text) {
            Ok(msg) => Inbound::Request(msg),
            Err(f) => Inbound::Invalid {
                id: f.id,
                flow_id: None,
                code: f.error.code(),
                message: f.error.to_string(),
            },
        }
    }

    /// A binary frame of the native protocol (`flowhub_protocol::frame`).
    pub fn from_native_binary(bytes: &[u8]) -> Inbound {
        match SyncFrame::decode(bytes) {
            Ok(frame) => Inbound::Sync(frame),
            Err(e) => Inbound::Invalid {
                id: None,
                flow_id: None,
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}
