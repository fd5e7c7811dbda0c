//! The demo page at `/`: the flow as a canvas, co-edited live (hub/static/).
//!
//! The assets are embedded in the binary, so `cargo run -p flowhub` serves the page
//! with no npm step. `hub/static/app.js` is a committed esbuild bundle of
//! `hub/static/src/app.ts` and the `@flowhub/client` package (clients/js); rebuild it
//! with `npm run build:demo` in clients/js (`npm run check:demo` verifies it is current).
//!
//! Only when the operator turns the demo on (`flowhub demo`, `--demo`,
//! `FLOWHUB_DEMO=1`; see [`HubConfig::demo`](crate::config::HubConfig::demo)), two
//! development endpoints make the page usable without minting tokens by hand:
//! - `POST /v1/dev/token {"name": "Alice", "flow": "demo"}` → `{"token", "user_id",
//!   "name", "flow"}`: an editor token for that flow (default `demo`), valid 12 hours.
//!   The user id is stable per browser (a `flowhub_demo_id` cookie), so presence shows
//!   one person per browser and `flow_members` can revoke them.
//! - `POST /v1/dev/simulate-run {"flow_id": "demo", "fail_node"?, "step_ms"?}` (any
//!   token with a role on the flow) → `{"run_id"}`: plays a run of the flow's nodes in
//!   topological order through [`RunRegistry::ingest`](flowhub_actors::run::RunRegistry::ingest),
//!   the code path behind `POST /v1/runs/{id}/events`, one event at a time like an
//!   engine would.
//!
//! Both answer only requests whose `Host` names the address the hub listens on
//! ([`check_host`]): a page on another origin that rebinds its DNS name to 127.0.0.1
//! sends its own name and is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowhub_actors::flow::FlowMsg;
use flowhub_actors::identity::Identity;
use flowhub_protocol::run::LogLevel;
use flowhub_protocol::{validate_flow_id, Role, RunEventInput, RunEventKind, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::auth::{now_secs, Claims};
use crate::error::AppError;
use crate::state::{authenticate, AppState, TokenQuery};

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");
const AUTOMERGE_WASM: &[u8] = include_bytes!("../static/automerge.wasm");

/// The page's routes, plus the development endpoints when the demo is on.
pub fn routes(config: &crate::config::HubConfig) -> Router<AppState> {
    let dev = config.demo;
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

/// Refuses a request whose `Host` is not the listen address (DNS rebinding): on a
/// loopback address `localhost` or a loopback IP, on a specific address that address,
/// on a wildcard address any IP literal; always with the listen port.
pub fn check_host(listen: std::net::SocketAddr, headers: &HeaderMap) -> Result<(), AppError> {
    let refused = || AppError::forbidden("the Host header does not name this hub's listen address");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(refused)?;
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') => (name, port.parse::<u16>().ok()),
        _ => (host, Some(80)),
    };
    if port != Some(listen.port()) {
        return Err(refused());
    }
    let literal = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok();
    let ip = listen.ip();
    let ok = match literal {
        None => name.eq_ignore_ascii_case("localhost") && ip.is_loopback(),
        Some(_) if ip.is_unspecified() => true,
        Some(lit) => lit == ip || (ip.is_loopback() && lit.is_loopback()),
    };
    if ok {
        Ok(())
    } else {
        Err(refused())
    }
}

const DEMO_COOKIE: &str = "flowhub_demo_id";

/// This browser's demo id from its cookie, if it sent a well-formed one.
fn demo_id_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == DEMO_COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `POST /v1/dev/token`: an editor token for one flow (development only).
pub async fn dev_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<DevTokenBody>,
) -> Result<Response, AppError> {
    check_host(state.config.listen, &headers)?;
    let name: String = body.name.trim().chars().take(64).collect();
    if name.is_empty() {
        return Err(AppError::bad_request("name: must not be empty"));
    }
    let flow = body.flow.unwrap_or_else(|| "demo".into());
    validate_flow_id(&flow).map_err(|e| AppError::bad_request(e.to_string()))?;
    // One user per browser, whatever name it gives: presence counts people, and an
    // owner can revoke this user through `flow_members`.
    let known = demo_id_of(&headers);
    let demo_id = known
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let user_id = format!("demo-{demo_id}");
    let claims = Claims {
        sub: user_id.clone(),
        name: Some(name.clone()),
        exp: now_secs() + 12 * 3600,
        flows: [(flow.clone(), Role::Editor)].into(),
        svc: false,
    };
    let body = Json(json!({
        "token": state.keys.sign(&claims),
        "user_id": user_id,
        "name": name,
        "flow": flow,
    }));
    if known.is_some() {
        return Ok(body.into_response());
    }
    let cookie =
        format!("{DEMO_COOKIE}={demo_id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000");
    Ok(([(header::SET_COOKIE, cookie)], body).into_response())
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
    check_host(state.config.listen, &headers)?;
    // The Host check comes first, so the token is verified only after it.
    let claims = authenticate(&state, &headers, query.token.as_deref()).await?;
    let flow_id = body.flow_id;
    validate_flow_id(&flow_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    if Identity::from(&claims).role_for(&flow_id).is_none() {
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

    fn host(h: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, h.parse().unwrap());
        headers
    }

    #[test]
    fn host_must_name_the_listen_address() {
        let lo: std::net::SocketAddr = "127.0.0.1:7878".parse().unwrap();
        for ok in [
            "127.0.0.1:7878",
            "localhost:7878",
            "LOCALHOST:7878",
            "[::1]:7878",
        ] {
            assert!(check_host(lo, &host(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "127.0.0.1:80",
            "10.0.0.1:7878",
            "127.0.0.1",
        ] {
            assert!(check_host(lo, &host(bad)).is_err(), "{bad}");
        }
        assert!(check_host(lo, &HeaderMap::new()).is_err());
        let any: std::net::SocketAddr = "0.0.0.0:7878".parse().unwrap();
        assert!(check_host(any, &host("192.0.2.7:7878")).is_ok());
        assert!(check_host(any, &host("evil.example:7878")).is_err());
        let one: std::net::SocketAddr = "192.0.2.7:7878".parse().unwrap();
        assert!(check_host(one, &host("192.0.2.7:7878")).is_ok());
        assert!(check_host(one, &host("192.0.2.8:7878")).is_err());
    }

    #[test]
    fn demo_cookie_is_read_only_when_well_formed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=b; flowhub_demo_id=0123456789abcdef0123456789abcdef"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            demo_id_of(&headers).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        headers.insert(header::COOKIE, "flowhub_demo_id=../../x".parse().unwrap());
        assert_eq!(demo_id_of(&headers), None);
    }

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
