//! The demo page at `/`: the flow as a canvas, co-edited live (hub/static/).
//!
//! The assets are embedded in the binary, so `cargo run -p flowhub` serves the page
//! with no npm step. `hub/static/app.js` is a committed esbuild bundle of
//! `hub/static/src/app.ts` and the `@flowhub/client` package (clients/js); rebuild it
//! with `npm run build:demo` in clients/js (`npm run check:demo` verifies it is current).
//!
//! On the embedded default only (no `database_url`), two development endpoints make
//! the page usable without minting tokens by hand:
//! - `POST /v1/dev/token {"name": "Alice", "flow": "demo"}` → `{"token", "user_id",
//!   "name", "flow"}`: an editor token for that flow (default `demo`), valid 12 hours.
//! - `POST /v1/dev/simulate-run {"flow_id": "demo", "fail_node"?, "step_ms"?}` (any
//!   token with a role on the flow) → `{"run_id"}`: plays a run of the flow's nodes in
//!   topological order through [`RunRegistry::ingest`](flowhub_actors::run::RunRegistry::ingest),
//!   the code path behind `POST /v1/runs/{id}/events`, one event at a time like an
//!   engine would.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowhub_actors::flow::FlowMsg;
use flowhub_protocol::run::LogLevel;
use flowhub_protocol::{validate_flow_id, Role, RunEventInput, RunEventKind, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::auth::{now_secs, Claims};
use crate::error::AppError;
use crate::http::{authenticate, TokenQuery};
use crate::server::AppState;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");
const AUTOMERGE_WASM: &[u8] = include_bytes!("../static/automerge.wasm");

/// The page's routes; `dev` adds the development endpoints (embedded default only).
pub fn routes(dev: bool) -> Router<AppState> {
    let router = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/automerge/automerge.wasm", get(wasm));
    if dev {
        router
            .route("/v1/dev/token", post(dev_token))
            .route("/v1/dev/simulate-run", post(simulate_run))
    } else {
        router
    }
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn wasm() -> Response {
    asset("application/wasm", AUTOMERGE_WASM)
}

#[derive(Debug, Deserialize)]
pub struct DevTokenBody {
    pub name: String,
    #[serde(default)]
    pub flow: Option<String>,
}

/// `POST /v1/dev/token`: an editor token for one flow (development only).
pub async fn dev_token(
    State(state): State<AppState>,
    Json(body): Json<DevTokenBody>,
) -> Result<Json<Value>, AppError> {
    let name: String = body.name.trim().chars().take(64).collect();
    if name.is_empty() {
        return Err(AppError::bad_request("name: must not be empty"));
    }
    let flow = body.flow.unwrap_or_else(|| "demo".into());
    validate_flow_id(&flow).map_err(|e| AppError::bad_request(e.to_string()))?;
    let slug: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let user_id = format!("{}-{suffix}", slug.trim_matches('-'));
    let claims = Claims {
        sub: user_id.clone(),
        name: Some(name.clone()),
        exp: now_secs() + 12 * 3600,
        flows: [(flow.clone(), Role::Editor)].into(),
        svc: false,
    };
    Ok(Json(json!({
        "token": state.keys.sign(&claims),
        "user_id": user_id,
        "name": name,
        "flow": flow,
    })))
}

#[derive(Debug, Deserialize)]
pub struct SimulateBody {
    pub flow_id: String,
    /// This node's step fails (and the run with it).
    #[serde(default)]
    pub fail_node: Option<String>,
    /// Milliseconds each step runs (default 400, at most 5000).
    #[serde(default)]
    pub step_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Node ids in topological order of the edges (ties, and cycles, by position then id).
fn run_order(flow: &Value) -> Vec<(String, String)> {
    let empty = serde_json::Map::new();
    let nodes = flow["nodes"].as_object().unwrap_or(&empty);
    let pos = |id: &str| {
        let p = &nodes[id]["position"];
        (
            p["x"].as_f64().unwrap_or(0.0),
            p["y"].as_f64().unwrap_or(0.0),
        )
    };
    let mut indegree: BTreeMap<String, usize> = nodes.keys().map(|k| (k.clone(), 0)).collect();
    let mut next: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(edges) = flow["edges"].as_object() {
        for e in edges.values() {
            let (Some(s), Some(t)) = (e["source"]["node"].as_str(), e["target"]["node"].as_str())
            else {
                continue;
            };
            if indegree.contains_key(s)
                && indegree.contains_key(t)
                && next.entry(s.to_owned()).or_default().insert(t.to_owned())
            {
                *indegree.entry(t.to_owned()).or_default() += 1;
            }
        }
    }
    let by_pos = |ids: &mut Vec<String>| {
        ids.sort_by(|a, b| {
            let (pa, pb) = (pos(a), pos(b));
            pa.0.total_cmp(&pb.0)
                .then(pa.1.total_cmp(&pb.1))
                .then(a.cmp(b))
        })
    };
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    while done.len() < indegree.len() {
        let mut ready: Vec<String> = indegree
            .iter()
            .filter(|(id, d)| **d == 0 && !done.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if ready.is_empty() {
            // A cycle: take the leftmost remaining node.
            ready = indegree
                .keys()
                .filter(|id| !done.contains(*id))
                .cloned()
                .collect();
            by_pos(&mut ready);
            ready.truncate(1);
        }
        by_pos(&mut ready);
        for id in ready {
            done.insert(id.clone());
            for t in next.get(&id).into_iter().flatten() {
                if let Some(d) = indegree.get_mut(t) {
                    *d = d.saturating_sub(1);
                }
            }
            let label = nodes[&id]["label"].as_str().unwrap_or("").to_owned();
            order.push((id, label));
        }
    }
    order
}

/// `POST /v1/dev/simulate-run`: plays a run of the flow (development only).
pub async fn simulate_run(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    Json(body): Json<SimulateBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let claims = authenticate(&state, &headers, &query)?;
    let flow_id = body.flow_id;
    validate_flow_id(&flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    if claims.identity().role_for(&flow_id).is_none() {
        return Err(AppError::forbidden("the token grants no role on this flow"));
    }
    let actor = state
        .registry
        .get_or_spawn(&flow_id)
        .await
        .map_err(AppError::internal)?;
    let flow = ractor::call!(actor, FlowMsg::ToJson).map_err(AppError::internal)?;
    let order = run_order(&flow);
    let run_id = format!("sim-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let step = Duration::from_millis(body.step_ms.unwrap_or(400).min(5000));
    let fail_node = body.fail_node;
    info!(run_id, flow_id, steps = order.len(), "simulating a run");
    let runs = state.runs.clone();
    let id = run_id.clone();
    tokio::spawn(async move {
        let mut n = 0u32;
        let mut event = |kind: RunEventKind, node: Option<&str>| {
            n += 1;
            RunEventInput {
                event_id: format!("{id}-{n}"),
                kind,
                flow_id: flow_id.clone(),
                node_id: node.map(str::to_owned),
                ts: now_ms(),
                duration_ms: None,
                error: None,
                level: None,
                message: None,
                attempt: None,
                status: None,
                flow_heads: None,
            }
        };
        let mut batches = vec![vec![event(RunEventKind::RunStarted, None)]];
        let mut status = RunStatus::Succeeded;
        for (node, label) in &order {
            batches.push(vec![
                event(RunEventKind::StepStarted, Some(node)),
                RunEventInput {
                    level: Some(LogLevel::Info),
                    message: Some(format!("running {label}")),
                    ..event(RunEventKind::Log, Some(node))
                },
            ]);
            if fail_node.as_deref() == Some(node.as_str()) {
                batches.push(vec![
                    RunEventInput {
                        error: Some(format!("{label} failed (simulated)")),
                        ..event(RunEventKind::StepFailed, Some(node))
                    },
                    RunEventInput {
                        level: Some(LogLevel::Error),
                        message: Some(format!("{label} failed")),
                        ..event(RunEventKind::Log, Some(node))
                    },
                ]);
                status = RunStatus::Failed;
                break;
            }
            batches.push(vec![event(RunEventKind::StepSucceeded, Some(node))]);
        }
        batches.push(vec![RunEventInput {
            status: Some(status),
            ..event(RunEventKind::RunFinished, None)
        }]);
        for (i, mut batch) in batches.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(step / 2).await;
            }
            let ts = now_ms();
            for e in &mut batch {
                e.ts = ts;
            }
            if let Err(e) = runs.ingest(&id, batch).await {
                warn!(run_id = id, error = %e, "simulated run stopped");
                return;
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": run_id }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_order_follows_edges_then_position() {
        let flow = json!({
            "nodes": {
                "a": {"label": "A", "position": {"x": 300.0, "y": 0.0}},
                "b": {"label": "B", "position": {"x": 0.0, "y": 0.0}},
                "c": {"label": "C", "position": {"x": 100.0, "y": 0.0}},
            },
            "edges": {
                "e1": {"source": {"node": "a", "port": "out"}, "target": {"node": "b", "port": "in"}},
            }
        });
        let ids: Vec<String> = run_order(&flow).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec!["c", "a", "b"]);
    }
}
