//! [`AppState`], what every handler shares, and [`Authenticated`], the extractor that
//! verifies the caller's token against it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use flowhub_actors::flow::FlowRegistry;
use flowhub_actors::metrics::Metrics;
use flowhub_actors::run::RunRegistry;
use flowhub_actors::store::Store;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Claims, Verifier};
use crate::automerge_repo::document_id::DocumentIds;
use crate::config::HubConfig;
use crate::error::AppError;
use crate::membership::Membership;
use crate::redis_bus::RedisBus;
use crate::sql_store::SqlStore;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<HubConfig>,
    /// Verifies tokens (shared secret, identity provider) and signs the hub's own.
    pub keys: Verifier,
    pub registry: FlowRegistry,
    /// Run actors (live run progress, `hub/src/runs.rs`).
    pub runs: RunRegistry,
    pub store: Arc<dyn Store>,
    pub sql: Option<Arc<SqlStore>>,
    pub metrics: Arc<Metrics>,
    /// `/metrics` beyond the actors' (bus, store, runs, process).
    pub hub_metrics: Arc<crate::metrics::HubMetrics>,
    pub node_id: String,
    /// The Redis bus and node membership, when `redis_url` is configured.
    pub redis: Option<RedisBus>,
    pub membership: Option<Membership>,
    /// Cancelled when the node starts draining: every long-lived connection then
    /// closes (1012, "reconnect elsewhere").
    pub shutdown: CancellationToken,
    /// Every long-lived connection (WebSocket, SSE stream); draining waits for them.
    pub connection_tasks: TaskTracker,
    /// One permit per open long-lived connection (`HubConfig::max_connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Flow ids and automerge-repo DocumentIds, remembered for every connection of
    /// `/v1/automerge-repo`.
    pub document_ids: Arc<DocumentIds>,
}

impl AppState {
    /// A permit for one more long-lived connection, held for its whole life; 503 when
    /// the node is full (the client should try another node).
    pub fn admit_connection(&self) -> Result<tokio::sync::OwnedSemaphorePermit, AppError> {
        self.connections.clone().try_acquire_owned().map_err(|_| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                flowhub_protocol::ErrorCode::RateLimited,
                "connection limit reached on this node; connect to another node",
            )
        })
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The caller's verified token: from `Authorization: Bearer …`, else from `?token=`
/// (browsers cannot set headers on a WebSocket or an `EventSource`). A missing or
/// bad token is a 401 before the handler runs, and before any upgrade.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let query = Query::<TokenQuery>::try_from_uri(&parts.uri)
            .map_err(|e| AppError::bad_request(e.body_text()))?;
        authenticate(state, &parts.headers, query.0.token.as_deref())
            .await
            .map(Authenticated)
    }
}

/// What [`Authenticated`] does, for a handler that must check something else first
/// (the demo checks the Host header before anything).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Claims, AppError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = bearer
        .or(query_token)
        .ok_or_else(|| AppError::unauthorized("no token"))?;
    state
        .keys
        .verify(token)
        .await
        .map_err(AppError::unauthorized)
}
