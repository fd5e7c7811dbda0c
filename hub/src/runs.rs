//! The runs API: execution engines report run events, dashboards read and stream runs.
//!
//! - `POST /v1/runs/{run_id}/events` (service token): `{"events": [...]}` or a bare
//!   array of [`RunEventInput`]. Idempotent by event id. Answers
//!   `{"accepted", "duplicates", "last_seq"}`; a bad event is a 422 naming its field
//!   (`{"error": {"code": "bad_request", "message": "...", "field": "events[3].node_id"}}`),
//!   a body that is not JSON a 400.
//! - `GET /v1/runs/{run_id}`: the [`RunSnapshot`](flowhub_protocol::RunSnapshot).
//! - `GET /v1/runs/{run_id}/events?since_seq=&limit=`: `{"events": [...]}`, in order.
//! - `GET /v1/runs/{run_id}/stream`: Server-Sent Events: first `event: run_state` (the
//!   snapshot), then every event after `Last-Event-ID` (or `?since_seq=`) as
//!   `id: <seq>` / `event: run_event` / `data: <RunEvent JSON>`, then live events, with
//!   keep-alive comments. A browser's `EventSource` reconnects with `Last-Event-ID` by
//!   itself, so a dropped stream resumes with no gap and no duplicate.
//! - `GET /v1/flows/{flow_id}/runs?limit=`: `{"runs": [RunSummary...]}`, newest first.
//!
//! Reading needs a role on the run's flow (the token's, overridden by `flow_members`,
//! as for `subscribe_flow`) or a service token. Tokens come from `Authorization:
//! Bearer` or `?token=`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowhub_actors::identity::Identity;
use flowhub_actors::run::{validate_run_id, IngestOutcome, InvalidEvent, RunError};
use flowhub_actors::store::StoreError;
use flowhub_protocol::run::LogLevel;
use flowhub_protocol::{
    ClientMessage, RunEvent, RunEventInput, RunEventKind, RunSnapshot, RunStatus, ServerMessage,
};
use serde_json::Value;
use tracing::{debug, Instrument};

use crate::auth::Claims;
use crate::error::AppError;
use crate::sse::SseSession;
use crate::state::{AppState, Authenticated};

/// Largest ingest body (a batch of up to 10,000 events).
const MAX_INGEST_BYTES: usize = 16 << 20;
/// Default and largest page of `GET /v1/runs/{id}/events`.
const DEFAULT_EVENTS_PAGE: usize = 1000;
const MAX_EVENTS_PAGE: usize = flowhub_actors::run::registry::MAX_EVENTS_PAGE;
/// Default and largest page of `GET /v1/flows/{id}/runs`.
const DEFAULT_RUNS_PAGE: usize = 50;
const MAX_RUNS_PAGE: usize = 1000;
/// SSE keep-alive comment period (proxies drop silent connections).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/runs/{run_id}/events",
            post(post_events)
                .get(get_events)
                .layer(DefaultBodyLimit::max(MAX_INGEST_BYTES)),
        )
        .route("/v1/runs/{run_id}", get(get_run))
        .route("/v1/runs/{run_id}/stream", get(stream))
        .route("/v1/flows/{flow_id}/runs", get(flow_runs))
}

type Params = HashMap<String, String>;

/// An optional numeric query parameter; a bad value is a 400 naming it.
fn param<T: std::str::FromStr>(params: &Params, name: &str) -> Result<Option<T>, AppError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            AppError::bad_request(format!("{name}: expected a non-negative integer"))
                .with_field(name)
        }),
    }
}

fn check_run_id(run_id: &str) -> Result<(), AppError> {
    validate_run_id(run_id).map_err(invalid)
}

fn invalid(e: InvalidEvent) -> AppError {
    AppError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        flowhub_protocol::ErrorCode::BadRequest,
        e.to_string(),
    )
    .with_field(e.field)
}

fn run_error(e: RunError) -> AppError {
    match e {
        RunError::Invalid(e) => invalid(e),
        RunError::Store(StoreError::Unavailable(cause)) => {
            tracing::warn!(cause, "run store unavailable");
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                flowhub_protocol::ErrorCode::Internal,
                "the store is unavailable; retry",
            )
        }
        RunError::Flow(cause) => {
            tracing::warn!(cause, "cannot read flow heads for run.started");
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                flowhub_protocol::ErrorCode::Internal,
                "cannot read the flow's heads; retry",
            )
        }
        e => AppError::internal(e),
    }
}

/// Whether `claims` may read runs of `flow_id`: a service token, or a role on the flow
/// (the token's, overridden by a `flow_members` row).
async fn can_read(state: &AppState, claims: &Claims, flow_id: &str) -> Result<bool, AppError> {
    if claims.svc {
        return Ok(true);
    }
    Ok(crate::http::effective_role(state, claims, flow_id)
        .await?
        .is_some())
}

