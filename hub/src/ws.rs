//! `GET /v1/ws`: flowhub's own protocol (docs/PROTOCOL.md). Authenticate, upgrade,
//! and run the connection ([`crate::connection`]) with the native codec: JSON text
//! frames for messages, binary frames (`flowhub_protocol::frame`) for sync.

use axum::extract::ws::{Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use flowhub_actors::session::{Inbound, NativeFrame, OutFrame, TransportProfile};

use crate::connection::{
    self, ClientFrame, Codec, Encoded, FrameDecoder, FrameEncoder, SharedBinary, SharedText,
};
use crate::error::AppError;
use crate::state::{AppState, Authenticated};

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    // Refused before upgrading: a bad token is a plain 401, never a WebSocket.
    Authenticated(claims): Authenticated,
) -> Result<Response, AppError> {
    connection::accept(ws, state, claims, TransportProfile::NATIVE, |_| Codec {
        decoder: NativeDecoder,
        encoder: NativeEncoder,
    })
}

/// Text frames are JSON requests, binary frames sync frames.
pub struct NativeDecoder;

impl FrameDecoder for NativeDecoder {
    fn decode(&mut self, frame: ClientFrame) -> Option<Inbound> {
        Some(match frame {
            ClientFrame::Text(text) => Inbound::from_native_text(text.as_str()),
            ClientFrame::Binary(bytes) => Inbound::from_native_binary(&bytes),
        })
    }
}

/// Messages as JSON text (shared: a broadcast is encoded once for every session),
/// sync as binary frames.
pub struct NativeEncoder;

impl FrameEncoder for NativeEncoder {
    fn encode(&mut self, frame: OutFrame) -> Encoded {
        Encoded::Send(match frame.into_native() {
            // The shared text goes to the socket without a copy; checking it is UTF-8
            // costs less than copying it, and happens here, in this session's task,
            // rather than in the actor that broadcast it.
            NativeFrame::Text(t) => match Utf8Bytes::try_from(Bytes::from_owner(SharedText(t))) {
                Ok(text) => Message::Text(text),
                Err(_) => unreachable!("an Arc<str> is UTF-8"),
            },
            NativeFrame::Binary(b) => Message::Binary(b.into()),
            NativeFrame::SharedBinary(b) => Message::Binary(Bytes::from_owner(SharedBinary(b))),
        })
    }
}
