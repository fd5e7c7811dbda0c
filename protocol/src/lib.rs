//! The flowhub wire protocol: pure data, no I/O.
//!
//! A flowhub WebSocket carries two kinds of frames:
//! - **text frames**: JSON control messages tagged by `type` ([`ClientMessage`] from
//!   clients, [`ServerMessage`] from the hub);
//! - **binary frames**: Automerge sync messages behind a small header naming the
//!   frame kind and the flow ([`SyncFrame`]).
//!
//! Every request may carry an `id`; the reply (or the error) echoes it. Errors are typed
//! ([`ErrorCode`]) and close codes say whether a client should reconnect ([`close`]).
//! `docs/PROTOCOL.md` documents every message with a JSON example.
//!
//! # Layout
//! - [`message`]: the control messages in both directions, [`Role`] and [`RequestId`].
//! - [`frame`]: the binary sync frame header, encode and decode.
//! - [`codec`]: decoding client text frames into typed messages or typed errors.
//! - [`error`]: [`ErrorCode`], [`ProtocolError`] and the close codes.
//! - [`presence`]: presence entries (cursor, selection, colour).
//! - [`run`]: run events as engines report them, run state and summaries.
//! - [`json_patch`]: JSON Patch (RFC 6902) for `flow_patch`: diff and apply.
//! - [`ids`]: validation of flow ids (they appear in frame headers and store keys).
//! - [`token`]: the claims of the tokens flowhub mints ([`Claims`]).

pub mod codec;
pub mod error;
pub mod frame;
pub mod ids;
pub mod json_patch;
pub mod message;
pub mod presence;
pub mod run;
pub mod token;

pub use codec::{decode_client_text, encode, DecodeFailure};
pub use error::{close, ErrorCode, ProtocolError};
pub use frame::{FrameKind, SyncFrame};
pub use ids::{validate_flow_id, MAX_FLOW_ID_LEN};
pub use message::{
    ClientMessage, FlowFormat, Limits, RequestId, Role, ServerMessage, MAX_PENDING_HASHES,
};
pub use presence::{Cursor, PresenceEntry};
pub use run::{RunEvent, RunEventInput, RunEventKind, RunSnapshot, RunStatus, RunSummary};
pub use token::Claims;

/// The protocol version this crate speaks. A client names the version it speaks in
/// `hello`; the hub answers with the version it will use in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest version the hub still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