/// The run's state, once the caller is known to be allowed to read it.
async fn readable_run(
    state: &AppState,
    claims: &Claims,
    run_id: &str,
) -> Result<RunSnapshot, AppError> {
    check_run_id(run_id)?;
    let Some(run) = state.runs.snapshot(run_id).await.map_err(run_error)? else {
        return Err(AppError::not_found(format!("no run `{run_id}`")));
    };
    if !can_read(state, claims, &run.flow_id).await? {
        return Err(AppError::forbidden("no role on this run's flow"));
    }
    Ok(run)
}

/// `POST /v1/runs/{run_id}/events`.
pub async fn post_events(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    Authenticated(claims): Authenticated,
    body: Bytes,
) -> Result<Json<IngestOutcome>, AppError> {
    if !claims.svc {
        return Err(AppError::forbidden("run ingest needs a service token"));
    }
    check_run_id(&run_id)?;
    let events = parse_batch(&body)?;
    let span = tracing::info_span!("ingest", run_id = %run_id, engine = %claims.sub, events = events.len());
    let outcome = state
        .runs
        .ingest(&run_id, events)
        .instrument(span)
        .await
        .map_err(run_error)?;
    Ok(Json(outcome))
}

/// `GET /v1/runs/{run_id}`.
pub async fn get_run(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    Authenticated(claims): Authenticated,
) -> Result<Json<RunSnapshot>, AppError> {
    Ok(Json(readable_run(&state, &claims, &run_id).await?))
}

/// `GET /v1/runs/{run_id}/events?since_seq=&limit=`.
pub async fn get_events(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    Query(params): Query<Params>,
    Authenticated(claims): Authenticated,
) -> Result<Json<Value>, AppError> {
    let since: u64 = param(&params, "since_seq")?.unwrap_or(0);
    let limit: usize = param(&params, "limit")?
        .unwrap_or(DEFAULT_EVENTS_PAGE)
        .min(MAX_EVENTS_PAGE);
    readable_run(&state, &claims, &run_id).await?;
    let events: Vec<RunEvent> = state
        .runs
        .events(&run_id, since, limit)
        .await
        .map_err(run_error)?;
    Ok(Json(serde_json::json!({ "events": events })))
}

/// `GET /v1/flows/{flow_id}/runs?limit=`.
pub async fn flow_runs(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Query(params): Query<Params>,
    Authenticated(claims): Authenticated,
) -> Result<Json<Value>, AppError> {
    flowhub_protocol::validate_flow_id(&flow_id)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    let limit: usize = param(&params, "limit")?
        .unwrap_or(DEFAULT_RUNS_PAGE)
        .min(MAX_RUNS_PAGE);
    if !can_read(&state, &claims, &flow_id).await? {
        return Err(AppError::forbidden("no role on this flow"));
    }
    let runs = state
        .runs
        .flow_runs(&flow_id, limit)
        .await
        .map_err(run_error)?;
    Ok(Json(serde_json::json!({ "runs": runs })))
}

