//! Live run progress through a real hub: engines post events over HTTP, watchers
//! follow over WebSocket and SSE and resume after disconnects with no gap and no
//! duplicate; ingest is idempotent and validated; run state, pinned flow heads, the
//! per-flow feed and the HTTP reads are right; the store part runs on SQLite and
//! PostgreSQL (which must be reachable: those tests fail, never skip, without it).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flowhub::sql_store::SqlStore;
use flowhub::Hub;
use flowhub_actors::run::{apply, new_snapshot, RunStore};
use flowhub_client::{fetch_flow, Client, ClientError, ClientMessage, NewNode, Position};
use flowhub_protocol::run::StepStatus;
use flowhub_protocol::{ErrorCode, Role, RunEvent, RunSnapshot, RunStatus, ServerMessage};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);
const TS: u64 = 1_700_000_000_000;

fn viewer(flow: &str) -> String {
    token("vera", &[(flow, Role::Viewer)])
}

/// The i-th event of a run of `total` events: run.started, logs, run.finished.
fn nth_event(flow: &str, i: u64, total: u64) -> Value {
    match i {
        1 => json!({"event_id": "e1", "type": "run.started", "flow_id": flow, "ts": TS}),
        i if i == total => {
            json!({"event_id": format!("e{i}"), "type": "run.finished", "flow_id": flow, "ts": TS + i, "status": "succeeded"})
        }
        i => {
            json!({"event_id": format!("e{i}"), "type": "log", "flow_id": flow, "ts": TS + i, "message": format!("line {i}")})
        }
    }
}

fn events(flow: &str, range: std::ops::RangeInclusive<u64>, total: u64) -> Vec<Value> {
    range.map(|i| nth_event(flow, i, total)).collect()
}

/// An execution engine talking HTTP to the hub.
#[derive(Clone)]
struct Engine {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Engine {
    fn new(hub: &Hub) -> Engine {
        Engine {
            http: reqwest::Client::new(),
            base: format!("http://{}", hub.addr()),
            token: service_token(),
        }
    }

    async fn post_raw(&self, run: &str, body: String, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/runs/{run}/events", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("POST reaches the hub");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, run: &str, events: Vec<Value>) -> (StatusCode, Value) {
        self.post_raw(
            run,
            json!({ "events": events }).to_string(),
            Some(&self.token),
        )
        .await
    }

