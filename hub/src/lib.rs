//! flowhub: one hub node.
//!
//! A thin layer over [`flowhub_actors`]: an axum server with the WebSocket endpoint
//! and the HTTP API, token verification, the sqlx store, configuration and draining.
//!
//! # Layout
//! - [`server`]: [`Hub`](server::Hub) start/shutdown (drain) and the router.
//! - [`state`]: the shared [`AppState`](state::AppState) and the [`Authenticated`](state::Authenticated) extractor (token from the `Authorization` header or `?token=`).
//! - [`connection`]: one WebSocket connection around a session actor: the reader, the writer, limits and close, shared by every WebSocket transport, each a codec ([`connection::FrameDecoder`], [`connection::FrameEncoder`]).
//! - [`ws`]: `GET /v1/ws`: flowhub's own protocol, the native codec (JSON text, binary sync frames).
//! - [`http`]: `GET /v1/flows/{id}`, `/healthz`, `/readyz`, `/metrics`.
//! - [`flow_api`]: flows without Automerge: typed edits as JSON (`POST /v1/flows/{id}/edits`), `GET …/diff`, `POST …/restore`.
//! - [`runs`]: run ingest by engines, `GET /v1/runs/{id}` (+ `/events`, SSE `/stream`), a flow's runs.
//! - [`sse`]: Server-Sent Events over the session core (the run and flow streams).
//! - [`automerge_repo`]: `GET /v1/automerge-repo`: the automerge-repo WebSocket protocol over the same actors; its messages as serde types in [`automerge_repo::wire`].
//! - [`demo`]: the demo page at `/` (embedded assets) and, on the embedded default, dev endpoints.
//! - [`auth`]: HS256 JWTs: claims, signing, verification.
//! - [`config`]: [`HubConfig`](config::HubConfig) and the embedded default's secret.
//! - [`metrics`]: `/metrics`, the actors' metrics plus the bus, store, runs and process.
//! - [`membership`]: node heartbeats in Redis, `GET /v1/nodes`, presence cleanup of dead nodes.
//! - [`redis_bus`]: the `Bus` on Redis pub/sub (sharded on a Redis Cluster).
//! - [`sql_store`]: the `Store` on PostgreSQL or SQLite through sqlx, with group commit.
//! - [`error`]: [`AppError`](error::AppError), the JSON error body at the HTTP edge.
//! - [`failpoint`]: a test-only switch that aborts the process between a store commit and its ack.

pub mod auth;
pub mod automerge_repo;
pub mod config;
pub mod connection;
pub mod demo;
pub mod error;
pub mod failpoint;
pub mod flow_api;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod redis_bus;
pub mod runs;
pub mod server;
pub mod sql_store;
pub mod sse;
pub mod state;
pub mod ws;

pub use config::HubConfig;
pub use flowhub_actors::EDIT_PATH_TARGET;
pub use server::Hub;
pub use state::AppState;
