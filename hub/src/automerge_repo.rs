//! `GET /v1/automerge-repo?token=`: the network protocol of
//! `@automerge/automerge-repo-network-websocket`, so an unmodified automerge-repo
//! `Repo` can open flows and co-edit them with flowhub clients.
//!
//! Every WebSocket message is one CBOR map (binary frame), typed in [`wire`]. The
//! handshake: the client sends `join {senderId, peerMetadata, supportedProtocolVersions}`,
//! the hub answers `peer {senderId, targetId, peerMetadata, selectedProtocolVersion: "1"}`.
//! Then:
//!
//! | client → hub | what the hub does |
//! |---|---|
//! | `request` / `sync {documentId, data}` | maps the DocumentId to a flow ([`flow_of_document_id`], remembered hub-wide by [`DocumentIds`]) and hands `data` to the session as a sync frame; the session joins the flow on first use (the role decides, as for `subscribe_flow`); slowed down by the session's rate limit, never refused by it |
//! | `ephemeral {documentId, data}` | `data` is CBOR; a map with `cursor {x, y}`, `selection [ids]`, `color` becomes a `presence` request (exempt from the rate limit: presence is coalesced) |
//! | `join` again, `doc-unavailable`, `remote-*`, any other type | ignored, but counted by the rate limit |
//!
//! | hub → client | from |
//! |---|---|
//! | `sync {documentId, data}` | the flow actor's binary sync frames for this peer |
//! | `ephemeral {documentId, data, sessionId, count}` | `presence_state` / `presence_diff` as CBOR of the same JSON objects; the hub's notices below |
//! | `doc-unavailable {documentId}` | a DocumentId that names no flow, or a flow the token grants no role on |
//! | `error {message}` | a refusal that concerns no document (bad input, `rate_limited`); the connection stays open |
//! | `error {message}` then close | a bad handshake (1008, 4002 for an unsupported version), a store failure (`internal`, 1011: the Repo reconnects and resends), abuse (1008, as on `/v1/ws`) |
//!
//! # Refusals never lock a peer out
//!
//! A stock `Repo` cannot roll back: it keeps a change the hub refused and sends it
//! again on every sync, so closing the connection on a refusal (the Repo only logs
//! it and reconnects into the same refusal) would lock it out for good. Instead:
//!
//! | what happened to the peer's edit | the peer gets (no close) | its application sees |
//! |---|---|---|
//! | it broke the flow schema | the hub stored it with a repair change ([`OnInvalid::Repair`]); `ephemeral` with data `{type: "flowhub/repaired", change: "<hex>", problems: ["nodes/n1/label: missing", …]}`, and the repair by sync | `handle.on("ephemeral-message")` with that data; the document converges on the repaired flow |
//! | refused (`forbidden` for a viewer, `too_large`, `bad_request`) | `ephemeral` with data `{type: "flowhub/refused", code, message}`, at most one per flow per second | `handle.on("ephemeral-message")` with that data; nothing was stored or forwarded |
//! | the store failed (`internal`) | `error`, then close 1011 | the Repo reconnects and resends later |
//!
//! The hub's ephemerals carry the bridge's own `sessionId` and a `count` that grows
//! with every ephemeral it sends, presence included (automerge-repo drops a
//! `(sessionId, count)` it has seen).
//!
//! It is a codec over the same session core as `/v1/ws` ([`crate::connection`]):
//! [`RepoDecoder`] turns each CBOR message into the session's input, [`RepoEncoder`]
//! turns the session's typed output into CBOR. Identity, role checks, limits, expiry,
//! drain and the slow-client policy are the session's, so edits from a Repo are
//! validated, stored, acked and fanned out exactly like edits from flowhub clients,
//! and floods are answered and closed the same way. What differs is the session's
//! [`TransportProfile::AUTOMERGE_REPO`]: flows are joined by syncing them, and
//! schema-breaking changes are repaired.

pub mod document_id;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use flowhub_actors::session::{Inbound, OutFrame, Outbound, TransportProfile};
use flowhub_protocol::{close, ClientMessage, ErrorCode, ServerMessage, SyncFrame};
use tracing::debug;

