//! Error codes carried in `error` frames, decode errors, and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. A client can branch on it; `message` is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be understood (malformed JSON, unknown type, bad field,
    /// undecodable Automerge bytes, a sync frame for a flow not subscribed).
    BadRequest,
    /// The token is missing, forged or expired.
    Unauthorized,
    /// The token is valid but its role does not allow this (a viewer's edit).
    Forbidden,
    /// The named flow or run does not exist.
    NotFound,
    /// A frame, change or document exceeds a configured limit.
    TooLarge,
    /// The session sends faster than its configured rate.
    RateLimited,
    /// The edit was well-formed Automerge but breaks the flow schema.
    SchemaViolation,
    /// The protocol version named in `hello` is not supported.
    UnsupportedVersion,
    /// The hub failed (the store was unreachable, say); retrying may help.
    Internal,
}

impl ErrorCode {
    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Internal)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame could not be decoded. Every variant maps to an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("message has no string field `type`")]
    MissingType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("invalid `{kind}` message: {detail}")]
    InvalidMessage { kind: String, detail: String },
    #[error("binary frame shorter than its header")]
    TruncatedFrame,
    #[error("unknown binary frame kind {0:#04x}")]
    UnknownFrameKind(u8),
    #[error("invalid flow id `{0}` (expected [A-Za-z0-9_.:-], 1 to 128 bytes)")]
    InvalidFlowId(String),
    #[error("binary frame has an empty payload")]
    EmptyPayload,
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

/// WebSocket close codes used by the hub. 1xxx are standard; 4xxx are flowhub's own.
///
/// | code | meaning | reconnect? |
/// |---|---|---|
/// | 1000 | normal close | no need |
/// | 1008 | policy violation: sustained abuse (floods, repeated bad frames) | only after fixing the client |
/// | 1009 | message larger than the hard frame limit | only after fixing the client |
/// | 1012 | service restart: the node is draining | yes, at once (another node) |
/// | 4001 | token expired or revoked | with a fresh token |
/// | 4002 | unsupported protocol version | no |
/// | 4003 | too slow: the outbound queue overflowed | yes, with backoff |
/// | 4004 | idle: nothing (not even a pong) received within the idle timeout | yes |
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const UNSUPPORTED_VERSION: u16 = 4002;
    pub const TOO_SLOW: u16 = 4003;
    pub const IDLE_TIMEOUT: u16 = 4004;
}
