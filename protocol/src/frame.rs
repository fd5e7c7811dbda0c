//! Binary frames: an Automerge sync message behind a small header.
//!
//! ```text
//! byte 0        kind (0x01 = flow sync, 0x02 = flow changes)
//! byte 1        L, length of the flow id in bytes (1..=128)
//! bytes 2..2+L  flow id, ASCII [A-Za-z0-9_.:-]
//! bytes 2+L..   payload: for 0x01 one Automerge sync message, as
//!               `automerge::sync::Message::encode`; for 0x02 one or more Automerge
//!               change chunks, concatenated, in causal order (what
//!               `load_incremental` / `Automerge.loadIncremental` take)
//! ```
//! The header is tiny and fixed so that a hub can route a frame without parsing the
//! payload, and a client in any language can build one with a few lines of code.

use crate::{validate_flow_id, ProtocolError};

/// What a binary frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// An Automerge sync message for one flow, in either direction.
    FlowSync = 0x01,
    /// New Automerge changes of one flow, for a peer that subscribed with `stream`
    /// (either direction): no sync protocol around them.
    FlowChanges = 0x02,
}

impl FrameKind {
    fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            0x01 => Ok(FrameKind::FlowSync),
            0x02 => Ok(FrameKind::FlowChanges),
            other => Err(ProtocolError::UnknownFrameKind(other)),
        }
    }
}

/// A decoded binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFrame {
    pub kind: FrameKind,
    pub flow_id: String,
    pub payload: Vec<u8>,
}

impl SyncFrame {
    pub fn flow_sync(flow_id: impl Into<String>, payload: Vec<u8>) -> Self {
        SyncFrame {
            kind: FrameKind::FlowSync,
            flow_id: flow_id.into(),
            payload,
        }
    }

    pub fn flow_changes(flow_id: impl Into<String>, payload: Vec<u8>) -> Self {
        SyncFrame {
            kind: FrameKind::FlowChanges,
            flow_id: flow_id.into(),
            payload,
        }
    }

    /// Encodes header and payload into one buffer.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self.kind, &self.flow_id, &self.payload)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let (&kind, rest) = bytes.split_first().ok_or(ProtocolError::TruncatedFrame)?;
        let kind = FrameKind::from_byte(kind)?;
        let (&len, rest) = rest.split_first().ok_or(ProtocolError::TruncatedFrame)?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err(ProtocolError::TruncatedFrame);
        }
        let (id, payload) = rest.split_at(len);
        let flow_id = std::str::from_utf8(id)
            .map_err(|_| ProtocolError::InvalidFlowId(String::from_utf8_lossy(id).into_owned()))?;
        validate_flow_id(flow_id)?;
        if payload.is_empty() {
            return Err(ProtocolError::EmptyPayload);
        }
        Ok(SyncFrame {
            kind,
            flow_id: flow_id.to_owned(),
            payload: payload.to_vec(),
        })
    }
}

/// Builds a flow sync frame without an intermediate [`SyncFrame`].
///
/// The caller guarantees `flow_id` is valid (see [`validate_flow_id`]); the hub only
/// encodes ids it has validated on subscribe.
pub fn encode_flow_sync(flow_id: &str, payload: &[u8]) -> Vec<u8> {
    encode_frame(FrameKind::FlowSync, flow_id, payload)
}

/// Builds a flow changes frame (kind `0x02`) from change chunks, concatenating them
/// straight into the frame buffer (one allocation, however many changes).
pub fn encode_flow_changes<'a>(
    flow_id: &str,
    changes: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut out = header(FrameKind::FlowChanges, flow_id, 0);
    for change in changes {
        out.extend_from_slice(change);
    }
    out
}

/// Builds a frame of any kind; the same contract on `flow_id` as [`encode_flow_sync`].
pub fn encode_frame(kind: FrameKind, flow_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = header(kind, flow_id, payload.len());
    out.extend_from_slice(payload);
    out
}

fn header(kind: FrameKind, flow_id: &str, payload_len: usize) -> Vec<u8> {
    debug_assert!(flow_id.len() <= crate::MAX_FLOW_ID_LEN);
    let mut out = Vec::with_capacity(2 + flow_id.len() + payload_len);
    out.push(kind as u8);
    out.push(flow_id.len() as u8);
    out.extend_from_slice(flow_id.as_bytes());
    out
}