use crate::connection::{self, ClientFrame, Codec, Encoded, FrameDecoder, FrameEncoder};
use crate::error::AppError;
use crate::state::{AppState, Authenticated};
pub use document_id::{
    base58check_decode, base58check_encode, flow_document_id, flow_of_document_id, DocumentIds,
};
use wire::{HubNotice, PeerMetadata, WireMessage};

/// The only protocol version of automerge-repo-network-websocket.
pub const PROTOCOL_V1: &str = "1";

/// At most one `flowhub/refused` ephemeral per flow in this time: a Repo resends a
/// refused change on every sync round, and its application needs to hear once, not
/// once per round.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

/// WebSocket close code 1011: the server failed; the client may retry.
const CLOSE_INTERNAL_ERROR: u16 = 1011;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/automerge-repo", get(upgrade))
}

// ---- the connection -------------------------------------------------------------------

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<Response, AppError> {
    let server_peer: Arc<str> = format!("flowhub-{}", state.node_id).into();
    let max_frame_bytes = state.config.session.max_frame_bytes;
    let ids = Arc::clone(&state.document_ids);
    connection::accept(
        ws,
        state,
        claims,
        TransportProfile::AUTOMERGE_REPO,
        move |conn| {
            let client = Arc::new(Mutex::new(None));
            Codec {
                decoder: RepoDecoder {
                    server_peer: Arc::clone(&server_peer),
                    client: client.clone(),
                    ids: Arc::clone(&ids),
                    out: conn.out.clone(),
                    max_frame_bytes,
                },
                encoder: RepoEncoder::new(server_peer, client, ids, conn.session_id),
            }
        },
    )
}

/// The client's peer id, once its `join` arrived (the decoder sets it, the encoder
/// addresses every message to it).
type ClientPeer = Arc<Mutex<Option<String>>>;

fn client_of(peer: &ClientPeer) -> Option<String> {
    peer.lock().ok().and_then(|p| p.clone())
}

/// Turns the peer's CBOR messages into the session's input; answers the handshake
/// itself.
pub struct RepoDecoder {
    /// Shared by the decoder and the encoder of a connection.
    server_peer: Arc<str>,
    client: ClientPeer,
    ids: Arc<DocumentIds>,
    /// For the transport's own replies (`peer`, `doc-unavailable`, a fatal `error`).
    out: Outbound,
    max_frame_bytes: usize,
}

impl RepoDecoder {
    fn client(&self) -> Option<String> {
        client_of(&self.client)
    }

    /// Sends a CBOR `error`, then closes: for a peer that does not speak the protocol.
    fn fatal(&self, message: &str, code: u16) -> Option<Inbound> {
        let frame = (WireMessage::Error {
            sender_id: Some(self.server_peer.to_string()),
            target_id: self.client(),
            message: message.to_owned(),
        })
        .encode();
        self.out.send_reliable(OutFrame::Raw(frame));
        let reason: String = message.chars().take(100).collect();
        self.out.close(code, &reason);
        None
    }

    /// Refuses a message of the peer's own making. Before the handshake the peer
    /// does not speak the protocol and the connection ends; after it, the session
    /// refuses it (and counts it toward the abuse limit, as on `/v1/ws`).
    fn invalid(
        &self,
        flow_id: Option<String>,
        code: ErrorCode,
        message: String,
    ) -> Option<Inbound> {
        if self.client().is_none() {
            return self.fatal(&format!("{code}: {message}"), close::POLICY);
        }
        Some(Inbound::Invalid {
            id: None,
            flow_id,
            code,
            message,
        })
    }

    fn doc_unavailable(&self, document_id: &str) {
        if let Some(client) = self.client() {
            self.out.send_reliable(OutFrame::Raw(
                (WireMessage::DocUnavailable {
                    sender_id: self.server_peer.to_string(),
                    target_id: client,
                    document_id: document_id.to_owned(),
                })
                .encode(),
            ));
        }
    }

