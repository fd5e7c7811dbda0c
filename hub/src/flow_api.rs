//! Flows without Automerge: typed edits as JSON, diffs between versions, and restore.
//!
//! - `POST /v1/flows/{id}/edits` `{edits: [...], idempotency_key?}`: the edits (the
//!   `FlowDoc` vocabulary, `flowhub_crdt::Edit`) applied as one change, authored by
//!   the hub for the verified caller; answered once stored, with the new heads.
//! - `GET /v1/flows/{id}/diff?from=&to=`: the typed diff between two versions, each
//!   given as comma-separated hex heads or `run:RUN_ID` (the graph that run executed);
//!   `to` defaults to now.
//! - `POST /v1/flows/{id}/restore` `{to}`: the flow made equal to an earlier version
//!   as one new change (history keeps everything; a concurrent edit still merges).
//!
//! Roles, limits and errors are those of the WebSocket: editing needs the editor role,
//! reading any role, and every refusal is a typed JSON error.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flowhub_actors::flow::{EditRequest, EditSource, EditsApplied, EditsRefused, FlowMsg};
use flowhub_crdt::{ChangeHash, Edit, FlowDiff};
use flowhub_protocol::{validate_flow_id, ErrorCode};
use ractor::rpc::CallResult;
use serde::Deserialize;

use crate::auth::Claims;
use crate::error::AppError;
use crate::http::effective_role;
use crate::state::{AppState, Authenticated};

/// Most edits one request may carry.
pub const MAX_EDITS_PER_REQUEST: usize = 1000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditsBody {
    pub edits: Vec<Edit>,
    /// Also accepted as the `Idempotency-Key` header.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    pub from: String,
    pub to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// Hex heads (comma-separated) or `run:RUN_ID`.
    pub to: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `POST /v1/flows/{id}/edits`.
pub async fn post_edits(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    body: Result<Json<EditsBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EditsApplied>, AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    if body.edits.len() > MAX_EDITS_PER_REQUEST {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("at most {MAX_EDITS_PER_REQUEST} edits per request"),
        ));
    }
    let key = idempotency_key(body.idempotency_key, &headers)?;
    apply(
        &state,
        &flow_id,
        &claims,
        EditSource::Edits(body.edits),
        key,
    )
    .await
}

/// `POST /v1/flows/{id}/restore`.
pub async fn post_restore(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    body: Result<Json<RestoreBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EditsApplied>, AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    validate_flow_id(&flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    let key = idempotency_key(body.idempotency_key, &headers)?;
    let to = version(&state, &flow_id, &body.to).await?;
    apply(&state, &flow_id, &claims, EditSource::RestoreTo(to), key).await
}

/// `GET /v1/flows/{id}/diff?from=&to=`.
pub async fn get_diff(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    Query(query): Query<DiffQuery>,
) -> Result<Json<FlowDiff>, AppError> {
    validate_flow_id(&flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    if effective_role(&state, &claims, &flow_id).await?.is_none() {
        return Err(AppError::forbidden("no role on this flow"));
    }
    let from = version(&state, &flow_id, &query.from).await?;
    let to = match query.to.as_deref().filter(|t| !t.is_empty()) {
        Some(to) => Some(version(&state, &flow_id, to).await?),
        None => None,
    };
    let flow = open(&state, &flow_id).await?;
    match flow
        .call(|reply| FlowMsg::Diff { from, to, reply }, None)
        .await
    {
        Ok(CallResult::Success(Ok(diff))) => Ok(Json(diff)),
        Ok(CallResult::Success(Err(refused))) => Err(refusal(refused)),
        _ => Err(AppError::internal("the flow actor stopped; retry")),
    }
}

async fn apply(
    state: &AppState,
    flow_id: &str,
    claims: &Claims,
    edits: EditSource,
    idempotency_key: Option<String>,
) -> Result<Json<EditsApplied>, AppError> {
    validate_flow_id(flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    match effective_role(state, claims, flow_id).await? {
        Some(role) if role.can_edit() => {}
        Some(role) => {
            return Err(AppError::forbidden(
                format!("role {role:?} cannot edit this flow").to_lowercase(),
            ))
        }
        None => return Err(AppError::forbidden("no role on this flow")),
    }
    let request = EditRequest {
        user_id: claims.sub.clone(),
        edits,
        idempotency_key,
    };
    // The actor may retire between lookup and call; a fresh one reloads the flow.
    for _ in 0..3 {
        let flow = open(state, flow_id).await?;
        let request = request.clone();
        match flow
            .call(|reply| FlowMsg::ApplyEdits { request, reply }, None)
            .await
        {
            Ok(CallResult::Success(Ok(applied))) => return Ok(Json(applied)),
            Ok(CallResult::Success(Err(refused))) => return Err(refusal(refused)),
            _ => continue,
        }
    }
    Err(AppError::internal("the flow actor stopped; retry"))
}

async fn open(state: &AppState, flow_id: &str) -> Result<ractor::ActorRef<FlowMsg>, AppError> {
    state
        .registry
        .get_or_spawn(flow_id)
        .await
        .map_err(AppError::internal)
}

fn refusal(refused: EditsRefused) -> AppError {
    let status = match refused.code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::SchemaViolation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    AppError::new(status, refused.code, refused.message)
}

fn idempotency_key(
    from_body: Option<String>,
    headers: &HeaderMap,
) -> Result<Option<String>, AppError> {
    let key = from_body.or_else(|| {
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    match key {
        Some(k)
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(char::is_control) =>
        {
            Err(AppError::bad_request(format!(
                "idempotency key: 1..={MAX_IDEMPOTENCY_KEY} bytes without control characters"
            ))
            .with_field("idempotency_key"))
        }
        key => Ok(key),
    }
}

/// A version of a flow: comma-separated hex heads, or `run:RUN_ID` (the heads the
/// run recorded when it started; the run must belong to this flow).
async fn version(state: &AppState, flow_id: &str, spec: &str) -> Result<Vec<ChangeHash>, AppError> {
    if let Some(run_id) = spec.strip_prefix("run:") {
        let run = state
            .runs
            .snapshot(run_id)
            .await
            .map_err(AppError::internal)?
            .filter(|run| run.flow_id == flow_id)
            .ok_or_else(|| AppError::not_found(format!("no run `{run_id}` of this flow")))?;
        if run.flow_heads.is_empty() {
            return Err(AppError::not_found(format!(
                "run `{run_id}` has not started: no version recorded"
            )));
        }
        return flowhub_crdt::parse_heads(&run.flow_heads).map_err(AppError::internal);
    }
    let hex: Vec<&str> = spec.split(',').filter(|h| !h.is_empty()).collect();
    flowhub_crdt::parse_heads(&hex).map_err(|e| AppError::bad_request(format!("version: {e}")))
}
