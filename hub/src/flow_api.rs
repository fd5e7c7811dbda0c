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
//! - `GET /v1/flows/{id}/history?limit=&before=&gap_ms=`: the changes grouped into
//!   editing sessions (same user, close in time), each with the verified user, when,
//!   the heads after it and what it did.
//! - `POST /v1/flows/{id}/versions` `{name}`, `GET …/versions`, `DELETE
//!   …/versions/{name}`: named versions (pinned heads); `version:NAME` then names one
//!   wherever a version is expected (diff, restore).
//! - `GET /v1/flows/{id}/stream?since=` (Server-Sent Events): the flow as JSON
//!   (`event: flow`), then a JSON Patch per change (`event: patch`), each with the
//!   heads as its event id, so `Last-Event-ID` resumes after a disconnect.
//!
//! Roles, limits and errors are those of the WebSocket: editing needs the editor role,
//! reading any role, and every refusal is a typed JSON error.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flowhub_actors::flow::{
    EditRequest, EditSource, EditsApplied, EditsRefused, FlowMsg, EDITS_MESSAGE_PREFIX, HUB_USER,
};
use flowhub_actors::store::NamedVersion;
use flowhub_crdt::{group_sessions, ChangeHash, ChangeSummary, Edit, EditSummary, FlowDiff};
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
    authorize(&state, &claims, &flow_id, Needs::Edit).await?;
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
    let key = idempotency_key(body.idempotency_key, &headers)?;
    authorize(&state, &claims, &flow_id, Needs::Edit).await?;
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
    authorize(&state, &claims, &flow_id, Needs::Read).await?;
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

/// What a request needs on a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Read,
    Edit,
}