    fn on_join(&self, sender: &str, versions: Option<&[String]>) {
        let supported = versions.is_none_or(|v| v.iter().any(|v| v == PROTOCOL_V1));
        if let Ok(mut client) = self.client.lock() {
            *client = Some(sender.to_owned());
        }
        if !supported {
            self.fatal("unsupported protocol version", close::UNSUPPORTED_VERSION);
            return;
        }
        debug!(peer = sender, "automerge-repo peer joined");
        self.out.send_reliable(OutFrame::Raw(
            (WireMessage::Peer {
                sender_id: self.server_peer.to_string(),
                target_id: sender.to_owned(),
                peer_metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: Some(false),
                },
                selected_protocol_version: PROTOCOL_V1.to_owned(),
            })
            .encode(),
        ));
    }
}

impl FrameDecoder for RepoDecoder {
    fn decode(&mut self, frame: ClientFrame) -> Option<Inbound> {
        let bytes = match frame {
            ClientFrame::Binary(bytes) => bytes,
            ClientFrame::Text(_) => {
                return self.invalid(
                    None,
                    ErrorCode::BadRequest,
                    "messages are CBOR in binary frames".into(),
                )
            }
        };
        let msg = match wire::decode(&bytes) {
            Ok(msg) => msg,
            Err(e) => return self.invalid(None, ErrorCode::BadRequest, e.to_string()),
        };
        if let WireMessage::Join {
            sender_id,
            supported_protocol_versions,
            ..
        } = &msg
        {
            let again = self.client().is_some();
            self.on_join(sender_id, supported_protocol_versions.as_deref());
            // A join repeated is counted by the rate limit, as any other message.
            return again.then_some(Inbound::Ignored);
        }
        if self.client().is_none() {
            return self.fatal("bad_request: send join first", close::POLICY);
        }
        match msg {
            WireMessage::Request {
                document_id, data, ..
            }
            | WireMessage::Sync {
                document_id, data, ..
            } => match self.ids.flow_of(&document_id) {
                // The session checks the payload's size and joins the flow.
                Some(flow_id) => Some(Inbound::Sync(SyncFrame::flow_sync(&*flow_id, data))),
                None => {
                    self.doc_unavailable(&document_id);
                    Some(Inbound::Ignored)
                }
            },
            WireMessage::Ephemeral {
                document_id, data, ..
            } => {
                let flow_id = self.ids.flow_of(&document_id)?;
                if bytes.len() > self.max_frame_bytes {
                    let message = format!("ephemeral message of {} bytes", bytes.len());
                    return self.invalid(Some(flow_id.to_string()), ErrorCode::TooLarge, message);
                }
                let presence = wire::presence_of(&data)?;
                Some(Inbound::Request(ClientMessage::Presence {
                    flow_id: flow_id.to_string(),
                    cursor: presence.cursor.map(Into::into),
                    selection: presence.selection,
                    color: presence.color,
                }))
            }
            // doc-unavailable, remote-subscription-change, remote-heads-changed and
            // types this hub does not know: the hub always has every flow and keeps
            // no remote-heads subscriptions. Ignored, but a flood of them is a flood.
            _ if bytes.len() > self.max_frame_bytes => {
                let message = format!("message of {} bytes", bytes.len());
                self.invalid(None, ErrorCode::TooLarge, message)
            }
            _ => Some(Inbound::Ignored),
        }
    }

    fn decode_oversize(&mut self, frame: ClientFrame) -> Option<Inbound> {
        // Decoded all the same, so the refusal names the flow (see `decode`).
        self.decode(frame)
    }
}

/// Turns the session's typed output into CBOR messages for the peer.
pub struct RepoEncoder {
    server_peer: Arc<str>,
    client: ClientPeer,
    ids: Arc<DocumentIds>,
    session_id: String,
    /// The `count` of the last ephemeral sent (presence and notices alike).
    count: u64,
    /// When each flow's last `flowhub/refused` went out (see [`REFUSAL_INTERVAL`]).
    last_refused: HashMap<String, Instant>,
}

impl RepoEncoder {
    fn new(
        server_peer: Arc<str>,
        client: ClientPeer,
        ids: Arc<DocumentIds>,
        session_id: &str,
    ) -> RepoEncoder {
        RepoEncoder {
            server_peer,
            client,
            ids,
            session_id: session_id.to_owned(),
            count: 0,
            last_refused: HashMap::new(),
        }
    }

    fn document_id(&self, flow_id: &str) -> String {
        self.ids.document_of(flow_id).to_string()
    }

