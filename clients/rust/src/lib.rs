//! `flowhub-client`: an async Rust client for a flowhub hub.
//!
//! A [`Client`] is one WebSocket session. [`Client::subscribe`] joins a flow and returns
//! a [`FlowHandle`]: a local Automerge replica ([`FlowDoc`]) that the connection keeps in
//! sync with the hub in the background. Edits apply locally at once
//! ([`FlowHandle::edit`]) and return an [`EditTicket`]; [`FlowHandle::wait_acked`] says
//! when the hub has stored them, or that it refused them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flowhub_client::ClientError> {
//! use std::time::Duration;
//! use flowhub_client::{Client, NewNode, Position};
//!
//! let client = Client::connect("ws://127.0.0.1:7878", "JWT").await?;
//! let flow = client.subscribe("demo").await?;
//! let (id, ticket) = flow
//!     .edit(|doc| doc.add_node(NewNode::new("http", "Fetch", Position::new(0.0, 0.0))))
//!     .await
//!     .map(|((id, _hash), ticket)| (id, ticket))?;
//! flow.wait_acked(&ticket, Duration::from_secs(10)).await?;
//! println!("added {id}: {}", flow.to_json());
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # Sync and rollback
//!
//! After every local edit and every sync frame received for a flow, the replica's
//! pending Automerge sync messages are sent to the hub. The hub acks the changes it
//! stored (`ack {flow_id, changes}`); acks are recorded per flow even when they arrive
//! before the edit that made the change returned. A refused edit is rolled back locally
//! by resyncing from the hub: on an `error` naming a subscribed flow, every pending
//! ticket fails with [`ClientError::Rejected`], the replica is rebuilt without this
//! session's unacknowledged changes (or, failing that, restarted from
//! [`FlowDoc::new`]), and a fresh sync state restarts the exchange, as the hub also
//! reset its side. The hub's frames are applied in place (no copy of the document per
//! frame); should Automerge panic part-way through one, the replica starts over from
//! an empty document the same way, failing its unacknowledged edits.
//!
//! # Reconnecting without losing verdicts
//!
//! A node can store an edit and die (or drain) before its ack leaves. The client then
//! resumes on another connection and settles such edits: [`Client::reconnect`] (explicit,
//! to any node) or [`Client::connect_with_failover`] (automatic, over a list of nodes)
//! subscribes every flow again with its unacknowledged hashes (`subscribe_flow.pending`);
//! the hub acks those it already stored, and the fresh sync resends the rest, acked once
//! stored. [`FlowHandle::wait_acked`] running out of time is
//! [`ClientError::AckUnknown`], never a failure: the edit stays pending and is retried
//! ([`FlowHandle::pending_edits`] counts them). After an `internal` error naming a flow
//! (the hub closed the flow after a failure) the client subscribes to it again by
//! itself, with backoff.
//!
//! Nothing the hub sends can make the client panic: undecodable frames are logged
//! (`tracing`, with `session_id` and `flow_id` fields) and ignored.
//!
//! # Layout
//! - `connection`: [`Client`], [`Welcome`] and the `hello`/`welcome` handshake.
//! - `dispatch`: the state one connection shares, its reader task (dispatching every
//!   frame) and its writer task (the only owner of the socket sink).
//! - `flow`: [`FlowHandle`], edits and the waits built on watch channels.
//! - `flow_state`: what one subscribed flow shares between its handles and the reader
//!   task (below both `dispatch` and `flow`, which send through its `FrameSink`).
//! - `replica`: one flow's replica, sync state and rollback, sans-IO.
//! - `ticket`: [`EditTicket`] and the per-flow ack/rejection bookkeeping.
//! - `endpoint`: building the WebSocket and HTTP URLs from a base URL.
//! - `http`: the HTTP API: [`fetch_flow`], and [`FlowApi`] (typed edits as JSON, diff,
//!   restore, history, named versions).
//! - `error`: [`ClientError`].
//! - `bin/flowhub-cli.rs`: the `flowhub-cli` command line tool (dump, edit, watch).

mod connection;
mod dispatch;
pub mod endpoint;
mod error;
mod flow;
mod flow_state;
mod http;
mod replica;
mod ticket;

use std::time::Duration;

pub use connection::{Client, Welcome};
pub use error::ClientError;
pub use flow::FlowHandle;
pub use http::{fetch_flow, EditsApplied, FlowApi, JsonFlowStream};
pub use ticket::EditTicket;

pub use flowhub_crdt::{
    ChangeHash, CrdtError, Edge, Edit, Endpoint, FlowDiff, FlowDoc, FlowSnapshot, NewNode, Node,
    Position,
};
pub use flowhub_protocol::{ClientMessage, ErrorCode, Role, ServerMessage};

/// The timeout of [`Client::connect`], [`Client::request`] and the catch-up wait of
/// [`Client::subscribe`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