/// Checks the flow id (400) and the caller's effective role (403), by the rule every
/// transport uses ([`effective_role`]); returns the role.
async fn authorize(
    state: &AppState,
    claims: &Claims,
    flow_id: &str,
    needs: Needs,
) -> Result<flowhub_protocol::Role, AppError> {
    validate_flow_id(flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    match effective_role(state, claims, flow_id).await? {
        None => Err(AppError::forbidden("no role on this flow")),
        Some(role) if needs == Needs::Edit && !role.can_edit() => Err(AppError::forbidden(
            format!("role {role:?} cannot edit this flow").to_lowercase(),
        )),
        Some(role) => Ok(role),
    }
}

/// Applies edits for a caller [`authorize`]d to edit them.
async fn apply(
    state: &AppState,
    flow_id: &str,
    claims: &Claims,
    edits: EditSource,
    idempotency_key: Option<String>,
) -> Result<Json<EditsApplied>, AppError> {
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

/// A version of a flow: comma-separated hex heads, `run:RUN_ID` (the heads the run
/// recorded when it started; the run must belong to this flow), or `version:NAME`.
async fn version(state: &AppState, flow_id: &str, spec: &str) -> Result<Vec<ChangeHash>, AppError> {
    if let Some(name) = spec.strip_prefix("version:") {
        let versions = state
            .store
            .named_versions(flow_id)
            .await
            .map_err(AppError::internal)?;
        let version = versions
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| AppError::not_found(format!("no version named `{name}`")))?;
        return flowhub_crdt::parse_heads(&version.heads).map_err(AppError::internal);
    }
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

/// Default gap that ends an editing session in the history.
pub const SESSION_GAP_MS: i64 = 5 * 60 * 1000;
/// Most changes one history page reads.
pub const MAX_HISTORY_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub limit: Option<usize>,
    /// A change hash: the page continues with older changes.
    pub before: Option<String>,
    pub gap_ms: Option<i64>,
}

/// One editing session in `GET …/history`.
#[derive(Debug, serde::Serialize)]
pub struct HistorySession {
    pub user_id: String,
    pub name: String,
    /// Earliest and latest change time (ms since the Unix epoch) as the changes
    /// record it (the hub's clock for JSON edits and repairs, the client's otherwise).
    pub start: i64,
    pub end: i64,
    /// The flow's heads right after the session's newest change.
    pub heads_after: Vec<String>,
    /// The session's changes, newest first.
    pub changes: Vec<String>,
    pub summary: EditSummary,
}

#[derive(Debug, serde::Serialize)]
pub struct HistoryPage {
    pub sessions: Vec<HistorySession>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// `GET /v1/flows/{id}/history?limit=&before=&gap_ms=`.
pub async fn get_history(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, AppError> {
    authorize(&state, &claims, &flow_id, Needs::Read).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_HISTORY_PAGE);
    let before = match query.before.as_deref().filter(|b| !b.is_empty()) {
        Some(hex) => Some(
            flowhub_crdt::parse_heads(&[hex])
                .map_err(|e| AppError::bad_request(format!("before: {e}")))?[0],
        ),
        None => None,
    };
    let flow = open(&state, &flow_id).await?;
    let mut changes: Vec<ChangeSummary> = match flow
        .call(
            |reply| FlowMsg::History {
                limit,
                before,
                reply,
            },
            None,
        )
        .await
    {
        Ok(CallResult::Success(Ok(changes))) => changes,
        Ok(CallResult::Success(Err(refused))) => return Err(refusal(refused)),
        _ => return Err(AppError::internal("the flow actor stopped; retry")),
    };
    for change in &mut changes {
        change.timestamp = as_millis(change.timestamp);
    }
    let owners: std::collections::HashMap<String, (String, String)> = state
        .store
        .flow_actors(&flow_id)
        .await
        .map_err(AppError::internal)?
        .into_iter()
        .map(|b| (b.actor, (b.user_id, b.user_name)))
        .collect();
    let author = |change: &ChangeSummary| -> (String, String) {
        match owners.get(&change.actor) {
            // The hub's own change: a JSON edit names the verified caller in its
            // message (the hub wrote it); a repair is the hub's.
            Some((user, _)) if user == HUB_USER => change
                .message
                .as_deref()
                .and_then(|m| m.strip_prefix(EDITS_MESSAGE_PREFIX))
                .and_then(|rest| rest.split(' ').next())
                .map(|user| (user.to_owned(), user.to_owned()))
                .unwrap_or_else(|| (HUB_USER.to_owned(), HUB_USER.to_owned())),
            Some((user, name)) => (user.clone(), name.clone()),
            // Changes from before attribution was recorded, or the genesis.
            None => (String::new(), String::new()),
        }
    };
    let gap = query.gap_ms.unwrap_or(SESSION_GAP_MS).max(0);
    let sessions = group_sessions(&changes, author, gap)
        .into_iter()
        .map(|s| HistorySession {
            user_id: s.author.0,
            name: s.author.1,
            start: s.start,
            end: s.end,
            heads_after: s
                .changes
                .first()
                .map(|h| vec![h.to_string()])
                .unwrap_or_default(),
            changes: s.changes.iter().map(ToString::to_string).collect(),
            summary: s.summary,
        })
        .collect();
    let next_before = (changes.len() == limit)
        .then(|| changes.last().map(|c| c.hash.to_string()))
        .flatten();
    Ok(Json(HistoryPage {
        sessions,
        next_before,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    pub name: String,
}

/// `POST /v1/flows/{id}/versions` `{name}`: pins the current heads (editor role).
pub async fn post_version(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    body: Result<Json<NewVersion>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<NamedVersion>), AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(
            AppError::bad_request("name: 1..=200 characters without control characters")
                .with_field("name"),
        );
    }
    authorize(&state, &claims, &flow_id, Needs::Edit).await?;
    let flow = open(&state, &flow_id).await?;
    let heads = ractor::call!(flow, FlowMsg::Heads)
        .map_err(|_| AppError::internal("the flow actor stopped; retry"))?;
    let version = NamedVersion {
        name: name.to_owned(),
        heads,
        user_id: claims.sub.clone(),
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let created = state
        .store
        .put_named_version(&flow_id, &version)
        .await
        .map_err(AppError::internal)?;
    if !created {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            ErrorCode::BadRequest,
            format!("a version named `{name}` exists"),
        ));
    }
    Ok((StatusCode::CREATED, Json(version)))
}

/// `GET /v1/flows/{id}/versions`: named versions, oldest first.
pub async fn get_versions(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
) -> Result<Json<serde_json::Value>, AppError> {
    authorize(&state, &claims, &flow_id, Needs::Read).await?;
    let versions = state
        .store
        .named_versions(&flow_id)
        .await
        .map_err(AppError::internal)?;
    Ok(Json(serde_json::json!({ "versions": versions })))
}

/// `DELETE /v1/flows/{id}/versions/{name}` (editor role).
pub async fn delete_version(
    State(state): State<AppState>,
    Path((flow_id, name)): Path<(String, String)>,
    Authenticated(claims): Authenticated,
) -> Result<StatusCode, AppError> {
    authorize(&state, &claims, &flow_id, Needs::Edit).await?;
    let deleted = state
        .store
        .delete_named_version(&flow_id, &name)
        .await
        .map_err(AppError::internal)?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::not_found(format!("no version named `{name}`")))
    }
}