    fn ephemeral(&mut self, client: String, flow_id: &str, data: Vec<u8>) -> Encoded {
        self.count += 1;
        send(&WireMessage::Ephemeral {
            sender_id: self.server_peer.to_string(),
            target_id: client,
            document_id: self.document_id(flow_id),
            session_id: self.session_id.clone(),
            count: self.count,
            data,
        })
    }

    /// Whether a refusal for `flow_id` may be told now (one per flow per interval).
    fn refusal_due(&mut self, flow_id: &str) -> bool {
        let now = Instant::now();
        if self.last_refused.len() >= 64 {
            self.last_refused
                .retain(|_, at| now.duration_since(*at) < REFUSAL_INTERVAL);
        }
        match self.last_refused.get(flow_id) {
            Some(at) if now.duration_since(*at) < REFUSAL_INTERVAL => false,
            _ => {
                self.last_refused.insert(flow_id.to_owned(), now);
                true
            }
        }
    }

    fn message(&mut self, client: String, msg: &ServerMessage) -> Encoded {
        match msg {
            ServerMessage::PresenceState { flow_id, .. }
            | ServerMessage::PresenceDiff { flow_id, .. } => {
                self.ephemeral(client, flow_id, wire::encode(msg))
            }
            ServerMessage::Repaired {
                flow_id,
                change,
                problems,
            } => {
                let notice = HubNotice::Repaired {
                    change: change.clone(),
                    problems: problems.clone(),
                };
                self.ephemeral(client, flow_id, wire::encode(&notice))
            }
            // The store failed: the Repo reconnects and resends later.
            ServerMessage::Error {
                code: ErrorCode::Internal,
                message,
                ..
            } => {
                let text = format!("{}: {message}", ErrorCode::Internal);
                let error = (WireMessage::Error {
                    sender_id: Some(self.server_peer.to_string()),
                    target_id: Some(client),
                    message: text.clone(),
                })
                .encode();
                Encoded::Fatal(
                    Message::Binary(error.into()),
                    CLOSE_INTERNAL_ERROR,
                    text.chars().take(100).collect(),
                )
            }
            // Any other refusal concerning a flow: told where the application can
            // see it, never by closing (module doc).
            ServerMessage::Error {
                flow_id: Some(flow_id),
                code,
                message,
                ..
            } => {
                if !self.refusal_due(flow_id) {
                    return Encoded::Skip;
                }
                let notice = HubNotice::Refused {
                    code: *code,
                    message: message.clone(),
                };
                self.ephemeral(client, flow_id, wire::encode(&notice))
            }
            ServerMessage::Error { code, message, .. } => send(&WireMessage::Error {
                sender_id: Some(self.server_peer.to_string()),
                target_id: Some(client),
                message: format!("{code}: {message}"),
            }),
            // welcome, flow_state, acks and replies have no automerge-repo
            // counterpart.
            _ => Encoded::Skip,
        }
    }
}

fn send(msg: &WireMessage) -> Encoded {
    Encoded::Send(Message::Binary(msg.encode().into()))
}