    async fn post_ok(&self, run: &str, events: Vec<Value>) -> Value {
        let (status, body) = self.post(run, events).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET reaches the hub");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Posts events `from..=total` in batches while watchers watch.
fn post_in_background(
    engine: &Engine,
    run: &str,
    flow: &str,
    from: u64,
    total: u64,
    batch: u64,
) -> tokio::task::JoinHandle<()> {
    let (engine, run, flow) = (engine.clone(), run.to_owned(), flow.to_owned());
    tokio::spawn(async move {
        let mut i = from;
        while i <= total {
            let end = (i + batch - 1).min(total);
            engine.post_ok(&run, events(&flow, i..=end, total)).await;
            i = end + 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

async fn subscribe_run(
    client: &Client,
    run: &str,
    since: Option<u64>,
) -> Result<RunSnapshot, ClientError> {
    match client
        .request(ClientMessage::SubscribeRun {
            id: None,
            run_id: run.into(),
            since_seq: since,
        })
        .await?
    {
        ServerMessage::RunState { run, .. } => Ok(run),
        other => panic!("expected run_state, got {other:?}"),
    }
}

/// Reads `run_event`s until seq `stop_at`, resubscribing on `resume_from`.
async fn collect_ws(
    client: &Client,
    messages: &mut broadcast::Receiver<ServerMessage>,
    run: &str,
    got: &mut Vec<RunEvent>,
    stop_at: u64,
) -> usize {
    let mut resumes = 0;
    while got.last().map_or(0, |e| e.seq) < stop_at {
        let msg = tokio::time::timeout(WAIT, messages.recv())
            .await
            .expect("run events keep coming")
            .expect("the test keeps up with the client");
        match msg {
            ServerMessage::RunEvent { run_id, event } if run_id == run => got.push(event),
            ServerMessage::ResumeFrom { run_id, seq } if run_id == run => {
                assert_eq!(
                    seq,
                    got.last().map_or(0, |e| e.seq),
                    "resume_from names the last event sent"
                );
                resumes += 1;
                subscribe_run(client, run, Some(seq))
                    .await
                    .expect("resubscribe");
            }
            _ => {}
        }
    }
    resumes
}

fn assert_exactly(got: &[RunEvent], total: u64) {
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "every event once, in order"
    );
    for e in got {
        // One engine posting in order: seq n is event e{n}.
        assert_eq!(e.event.event_id, format!("e{}", e.seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ws_watcher_resumes_after_disconnect_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let engine = Engine::new(&hub);
    engine
        .post_ok("run-ws", events("flow-a", 1..=10, 1000))
        .await;
    let posting = post_in_background(&engine, "run-ws", "flow-a", 11, 1000, 10);

    // Step 1: a watcher follows the run live, then drops halfway.
    let first = Client::connect(&hub.ws_url(), &viewer("flow-a"))
        .await
        .unwrap();
    let mut messages = first.messages();
    let state = subscribe_run(&first, "run-ws", None).await.unwrap();
    assert_eq!(state.flow_id, "flow-a");
    let mut got = Vec::new();
    collect_ws(&first, &mut messages, "run-ws", &mut got, 500).await;
    first.close().await;
    let last = got.last().unwrap().seq;

    // Step 2: it reconnects and resumes from the last event it saw.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = Client::connect(&hub.ws_url(), &viewer("flow-a"))
        .await
        .unwrap();
    let mut messages = second.messages();
    let state = subscribe_run(&second, "run-ws", Some(last)).await.unwrap();
    assert!(state.last_seq >= last);
    collect_ws(&second, &mut messages, "run-ws", &mut got, 1000).await;
    posting.await.unwrap();
    assert_exactly(&got, 1000);
    assert!(!second.is_closed());
    second.close().await;
    hub.shutdown().await;
}

/// A raw Server-Sent Events reader over a streaming reqwest response.
struct SseReader {
    response: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseReader {
    async fn open(hub: &Hub, run: &str, token: &str, last_event_id: Option<u64>) -> SseReader {
        let mut req = reqwest::Client::new().get(format!(
            "http://{}/v1/runs/{run}/stream?token={token}",
            hub.addr()
        ));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = req.send().await.expect("stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            response,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped).
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.event.is_some() || !event.data.is_empty() {
                    return event;
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("the stream keeps coming")
                .expect("stream readable")
                .expect("stream not ended");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    /// The server ends the stream (no more events, no keep-alives) within `WAIT`.
    async fn assert_ends(&mut self) {
        loop {
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("the stream of a finished run ends instead of idling")
                .expect("stream readable");
            match chunk {
                None => return,
                Some(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    assert!(
                        !text.contains("event:"),
                        "an event after the run finished: {text}"
                    );
                }
            }
        }
    }

    async fn collect(&mut self, got: &mut Vec<RunEvent>, stop_at: u64) {
        while got.last().map_or(0, |e| e.seq) < stop_at {
            let e = self.next().await;
            assert_eq!(e.event.as_deref(), Some("run_event"), "{e:?}");
            let event: RunEvent = serde_json::from_str(&e.data).expect("RunEvent JSON");
            assert_eq!(e.id, Some(event.seq.to_string()), "id: is the seq");
            got.push(event);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_watcher_resumes_with_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let engine = Engine::new(&hub);
    engine
        .post_ok("run-sse", events("flow-a", 1..=10, 1000))
        .await;
    let posting = post_in_background(&engine, "run-sse", "flow-a", 11, 1000, 10);

    // Step 1: a stream from the start: run_state first, then events; dropped halfway.
    let mut stream = SseReader::open(&hub, "run-sse", &viewer("flow-a"), None).await;
    let first = stream.next().await;
    assert_eq!(first.event.as_deref(), Some("run_state"));
    let state: RunSnapshot = serde_json::from_str(&first.data).unwrap();
    assert_eq!(state.id, "run-sse");
    let mut got = Vec::new();
    stream.collect(&mut got, 500).await;
    drop(stream);
    let last = got.last().unwrap().seq;

    // Step 2: reconnect as EventSource does, with Last-Event-ID.
    let mut stream = SseReader::open(&hub, "run-sse", &viewer("flow-a"), Some(last)).await;
    assert_eq!(stream.next().await.event.as_deref(), Some("run_state"));
    stream.collect(&mut got, 1000).await;
    posting.await.unwrap();
    assert_exactly(&got, 1000);

    // Refusals are plain HTTP errors.
    let (status, _) = engine
        .get("/v1/runs/run-sse/stream", &viewer("flow-b"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = engine.get("/v1/runs/nope/stream", &viewer("flow-a")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    hub.shutdown().await;
}

/// 1000 stored events replayed to a session whose queue holds 64 frames: chunked by
/// free capacity, so all arrive, in order, and the session is never closed as slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_of_1000_events_fits_a_64_frame_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.outbound_queue = 64;
    let hub = Hub::start(cfg).await.expect("hub starts");
    let engine = Engine::new(&hub);
    engine
        .post_ok("run-big", events("flow-a", 1..=1000, 1000))
        .await;

    let client = Client::connect(&hub.ws_url(), &viewer("flow-a"))
        .await
        .unwrap();
    let mut messages = client.messages();
    let state = subscribe_run(&client, "run-big", Some(0)).await.unwrap();
    assert_eq!((state.last_seq, state.status), (1000, RunStatus::Succeeded));
    let mut got = Vec::new();
    let resumes = collect_ws(&client, &mut messages, "run-big", &mut got, 1000).await;
    assert_exactly(&got, 1000);
    assert_eq!(resumes, 0, "a replay paces itself instead of overflowing");
    assert!(!client.is_closed());

    // The same over SSE.
    let mut stream = SseReader::open(&hub, "run-big", &viewer("flow-a"), Some(0)).await;
    assert_eq!(stream.next().await.event.as_deref(), Some("run_state"));
    let mut got = Vec::new();
    stream.collect(&mut got, 1000).await;
    assert_exactly(&got, 1000);
    // The run has finished and everything was delivered: the stream ends (before,
    // it sent keep-alives forever) ...
    stream.assert_ends().await;
    // ... and so does a reconnect that already has every event, after the state.
    let mut stream = SseReader::open(&hub, "run-big", &viewer("flow-a"), Some(1000)).await;
    assert_eq!(stream.next().await.event.as_deref(), Some("run_state"));
    stream.assert_ends().await;

    // A body over the ingest limit gets 413 with the JSON error body, like every
    // other error (it was axum's plain text).
    let engine = Engine::new(&hub);
    let huge = format!("{{\"events\": [\"{}\"]}}", "x".repeat(17 << 20));
    let (status, body) = engine.post_raw("run-huge", huge, Some(&engine.token)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    client.close().await;
    hub.shutdown().await;
}

async fn two_engines_post_the_same_events_twice(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(backend, dir.path()).await;
    let engine = Engine::new(&hub);
    // Each engine posts the same 300 events twice, with different batch sizes, all at once.
    let mut tasks = Vec::new();
    for batch in [30u64, 7, 50, 11] {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut duplicates) = (0, 0);
            let mut i = 1;
            while i <= 300 {
                let end = (i + batch - 1).min(300);
                let body = engine
                    .post_ok("dup-run", events("flow-a", i..=end, 300))
                    .await;
                accepted += body["accepted"].as_u64().unwrap();
                duplicates += body["duplicates"].as_u64().unwrap();
                i = end + 1;
            }
            (accepted, duplicates)
        }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        accepted += a;
        duplicates += d;
    }
    assert_eq!(accepted, 300);
    assert_eq!(duplicates, 900);

    let (status, body) = engine
        .get("/v1/runs/dup-run/events?limit=10000", &viewer("flow-a"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let stored: Vec<RunEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let ids: HashSet<&str> = stored.iter().map(|e| e.event.event_id.as_str()).collect();
    assert_eq!(ids.len(), 300, "each event once");
    let (_, run) = engine.get("/v1/runs/dup-run", &viewer("flow-a")).await;
    assert_eq!(run["lastSeq"], 300);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_post_the_same_events_twice_sqlite() {
    two_engines_post_the_same_events_twice(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_post_the_same_events_twice_postgres() {
    two_engines_post_the_same_events_twice(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_get_4xx_naming_the_field_and_ingest_needs_a_service_token() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let engine = Engine::new(&hub);
    let good = |i: u64| nth_event("flow-a", i, 100);

    // Step 1: a step event without node_id, fourth in its batch.
    let step = json!({"event_id": "s", "type": "step.started", "flow_id": "flow-a", "ts": TS});
    let (status, body) = engine
        .post("bad-run", vec![good(1), good(2), good(3), step])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    assert_eq!(body["error"]["field"], "events[3].node_id");
    assert_eq!(
        body["error"]["message"],
        "events[3].node_id: required for step.started"
    );

    // Step 2: more kinds of bad input, each naming its field.
    let cases: Vec<(Value, &str)> = vec![
        (
            json!([{"event_id": "x", "type": "teleport", "flow_id": "flow-a", "ts": TS}]),
            "events[0].type",
        ),
        (
            json!([{"event_id": "x", "type": "log", "flow_id": "flow-a", "ts": "noon", "message": "m"}]),
            "events[0].ts",
        ),
        (
            json!([{"type": "log", "flow_id": "flow-a", "ts": TS, "message": "m"}]),
            "events[0].event_id",
        ),
        (
            json!([{"event_id": "x", "type": "log", "flow_id": "flow-a", "ts": TS}]),
            "events[0].message",
        ),
        (
            json!([good(1), {"event_id": "y", "type": "log", "flow_id": "flow-b", "ts": TS, "message": "m"}]),
            "events[1].flow_id",
        ),
        (json!({"events": "all of them"}), "events"),
        (
            json!([{"event_id": "x", "type": "run.finished", "flow_id": "flow-a", "ts": TS, "status": "running"}]),
            "events[0].status",
        ),
    ];
    for (body, field) in cases {
        let (status, reply) = engine
            .post_raw("bad-run", body.to_string(), Some(&engine.token))
            .await;
        assert!(status.is_client_error(), "{field}: {status}");
        assert_eq!(reply["error"]["field"], field, "{reply}");
        assert_eq!(reply["error"]["code"], "bad_request");
    }
    let (status, reply) = engine
        .post_raw("bad-run", "{not json".into(), Some(&engine.token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["error"]["code"], "bad_request");
    let (status, reply) = engine.post("bad%20run", vec![good(1)]).await;
    assert!(status.is_client_error());
    assert_eq!(reply["error"]["field"], "run_id");

    // Step 3: a bare array works; a run belongs to one flow for good.
    let (status, reply) = engine
        .post_raw(
            "bad-run",
            json!([good(1), good(2)]).to_string(),
            Some(&engine.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply,
        json!({"accepted": 2, "duplicates": 0, "last_seq": 2})
    );
    let other =
        json!({"event_id": "z", "type": "log", "flow_id": "flow-b", "ts": TS, "message": "m"});
    let (status, reply) = engine.post("bad-run", vec![other]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply["error"]["field"], "events[0].flow_id");

    // Step 4: who may post.
    let user = token("alice", &[("*", Role::Owner)]);
    let (status, reply) = engine
        .post_raw("bad-run", json!([good(3)]).to_string(), Some(&user))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(reply["error"]["code"], "forbidden");
    let (status, reply) = engine
        .post_raw("bad-run", json!([good(3)]).to_string(), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply["error"]["code"], "unauthorized");

    // Nothing of the refused batches was stored.
    let (_, body) = engine
        .get("/v1/runs/bad-run/events", &viewer("flow-a"))
        .await;
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    hub.shutdown().await;
}

async fn run_state_and_http_reads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(backend, dir.path()).await;
    let engine = Engine::new(&hub);
    let flow = "flow-s";
    let e = |id: &str, kind: &str, extra: Value| {
        let mut v = json!({"event_id": id, "type": kind, "flow_id": flow, "ts": TS});
        if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(more.clone());
        }
        v
    };
    engine
        .post_ok("older-run", vec![e("o1", "run.started", json!({}))])
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let heads = vec!["ab".repeat(32)];
    engine
        .post_ok(
            "run-s",
            vec![
                e("1", "run.started", json!({"flow_heads": heads, "ts": TS})),
                e(
                    "2",
                    "step.started",
                    json!({"node_id": "fetch", "ts": TS + 10}),
                ),
                e(
                    "3",
                    "log",
                    json!({"node_id": "fetch", "ts": TS + 20, "level": "warn", "message": "slow"}),
                ),
                e(
                    "4",
                    "step.succeeded",
                    json!({"node_id": "fetch", "ts": TS + 250, "duration_ms": 240}),
                ),
                e(
                    "5",
                    "step.started",
                    json!({"node_id": "send", "ts": TS + 300}),
                ),
                e(
                    "6",
                    "step.retrying",
                    json!({"node_id": "send", "ts": TS + 400, "error": "timeout"}),
                ),
                e(
                    "7",
                    "step.started",
                    json!({"node_id": "send", "ts": TS + 500}),
                ),
                e(
                    "8",
                    "step.failed",
                    json!({"node_id": "send", "ts": TS + 560, "error": "HTTP 500"}),
                ),
            ],
        )
        .await;
    engine
        .post_ok(
            "run-s",
            vec![e(
                "9",
                "run.finished",
                json!({"status": "failed", "ts": TS + 600}),
            )],
        )
        .await;

    // GET /v1/runs/{id}: the snapshot, camelCase.
    let reader = viewer(flow);
    let (status, body) = engine.get("/v1/runs/run-s", &reader).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["flowId"], flow);
    assert_eq!(body["status"], "failed");
    assert_eq!(
        (body["startedAt"].as_u64(), body["finishedAt"].as_u64()),
        (Some(TS), Some(TS + 600))
    );
    assert_eq!(body["flowHeads"], json!(heads));
    assert_eq!(body["lastSeq"], 9);
    let run: RunSnapshot = serde_json::from_value(body).unwrap();
    let fetch = &run.steps[0];
    assert_eq!(
        (fetch.node_id.as_str(), fetch.status, fetch.attempt),
        ("fetch", StepStatus::Succeeded, 1)
    );
    assert_eq!(
        (fetch.started_at, fetch.finished_at, fetch.duration_ms),
        (Some(TS + 10), Some(TS + 250), Some(240))
    );
    assert_eq!(fetch.error, None);
    let send = &run.steps[1];
    assert_eq!(
        (send.status, send.attempt, send.duration_ms),
        (StepStatus::Failed, 2, Some(60))
    );
    assert_eq!(send.error.as_deref(), Some("HTTP 500"));
    assert_eq!(run.logs.len(), 1);
    assert_eq!((run.logs[0].seq, run.logs[0].msg.as_str()), (3, "slow"));
    assert_eq!(run.logs[0].node_id.as_deref(), Some("fetch"));

    // run_state over WebSocket is the same snapshot.
    let client = Client::connect(&hub.ws_url(), &reader).await.unwrap();
    assert_eq!(subscribe_run(&client, "run-s", Some(9)).await.unwrap(), run);
    match subscribe_run(&client, "no-such-run", None).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    let stranger = Client::connect(&hub.ws_url(), &viewer("elsewhere"))
        .await
        .unwrap();
    match subscribe_run(&stranger, "run-s", None).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("{other:?}"),
    }
    let ack = client
        .request(ClientMessage::UnsubscribeRun {
            id: None,
            run_id: "run-s".into(),
        })
        .await
        .unwrap();
    assert!(matches!(ack, ServerMessage::Ack { .. }), "{ack:?}");
    assert!(client
        .request(ClientMessage::UnsubscribeRun {
            id: None,
            run_id: "run-s".into()
        })
        .await
        .is_err());

    // Events pages, and the flow's runs newest first.
    let (_, body) = engine
        .get("/v1/runs/run-s/events?since_seq=3&limit=2", &reader)
        .await;
    let page: Vec<RunEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(page[0].event.duration_ms, Some(240));
    let (status, body) = engine.get(&format!("/v1/flows/{flow}/runs"), &reader).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["run-s", "older-run"]);
    assert_eq!(body["runs"][0]["status"], "failed");
    assert_eq!(body["runs"][1]["status"], "running");
    let (_, body) = engine
        .get(&format!("/v1/flows/{flow}/runs?limit=1"), &reader)
        .await;
    assert_eq!(body["runs"].as_array().unwrap().len(), 1);

    // Refusals.
    let (status, body) = engine.get("/v1/runs/run-s", &viewer("elsewhere")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = engine
        .get(&format!("/v1/flows/{flow}/runs"), &viewer("elsewhere"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = engine.get("/v1/runs/no-such-run", &reader).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = engine
        .get("/v1/runs/run-s/events?since_seq=soon", &reader)
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("since_seq"))
    );
    let (status, _) = engine.get("/v1/runs/run-s", "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    client.close().await;
    stranger.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_state_and_http_reads_sqlite() {
    run_state_and_http_reads(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_state_and_http_reads_postgres() {
    run_state_and_http_reads(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_pins_the_flow_heads_it_started_on() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let engine = Engine::new(&hub);
    let editor_token = token("eddie", &[("pinned", Role::Editor)]);
    let editor = Client::connect(&hub.ws_url(), &editor_token).await.unwrap();
    let flow = editor.subscribe("pinned").await.unwrap();
    let (_, ticket) = flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "trigger",
                "start",
                Position { x: 0.0, y: 0.0 },
            ))
        })
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();
    let at_start = fetch_flow(&hub.ws_url(), "pinned", &editor_token)
        .await
        .unwrap()["heads"]
        .clone();

    // The engine does not say which version it ran: the hub records the current one.
    engine
        .post_ok(
            "pinned-run",
            vec![json!({"event_id": "go", "type": "run.started", "flow_id": "pinned", "ts": TS})],
        )
        .await;
    let (_, run) = engine.get("/v1/runs/pinned-run", &editor_token).await;
    assert_eq!(run["flowHeads"], at_start);

    // Later edits move the flow on, not the run.
    let (_, ticket) = flow
        .edit(|d| d.set_name("edited after the run started"))
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();
    let now = fetch_flow(&hub.ws_url(), "pinned", &editor_token)
        .await
        .unwrap()["heads"]
        .clone();
    assert_ne!(now, at_start);
    let (_, run) = engine.get("/v1/runs/pinned-run", &editor_token).await;
    assert_eq!(run["flowHeads"], at_start);
    let state = subscribe_run(&editor, "pinned-run", None).await.unwrap();
    assert_eq!(json!(state.flow_heads), at_start);
    editor.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_runs_feed_pushes_starts_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let engine = Engine::new(&hub);
    let dashboard = Client::connect(&hub.ws_url(), &viewer("fed"))
        .await
        .unwrap();
    let mut messages = dashboard.messages();
    let ack = dashboard
        .request(ClientMessage::SubscribeFlowRuns {
            id: None,
            flow_id: "fed".into(),
        })
        .await
        .unwrap();
    assert!(matches!(ack, ServerMessage::Ack { .. }), "{ack:?}");

    let start = json!({"event_id": "a", "type": "run.started", "flow_id": "fed", "ts": TS});
    let step = json!({"event_id": "b", "type": "step.started", "flow_id": "fed", "node_id": "n", "ts": TS + 1});
    let end = json!({"event_id": "c", "type": "run.finished", "flow_id": "fed", "ts": TS + 2, "status": "cancelled"});
    engine.post_ok("fed-run", vec![start, step]).await;
    engine.post_ok("fed-run", vec![end]).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(WAIT, messages.recv())
            .await
            .expect("flow_run arrives")
            .unwrap()
        {
            ServerMessage::FlowRun { flow_id, run } => {
                assert_eq!((flow_id.as_str(), run.id.as_str()), ("fed", "fed-run"));
                seen.push((run.status, run.last_seq));
            }
            _ => continue,
        }
    }
    assert_eq!(
        seen,
        vec![(RunStatus::Running, 1), (RunStatus::Cancelled, 3)]
    );

    // Leaving the feed: acked, and nothing more arrives.
    let ack = dashboard
        .request(ClientMessage::UnsubscribeFlowRuns {
            id: None,
            flow_id: "fed".into(),
        })
        .await
        .unwrap();
    assert!(matches!(ack, ServerMessage::Ack { .. }));
    engine
        .post_ok(
            "fed-run-2",
            vec![json!({"event_id": "a", "type": "run.started", "flow_id": "fed", "ts": TS})],
        )
        .await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Ok(ServerMessage::FlowRun { .. }) = messages.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "no flow_run after unsubscribing");

    // The feed needs a role on the flow.
    let stranger = Client::connect(&hub.ws_url(), &viewer("elsewhere"))
        .await
        .unwrap();
    match stranger
        .request(ClientMessage::SubscribeFlowRuns {
            id: None,
            flow_id: "fed".into(),
        })
        .await
    {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("{other:?}"),
    }
    dashboard.close().await;
    stranger.close().await;
    hub.shutdown().await;
}

async fn restart_keeps_runs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let batch = events("flow-r", 1..=50, 100);

    // Step 1: a run half done, then the hub stops.
    let hub = Hub::start(config(dir.path(), url.clone()))
        .await
        .expect("hub starts");
    let engine = Engine::new(&hub);
    engine.post_ok("restart-run", batch.clone()).await;
    let (_, before) = engine.get("/v1/runs/restart-run", &viewer("flow-r")).await;
    hub.shutdown().await;

    // Step 2: a new hub on the same database: same state, re-posts are duplicates,
    // and the sequence continues.
    let hub = Hub::start(config(dir.path(), url))
        .await
        .expect("hub restarts");
    let engine = Engine::new(&hub);
    let (_, after) = engine.get("/v1/runs/restart-run", &viewer("flow-r")).await;
    assert_eq!(after, before);
    let again = engine.post_ok("restart-run", batch).await;
    assert_eq!(
        again,
        json!({"accepted": 0, "duplicates": 50, "last_seq": 50})
    );
    let more = engine
        .post_ok("restart-run", events("flow-r", 45..=100, 100))
        .await;
    assert_eq!(
        more,
        json!({"accepted": 50, "duplicates": 6, "last_seq": 100})
    );
    let (_, body) = engine
        .get("/v1/runs/restart-run/events?limit=1000", &viewer("flow-r"))
        .await;
    let stored: Vec<RunEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    assert_exactly(&stored, 100);
    let (_, run) = engine.get("/v1/runs/restart-run", &viewer("flow-r")).await;
    assert_eq!(
        (run["status"].as_str(), run["lastSeq"].as_u64()),
        (Some("succeeded"), Some(100))
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_runs_sqlite() {
    restart_keeps_runs(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_runs_postgres() {
    restart_keeps_runs(Backend::Postgres).await;
}

/// The `RunStore` contract on a real database.
async fn sql_run_store(url: String) {
    let store = Arc::new(SqlStore::connect(&url).await.expect("store connects"));
    let kind_of = |seq: u64| if seq == 1 { "run.started" } else { "log" };
    let make = |from: u64, to: u64| -> Vec<RunEvent> {
        (from..=to)
            .map(|seq| RunEvent {
                seq,
                event: serde_json::from_value(json!({
                    "event_id": format!("e{seq}"), "type": kind_of(seq), "flow_id": "f",
                    "ts": TS + seq, "message": format!("m{seq}"), "node_id": "n1"
                }))
                .unwrap(),
            })
            .collect()
    };
    let mut run = new_snapshot("r", "f");
    let fold = |run: &mut RunSnapshot, events: &[RunEvent]| {
        for e in events {
            apply(run, e, 100);
        }
        run.clone()
    };

    // Step 1: two appends, then reads.
    let first = make(1, 3);
    store
        .append_run_events(&fold(&mut run, &first), &first)
        .await
        .unwrap();
    let second = make(4, 6);
    store
        .append_run_events(&fold(&mut run, &second), &second)
        .await
        .unwrap();
    let loaded = store.load_run("r", 4).await.unwrap().expect("run stored");
    assert_eq!(loaded.snapshot, run);
    assert_eq!(loaded.recent, make(3, 6));
    assert_eq!(store.run_events("r", 2, 2).await.unwrap(), make(3, 4));
    assert_eq!(store.run_events("r", 6, 10).await.unwrap(), vec![]);
    let known = store
        .existing_event_ids("r", &["e2".into(), "e7".into(), "e6".into()])
        .await
        .unwrap();
    assert_eq!(known, HashSet::from(["e2".to_string(), "e6".to_string()]));
    assert!(store.load_run("other", 4).await.unwrap().is_none());

    // Step 2: conflicts fail whole and change nothing: a repeated event id, a stale
    // last_seq (a second writer), a first batch for an existing run.
    let mut dup = make(7, 8);
    dup[1].event.event_id = "e2".into();
    let mut tmp = run.clone();
    assert!(store
        .append_run_events(&fold(&mut tmp, &dup), &dup)
        .await
        .is_err());
    let stale = make(5, 5);
    let mut tmp = run.clone();
    tmp.last_seq = 4;
    assert!(store
        .append_run_events(&fold(&mut tmp, &stale), &stale)
        .await
        .is_err());
    let restart = make(1, 1);
    assert!(store
        .append_run_events(&fold(&mut new_snapshot("r", "f"), &restart), &restart)
        .await
        .is_err());
    let loaded = store.load_run("r", 100).await.unwrap().unwrap();
    assert_eq!((loaded.snapshot.last_seq, loaded.recent.len()), (6, 6));
    assert_eq!(loaded.snapshot, run);

    // Step 3: a flow's runs, newest first.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut newer = new_snapshot("r2", "f");
    let one = make(1, 1);
    store
        .append_run_events(&fold(&mut newer, &one), &one)
        .await
        .unwrap();
    let runs = store.flow_runs("f", 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["r2", "r"]
    );
    assert_eq!((runs[1].status, runs[1].last_seq), (RunStatus::Running, 6));
    assert!(store.flow_runs("nobody", 10).await.unwrap().is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_run_store_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/flowhub.db", dir.path().display());
    sql_run_store(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_run_store_postgres() {
    sql_run_store(fresh_postgres_database().await).await;
}

#[tokio::test]
async fn token_command_mints_service_tokens() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowhub"))
        .args([
            "token",
            "--sub",
            "engine-1",
            "--svc",
            "--jwt-secret",
            SECRET,
        ])
        .output()
        .expect("run flowhub token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = keys().verify(token.trim()).expect("a valid token");
    assert!(claims.svc);
    assert_eq!(claims.sub, "engine-1");
}