/// `GET /v1/runs/{run_id}/stream`: Server-Sent Events (see the module doc).
pub async fn stream(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    Query(params): Query<Params>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    // The standard reconnect header wins over the query, which a browser repeats.
    let since = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                AppError::bad_request("Last-Event-ID: expected a sequence number")
                    .with_field("Last-Event-ID")
            })?,
        None => param(&params, "since_seq")?.unwrap_or(0),
    };
    check_run_id(&run_id)?;
    let subscribe = ClientMessage::SubscribeRun {
        id: None,
        run_id: run_id.clone(),
        since_seq: Some(since),
    };
    // The session checks the run and the caller's role on its flow.
    let session = SseSession::open(&state, Identity::from(&claims), subscribe).await?;
    debug!(run_id, since, "SSE watcher joined");
    let feed = RunFeed {
        session,
        run_id,
        position: since,
        final_seq: None,
        ended: false,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next_event().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

/// One run's SSE stream: its session's run messages as events.
struct RunFeed {
    session: SseSession,
    run_id: String,
    /// The last sequence number this stream delivered (or the client had).
    position: u64,
    /// The last sequence of a finished run: once delivered, the stream ends instead
    /// of sending keep-alives forever.
    final_seq: Option<u64>,
    ended: bool,
}

impl RunFeed {
    /// The next SSE event; `None` ends the stream (the node drains, or the session
    /// closed).
    async fn next_event(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            match self.session.next().await? {
                ServerMessage::RunState { run, .. } => {
                    if run.status.is_final() {
                        self.final_seq = Some(run.last_seq);
                        self.ended = self.position >= run.last_seq;
                    }
                    return Some(Event::default().event("run_state").data(to_json(&run)));
                }
                ServerMessage::RunEvent { event, .. } => {
                    self.position = self.position.max(event.seq);
                    self.ended = event.event.kind == RunEventKind::RunFinished
                        || self.final_seq.is_some_and(|last| self.position >= last);
                    return Some(
                        Event::default()
                            .id(event.seq.to_string())
                            .event("run_event")
                            .data(to_json(&event)),
                    );
                }
                ServerMessage::ResumeFrom { seq, .. } => {
                    // This stream fell behind: pick up where it is, transparently.
                    debug!(run_id = %self.run_id, seq, "SSE watcher resumes");
                    let again = ClientMessage::SubscribeRun {
                        id: None,
                        run_id: self.run_id.clone(),
                        since_seq: Some(seq),
                    };
                    if self.session.request(again).await.is_err() {
                        return None;
                    }
                }
                _ => {}
            }
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The events of an ingest body: `{"events": [...]}` or a bare array. Each event is
/// checked field by field so an error names the field at fault.
fn parse_batch(body: &[u8]) -> Result<Vec<RunEventInput>, AppError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request(format!("malformed JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut obj) => match obj.remove("events") {
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(invalid(InvalidEvent::new(
                    "events",
                    "expected an array of events",
                )))
            }
            None => return Err(invalid(InvalidEvent::new("events", "required"))),
        },
        _ => {
            return Err(
                AppError::bad_request("expected {\"events\": [...]} or an array of events")
                    .with_field("events"),
            )
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| parse_event(i, v).map_err(invalid))
        .collect()
}

fn parse_event(i: usize, value: &Value) -> Result<RunEventInput, InvalidEvent> {
    let Some(obj) = value.as_object() else {
        return Err(InvalidEvent::new(
            format!("events[{i}]"),
            "expected an object",
        ));
    };
    for required in ["event_id", "type", "flow_id", "ts"] {
        if obj.get(required).is_none_or(Value::is_null) {
            return Err(InvalidEvent::new(
                format!("events[{i}].{required}"),
                "required",
            ));
        }
    }
    match serde_json::from_value::<RunEventInput>(value.clone()) {
        Ok(event) => Ok(event),
        Err(whole) => {
            // Find the field at fault by reading each known field on its own.
            for (key, v) in obj {
                if let Some(problem) = field_problem(key, v) {
                    return Err(InvalidEvent::new(format!("events[{i}].{key}"), problem));
                }
            }
            Err(InvalidEvent::new(format!("events[{i}]"), whole.to_string()))
        }
    }
}

/// Why one field of an event does not decode, if it does not.
fn field_problem(key: &str, v: &Value) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(v: &Value, expected: &str) -> Option<String> {
        serde_json::from_value::<T>(v.clone())
            .err()
            .map(|_| format!("expected {expected}"))
    }
    match key {
        "event_id" | "flow_id" => check::<String>(v, "a string"),
        "node_id" | "error" | "message" => check::<Option<String>>(v, "a string"),
        "type" => check::<RunEventKind>(v, "one of run.started, step.started, step.succeeded, step.failed, step.retrying, log, run.finished"),
        "ts" => check::<u64>(v, "milliseconds since the Unix epoch (a non-negative integer)"),
        "duration_ms" => check::<Option<u64>>(v, "a non-negative integer"),
        "attempt" => check::<Option<u32>>(v, "a positive integer"),
        "level" => check::<Option<LogLevel>>(v, "one of trace, debug, info, warn, error"),
        "status" => check::<Option<RunStatus>>(v, "one of succeeded, failed, cancelled"),
        "flow_heads" => check::<Option<Vec<String>>>(v, "an array of change hashes"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        parse_batch(body.as_bytes()).err().and_then(|e| e.field)
    }

    #[test]
    fn batches_parse_from_both_shapes() {
        let one = r#"{"event_id":"a","type":"run.started","flow_id":"f","ts":1}"#;
        assert_eq!(parse_batch(format!("[{one}]").as_bytes()).unwrap().len(), 1);
        assert_eq!(
            parse_batch(format!(r#"{{"events":[{one},{one}]}}"#).as_bytes())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn decode_errors_name_the_field() {
        let ok = r#"{"event_id":"a","type":"run.started","flow_id":"f","ts":1}"#;
        assert_eq!(
            field_of(&format!(r#"{{"events":[{ok},{{"type":"log"}}]}}"#)).as_deref(),
            Some("events[1].event_id")
        );
        assert_eq!(
            field_of(r#"[{"event_id":"a","type":"teleport","flow_id":"f","ts":1}]"#).as_deref(),
            Some("events[0].type")
        );
        assert_eq!(
            field_of(r#"[{"event_id":"a","type":"log","flow_id":"f","ts":"noon"}]"#).as_deref(),
            Some("events[0].ts")
        );
        assert_eq!(
            field_of(r#"[{"event_id":"a","type":"log","flow_id":"f","ts":1,"level":"loud"}]"#)
                .as_deref(),
            Some("events[0].level")
        );
        assert_eq!(field_of(r#"[1]"#).as_deref(), Some("events[0]"));
        assert_eq!(field_of(r#"{"events":3}"#).as_deref(), Some("events"));
        assert!(parse_batch(b"{nope").is_err());
    }
}
