//! flowhub: one hub node.
//!
//! A thin layer over [`flowhub_actors`]: an axum server with the WebSocket endpoint
//! and the HTTP API, token verification, the sqlx store, configuration and draining.
//!
//! # Layout
//! - [`server`]: [`Hub`](server::Hub) start/shutdown, the router and shared [`AppState`](server::AppState).
//! - [`ws`]: `GET /v1/ws`: authenticate, upgrade, the socket reader and writer of a session.
//! - [`http`]: `GET /v1/flows/{id}`, `/healthz`, `/readyz`, `/metrics`.
//! - [`auth`]: HS256 JWTs: claims, signing, verification.
//! - [`config`]: [`HubConfig`](config::HubConfig) and the embedded default's secret.
//! - [`sql_store`]: the `Store` on PostgreSQL or SQLite through sqlx, with group commit.
//! - [`error`]: [`AppError`](error::AppError), the JSON error body at the HTTP edge.

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod server;
pub mod sql_store;
pub mod ws;

pub use config::HubConfig;
pub use server::{AppState, Hub};