impl FrameEncoder for RepoEncoder {
    fn encode(&mut self, frame: OutFrame) -> Encoded {
        if let OutFrame::Raw(bytes) = frame {
            // The transport's own replies: the handshake's among them, so these go
            // out before the peer is known.
            return Encoded::Send(Message::Binary(bytes.into()));
        }
        let Some(client) = client_of(&self.client) else {
            return Encoded::Skip;
        };
        match frame {
            OutFrame::Sync { flow_id, payload } => send(&WireMessage::Sync {
                sender_id: self.server_peer.to_string(),
                target_id: client,
                document_id: self.document_id(&flow_id),
                data: payload,
            }),
            OutFrame::Unavailable { flow_id, .. } => send(&WireMessage::DocUnavailable {
                sender_id: self.server_peer.to_string(),
                target_id: client,
                document_id: self.document_id(&flow_id),
            }),
            OutFrame::Message(msg) => self.message(client, msg.message()),
            // Change frames go only to sessions that subscribed with `stream`, which an
            // automerge-repo peer never does: its document travels by the sync protocol.
            OutFrame::SharedBinary(_) | OutFrame::Raw(_) => Encoded::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RepoEncoder {
        RepoEncoder::new(
            "flowhub-n".into(),
            Arc::new(Mutex::new(Some("peer".into()))),
            Arc::default(),
            "am-1",
        )
    }

    fn text_frame(msg: &ServerMessage) -> OutFrame {
        OutFrame::Message(msg.into())
    }

    fn translate(frame: OutFrame, ctx: &mut RepoEncoder) -> Encoded {
        ctx.encode(frame)
    }

    fn sent(t: Encoded) -> WireMessage {
        match t {
            Encoded::Send(Message::Binary(bytes)) => wire::decode(&bytes).unwrap(),
            Encoded::Send(_) => panic!("not a binary frame"),
            Encoded::Fatal(..) => panic!("closed"),
            Encoded::Skip => panic!("skipped"),
        }
    }

    #[test]
    fn document_ids_come_from_the_hub_wide_memo() {
        let ids = Arc::new(DocumentIds::default());
        ids.plant("f", "planted-id");
        let mut encoder = RepoEncoder::new(
            "flowhub-n".into(),
            Arc::new(Mutex::new(Some("peer".into()))),
            Arc::clone(&ids),
            "am-1",
        );
        let sync = OutFrame::Sync {
            flow_id: "f".into(),
            payload: vec![1],
        };
        assert!(matches!(
            sent(encoder.encode(sync)),
            WireMessage::Sync { document_id, .. } if document_id == "planted-id"
        ));
        let refused = ServerMessage::error(ErrorCode::Forbidden, "viewer").with_flow("f");
        assert!(matches!(
            sent(encoder.encode(text_frame(&refused))),
            WireMessage::Ephemeral { document_id, .. } if document_id == "planted-id"
        ));
    }

    #[test]
    fn refusals_become_coalesced_ephemerals_and_store_failures_close() {
        let mut ctx = ctx();
        let refused =
            ServerMessage::error(ErrorCode::Forbidden, "role viewer cannot edit").with_flow("f");
        let WireMessage::Ephemeral {
            document_id,
            session_id,
            count,
            data,
            ..
        } = sent(translate(text_frame(&refused), &mut ctx))
        else {
            panic!("an ephemeral")
        };
        assert_eq!(document_id, flow_document_id("f"));
        assert_eq!((session_id.as_str(), count), ("am-1", 1));
        let notice: HubNotice = ciborium::de::from_reader(&data[..]).unwrap();
        assert_eq!(
            notice,
            HubNotice::Refused {
                code: ErrorCode::Forbidden,
                message: "role viewer cannot edit".into()
            }
        );
        // A second refusal for the same flow within the second is dropped; another
        // flow's is not, and counts go on increasing.
        assert!(matches!(
            translate(text_frame(&refused), &mut ctx),
            Encoded::Skip
        ));
        let other = ServerMessage::error(ErrorCode::TooLarge, "big").with_flow("g");
        assert!(matches!(
            sent(translate(text_frame(&other), &mut ctx)),
            WireMessage::Ephemeral { count: 2, .. }
        ));
        let repaired = ServerMessage::Repaired {
            flow_id: "f".into(),
            change: "abcd".into(),
            problems: vec!["nodes/n1/label: missing".into()],
        };
        let WireMessage::Ephemeral { count, data, .. } =
            sent(translate(text_frame(&repaired), &mut ctx))
        else {
            panic!("an ephemeral")
        };
        assert_eq!(count, 3);
        assert!(matches!(
            ciborium::de::from_reader::<HubNotice, _>(&data[..]).unwrap(),
            HubNotice::Repaired { change, .. } if change == "abcd"
        ));
        // No flow: a plain `error`, no close.
        let unflowed = ServerMessage::error(ErrorCode::RateLimited, "too fast");
        assert!(matches!(
            sent(translate(text_frame(&unflowed), &mut ctx)),
            WireMessage::Error { message, .. } if message == "rate_limited: too fast"
        ));
        let internal = ServerMessage::error(ErrorCode::Internal, "store down").with_flow("f");
        assert!(matches!(
            translate(text_frame(&internal), &mut ctx),
            Encoded::Fatal(_, 1011, _)
        ));
    }
}
