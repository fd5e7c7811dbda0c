//! Text frame codec. Decoding is two-step only on failure: the fast path is one
//! `serde_json::from_str`; when it fails, the frame is re-read as a generic value to say
//! precisely what is wrong and to echo the request id, so a client always learns which
//! of its requests failed.

use serde::Serialize;

use crate::ids::truncate;
use crate::message::CLIENT_MESSAGE_TYPES;
use crate::{ClientMessage, ProtocolError, RequestId};

/// A text frame that could not be decoded, with the request id when one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeFailure {
    pub id: Option<RequestId>,
    pub error: ProtocolError,
}

/// Decodes a client text frame.
pub fn decode_client_text(text: &str) -> Result<ClientMessage, DecodeFailure> {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(msg) => Ok(msg),
        Err(err) => Err(explain(text, err)),
    }
}

fn explain(text: &str, err: serde_json::Error) -> DecodeFailure {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return DecodeFailure {
                id: None,
                error: ProtocolError::MalformedJson(e.to_string()),
            }
        }
    };
    let id = value
        .get("id")
        .and_then(|v| serde_json::from_value::<RequestId>(v.clone()).ok());
    let error = match value.get("type").and_then(|t| t.as_str()) {
        None => ProtocolError::MissingType,
        Some(kind) if !CLIENT_MESSAGE_TYPES.contains(&kind) => {
            ProtocolError::UnknownType(truncate(kind, 40))
        }
        Some(kind) => ProtocolError::InvalidMessage {
            kind: kind.to_owned(),
            detail: err.to_string(),
        },
    };
    DecodeFailure { id, error }
}

/// Encodes any message as a JSON text frame.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serializing these plain data types cannot fail: no maps with non-string keys,
    // no custom serializers that error.
    serde_json::to_string(msg).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","code":"internal","message":"encode failed: {e}"}}"#)
    })
}