/// A change time in milliseconds. flowhub's clients and the hub write milliseconds;
/// stock Automerge writes seconds, which read as a date in 1970 when taken as
/// milliseconds: anything below 10^11 (March 1973 in ms, year 5138 in s) is seconds.
fn as_millis(t: i64) -> i64 {
    if t > 0 && t < 100_000_000_000 {
        t * 1000
    } else {
        t
    }
}

/// Keep-alive comments on idle flow streams (proxies close silent connections).
const STREAM_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Comma-separated hex heads the client already has (the last event id).
    pub since: Option<String>,
}

/// `GET /v1/flows/{id}/stream?since=`: the flow as Server-Sent Events, for clients
/// without Automerge or a WebSocket (phones on locked-down networks, dashboards).
/// `event: flow` carries `flow_json`'s body, `event: patch` one `flow_patch`; every
/// event's id is the flow's heads after it, so a reconnecting `EventSource` (which
/// repeats it as `Last-Event-ID`) gets one patch for what it missed.
pub async fn get_stream(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<axum::response::Response, AppError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::IntoResponse;
    use flowhub_protocol::{ClientMessage, FlowFormat, ServerMessage};

    validate_flow_id(&flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.since)
        .unwrap_or_default();
    let since_heads: Vec<String> = since
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    flowhub_crdt::parse_heads(&since_heads)
        .map_err(|e| AppError::bad_request(format!("since: {e}")).with_field("since"))?;
    let subscribe = ClientMessage::SubscribeFlow {
        id: None,
        flow_id,
        pending: Vec::new(),
        stream: false,
        format: FlowFormat::Json,
        since_heads,
    };
    // The session checks the caller's role on the flow.
    let session = crate::sse::SseSession::open(
        &state,
        flowhub_actors::identity::Identity::from(&claims),
        subscribe,
    )
    .await?;
    struct Feed {
        session: crate::sse::SseSession,
        /// An `error` event was sent (access revoked): the stream ends.
        ended: bool,
    }
    let feed = Feed {
        session,
        ended: false,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        if feed.ended {
            return None;
        }
        loop {
            let event = match feed.session.next().await? {
                ServerMessage::FlowJson { heads, flow, .. } => Event::default()
                    .id(heads.join(","))
                    .event("flow")
                    .data(flow.to_string()),
                ServerMessage::FlowPatch {
                    from_heads,
                    heads,
                    patch,
                    authors,
                    ..
                } => Event::default().id(heads.join(",")).event("patch").data(
                    serde_json::json!({"from_heads": from_heads, "heads": heads, "patch": patch, "authors": authors})
                        .to_string(),
                ),
                // Access revoked: say so and end the stream.
                ServerMessage::Error { code, message, .. } => {
                    feed.ended = true;
                    Event::default()
                        .event("error")
                        .data(serde_json::json!({"code": code, "message": message}).to_string())
                }
                _ => continue,
            };
            return Some((Ok::<Event, std::convert::Infallible>(event), feed));
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response())
}
