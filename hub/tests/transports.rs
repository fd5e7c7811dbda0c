//! The session behaviours of `actors/tests/session_core.rs`, once per transport
//! (issue #13): a real hub (embedded SQLite in a temp dir), real sockets, real
//! frames: JSON text on `/v1/ws`, CBOR (`join`/`peer` handshake, then messages) on
//! `/v1/automerge-repo`. Each test runs the same steps on both WebSocket transports
//! and asserts what each one makes of the same outcome of the session core: a flood
//! is rate limited and closed with the same code, bad input is closed after the same
//! count, and so on. The SSE tests check that a run stream is a session too:
//! refusals are HTTP errors with the JSON body, and expiry ends the stream.
//!
//! Timeouts are generous and nothing asserts on timings: the machine is shared.

mod support;

use std::time::Duration;

use ciborium::Value;
use flowhub::auth::now_secs;
use flowhub::automerge_repo::flow_document_id;
use flowhub::Hub;
use flowhub_protocol::{close, ErrorCode, Role};
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `/v1/ws`: JSON text frames, native binary sync frames.
    Native,
    /// `/v1/automerge-repo`: CBOR maps in binary frames.
    Repo,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Native, Transport::Repo];

    fn path(self) -> &'static str {
        match self {
            Transport::Native => "/v1/ws",
            Transport::Repo => "/v1/automerge-repo",
        }
    }
}

/// What a client read, in terms both transports share.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// Native `error`, or automerge-repo CBOR `error` (`message` is `"<code>: ..."`).
    Error {
        code: ErrorCode,
        flow_id: Option<String>,
    },
    /// automerge-repo: an `ephemeral` whose data is `{type: "flowhub/refused", code}`.
    Refused {
        document_id: String,
        code: ErrorCode,
    },
    /// The answer to a probe: `pong` (native), `peer` (automerge-repo).
    Answer,
    /// Anything else, by its `type`.
    Other(String),
    /// A close frame (its code), or the connection ended without one (`None`).
    Closed(Option<u16>),
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn error_code(s: &str) -> ErrorCode {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .unwrap_or_else(|_| panic!("not an error code: {s:?}"))
}

/// One client of either transport.
struct Peer {
    transport: Transport,
    ws: Ws,
    /// The automerge-repo peer id (also the id of native pings, so that a probe's
    /// answer is as large on both transports).
    id: String,
    sent: u64,
}

impl Peer {
    async fn connect(transport: Transport, base: &str, token: &str) -> Peer {
        let url = format!("{base}{}?token={token}", transport.path());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: connect: {e}"));
        Peer::handshake(transport, ws, format!("{transport:?}-peer")).await
    }

    /// With a tiny socket receive buffer, so a client that stops reading backs up
    /// into the hub at once instead of into the kernel; `id` sizes its probes.
    async fn connect_small_buffer(
        transport: Transport,
        hub: &Hub,
        token: &str,
        id: String,
    ) -> Peer {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(hub.addr()).await.expect("tcp connect");
        let url = format!("{}{}?token={token}", hub.ws_url(), transport.path());
        let (ws, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .unwrap_or_else(|e| panic!("{transport:?}: handshake: {e}"));
        Peer::handshake(transport, ws, id).await
    }

    /// Native: reads `welcome`. automerge-repo: `join`, then reads `peer`.
    async fn handshake(transport: Transport, ws: Ws, id: String) -> Peer {
        let mut peer = Peer {
            transport,
            ws,
            id,
            sent: 0,
        };
        let expected = match transport {
            Transport::Native => Event::Other("welcome".into()),
            Transport::Repo => {
                let join = peer.probe();
                assert!(peer.send(join).await);
                Event::Answer
            }
        };
        let first = peer.next(WAIT).await;
        assert_eq!(first, Some(expected), "{transport:?}: handshake");
        peer
    }

    fn repo_msg(&self, kind: &str, mut fields: Vec<(&str, Value)>) -> Message {
        let mut all = vec![("type", text(kind)), ("senderId", text(&self.id))];
        all.append(&mut fields);
        Message::Binary(cbor(all).into())
    }

    /// A request that is answered ([`Event::Answer`]): `ping` / a repeated `join`.
    fn probe(&mut self) -> Message {
        self.sent += 1;
        match self.transport {
            Transport::Native => Message::Text(
                serde_json::json!({"type": "ping", "id": self.id})
                    .to_string()
                    .into(),
            ),
            Transport::Repo => self.repo_msg(
                "join",
                vec![
                    ("peerMetadata", Value::Map(vec![])),
                    ("supportedProtocolVersions", Value::Array(vec![text("1")])),
                ],
            ),
        }
    }

    /// A control message the rate limit counts: `ping` / `remote-subscription-change`
    /// (which the hub ignores, but counts).
    fn flood(&mut self) -> Message {
        self.sent += 1;
        match self.transport {
            Transport::Native => Message::Text(
                serde_json::json!({"type": "ping", "id": self.sent})
                    .to_string()
                    .into(),
            ),
            Transport::Repo => self.repo_msg(
                "remote-subscription-change",
                vec![("targetId", text("hub")), ("add", Value::Array(vec![]))],
            ),
        }
    }

    /// A frame the transport cannot decode: JSON that is not / bytes that are not CBOR.
    fn bad(&self) -> Message {
        match self.transport {
            Transport::Native => Message::Text("not json".into()),
            Transport::Repo => Message::Binary(vec![0xff, 0x00].into()),
        }
    }

    /// A sync message of `bytes` bytes for `flow_id`.
    fn sync(&self, flow_id: &str, bytes: usize) -> Message {
        let payload = vec![0x42; bytes];
        match self.transport {
            Transport::Native => {
                Message::Binary(flowhub_protocol::frame::encode_flow_sync(flow_id, &payload).into())
            }
            Transport::Repo => self.repo_msg(
                "sync",
                vec![
                    ("targetId", text("hub")),
                    ("documentId", text(&flow_document_id(flow_id))),
                    ("data", Value::Bytes(payload)),
                ],
            ),
        }
    }

    /// A control message padded to about `bytes` bytes.
    fn padded(&self, bytes: usize) -> Message {
        let pad = "x".repeat(bytes);
        match self.transport {
            Transport::Native => Message::Text(
                serde_json::json!({"type": "ping", "pad": pad})
                    .to_string()
                    .into(),
            ),
            Transport::Repo => self.repo_msg(
                "remote-heads-changed",
                vec![("targetId", text("hub")), ("pad", text(&pad))],
            ),
        }
    }

    /// Sends one frame; false once the connection is gone.
    async fn send(&mut self, msg: Message) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.ws.send(msg)).await,
            Ok(Ok(()))
        )
    }

    /// The next event; `None` when nothing came within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Event::Closed(None)),
                Ok(Some(Ok(msg))) => msg,
            };
            match (self.transport, msg) {
                (_, Message::Close(frame)) => {
                    return Some(Event::Closed(frame.map(|f| u16::from(f.code))))
                }
                (_, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                (Transport::Native, Message::Text(t)) => return Some(native_event(&t)),
                (Transport::Native, Message::Binary(_)) => {
                    return Some(Event::Other("sync frame".into()))
                }
                (Transport::Repo, Message::Binary(b)) => return Some(repo_event(&b)),
                (Transport::Repo, Message::Text(t)) => {
                    panic!("automerge-repo got a text frame: {t}")
                }
            }
        }
    }

    /// Reads events until `pred` holds for one; every event read, that one last.
    /// Panics on a close (unless `pred` takes it) or after `WAIT`.
    async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next(left).await else {
                panic!(
                    "{:?}: {what}: not seen within {WAIT:?}; saw {seen:?}",
                    self.transport
                )
            };
            let done = pred(&event);
            let closed = matches!(event, Event::Closed(_));
            seen.push(event);
            if done {
                return seen;
            }
            assert!(
                !closed,
                "{:?}: {what}: closed first; saw {seen:?}",
                self.transport
            );
        }
    }

    /// Reads until the connection closes; every event read, the close last.
    async fn until_closed(&mut self) -> Vec<Event> {
        self.until("a close", |e| matches!(e, Event::Closed(_)))
            .await
    }

    /// Sends a probe and reads until its answer: the session is still served.
    async fn assert_served(&mut self) -> Vec<Event> {
        let probe = self.probe();
        assert!(
            self.send(probe).await,
            "{:?}: probe not sent",
            self.transport
        );
        self.until("the probe's answer", |e| *e == Event::Answer)
            .await
    }
}

fn native_event(text: &str) -> Event {
    let v: serde_json::Value = serde_json::from_str(text).expect("the hub sends JSON");
    let kind = v["type"].as_str().expect("a type").to_owned();
    match kind.as_str() {
        "error" => Event::Error {
            code: error_code(v["code"].as_str().expect("a code")),
            flow_id: v["flow_id"].as_str().map(str::to_owned),
        },
        "pong" => Event::Answer,
        _ => Event::Other(kind),
    }
}

fn repo_event(bytes: &[u8]) -> Event {
    let msg: Value = ciborium::de::from_reader(bytes).expect("the hub sends CBOR");
    let kind = field_text(&msg, "type").expect("a type").to_owned();
    match kind.as_str() {
        "error" => {
            let message = field_text(&msg, "message").expect("a message");
            let (code, _) = message
                .split_once(": ")
                .unwrap_or_else(|| panic!("an error message names its code: {message}"));
            Event::Error {
                code: error_code(code),
                flow_id: None,
            }
        }
        "peer" => Event::Answer,
        "ephemeral" => {
            let Some(Value::Bytes(data)) = field(&msg, "data") else {
                panic!("ephemeral without data: {msg:?}")
            };
            let data: Value = ciborium::de::from_reader(&data[..]).expect("CBOR data");
            match field_text(&data, "type") {
                Some("flowhub/refused") => Event::Refused {
                    document_id: field_text(&msg, "documentId").unwrap().to_owned(),
                    code: error_code(field_text(&data, "code").expect("a code")),
                },
                _ => Event::Other(kind),
            }
        }
        _ => Event::Other(kind),
    }
}

fn errors(events: &[Event]) -> Vec<ErrorCode> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn close_of(events: &[Event]) -> Option<u16> {
    match events.last() {
        Some(Event::Closed(code)) => *code,
        other => panic!("the events do not end with a close: {other:?}"),
    }
}

async fn hub_with(configure: impl FnOnce(&mut flowhub::HubConfig)) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    // The clients below answer the hub's pings only while they read; a test's client
    // may sit between two steps for a while on a busy machine.
    cfg.idle_timeout = Duration::from_secs(120);
    configure(&mut cfg);
    let hub = Hub::start(cfg).await.expect("hub starts");
    (hub, dir)
}

// ---- rate limit ---------------------------------------------------------------------

/// A flood of control messages: beyond the burst each is answered `rate_limited`;
/// sustained, the session is closed with `close::POLICY` after the same number of
/// refusals (`max_bad_frames + 1`) on both transports; others are served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_then_closed_with_policy_on_every_transport() {
    let (hub, _dir) = hub_with(|cfg| {
        cfg.session.messages_per_second = 20;
        cfg.session.burst = 20;
        cfg.session.max_bad_frames = 100;
    })
    .await;
    let url = hub.ws_url();
    let mut polite = Peer::connect(
        Transport::Native,
        &url,
        &token("polite", &[("f", Role::Editor)]),
    )
    .await;
    let mut outcomes = Vec::new();
    for transport in Transport::ALL {
        let mut flooder =
            Peer::connect(transport, &url, &token("flooder", &[("f", Role::Editor)])).await;
        // Step 1: 60 at once: beyond the burst, `rate_limited`; no close.
        for _ in 0..60 {
            let msg = flooder.flood();
            assert!(flooder.send(msg).await);
        }
        let mut events = flooder
            .until("rate_limited", |e| {
                matches!(
                    e,
                    Event::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                )
            })
            .await;
        polite.assert_served().await;
        // Step 2: sustained: closed for abuse.
        for _ in 0..400 {
            let msg = flooder.flood();
            if !flooder.send(msg).await {
                break;
            }
        }
        events.extend(flooder.until_closed().await);
        let refused = errors(&events);
        assert!(
            refused.iter().all(|c| *c == ErrorCode::RateLimited),
            "{transport:?}: {refused:?}"
        );
        outcomes.push((transport, refused.len(), close_of(&events)));
        polite.assert_served().await;
    }
    for (transport, refused, code) in &outcomes {
        assert_eq!(
            (*refused, *code),
            (101, Some(close::POLICY)),
            "{transport:?}: {refused} rate_limited, then close {code:?}"
        );
    }
    hub.shutdown().await;
}

// ---- bad input ----------------------------------------------------------------------

/// Frames the transport cannot decode are refused (`bad_request`) and tolerated up
/// to `max_bad_frames`; the next one is refused and closes with `close::POLICY`:
/// the same count on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_then_closed_after_the_same_count_on_every_transport() {
    let (hub, _dir) = hub_with(|cfg| {
        cfg.session.messages_per_second = 10_000;
        cfg.session.burst = 10_000;
        cfg.session.max_bad_frames = 5;
    })
    .await;
    let mut outcomes = Vec::new();
    for transport in Transport::ALL {
        let mut peer = Peer::connect(
            transport,
            &hub.ws_url(),
            &token("bad", &[("f", Role::Editor)]),
        )
        .await;
        let mut events = Vec::new();
        for i in 1..=5 {
            let bad = peer.bad();
            assert!(peer.send(bad).await);
            events.extend(
                peer.until(&format!("refusal {i}"), |e| {
                    matches!(e, Event::Error { .. })
                })
                .await,
            );
        }
        // Within the limit: still served.
        events.extend(peer.assert_served().await);
        let bad = peer.bad();
        assert!(peer.send(bad).await);
        events.extend(peer.until_closed().await);
        let refused = errors(&events);
        assert!(
            refused.iter().all(|c| *c == ErrorCode::BadRequest),
            "{transport:?}: {refused:?}"
        );
        outcomes.push((transport, refused.len(), close_of(&events)));
    }
    for (transport, refused, code) in &outcomes {
        assert_eq!(
            (*refused, *code),
            (6, Some(close::POLICY)),
            "{transport:?}: {refused} bad_request, then close {code:?}"
        );
    }
    hub.shutdown().await;
}

// ---- size limits --------------------------------------------------------------------

/// Above the soft limit (`max_frame_bytes`) a frame is refused `too_large` and the
/// connection stays open: an `error` on `/v1/ws`; on `/v1/automerge-repo` a
/// `flowhub/refused` ephemeral naming the document for a sync message, a CBOR
/// `error` for a message of no document. Above the hard limit the connection is
/// closed with `close::TOO_BIG` on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_are_too_large_and_above_the_hard_limit_closed_on_every_transport() {
    let (hub, _dir) = hub_with(|cfg| {
        cfg.session.max_frame_bytes = 4096;
        cfg.hard_frame_bytes = 64 * 1024;
    })
    .await;
    let tok = token("big", &[("big", Role::Editor)]);
    for transport in Transport::ALL {
        let mut peer = Peer::connect(transport, &hub.ws_url(), &tok).await;

        // A sync message above the soft limit.
        let sync = peer.sync("big", 8 * 1024);
        assert!(peer.send(sync).await);
        let seen = peer
            .until("the refusal of the sync message", |e| {
                matches!(e, Event::Error { .. } | Event::Refused { .. })
            })
            .await;
        let expected = match transport {
            // Refused as a frame, without looking inside.
            Transport::Native => Event::Error {
                code: ErrorCode::TooLarge,
                flow_id: None,
            },
            Transport::Repo => Event::Refused {
                document_id: flow_document_id("big"),
                code: ErrorCode::TooLarge,
            },
        };
        assert_eq!(seen.last(), Some(&expected), "{transport:?}: {seen:?}");

        // A control message above the soft limit.
        let padded = peer.padded(8 * 1024);
        assert!(peer.send(padded).await);
        let seen = peer
            .until("the refusal of the control message", |e| {
                matches!(e, Event::Error { .. } | Event::Refused { .. })
            })
            .await;
        assert_eq!(
            seen.last(),
            Some(&Event::Error {
                code: ErrorCode::TooLarge,
                flow_id: None
            }),
            "{transport:?}: {seen:?}"
        );
        // Still open and served.
        peer.assert_served().await;

        // Above the hard limit: closed, with the reason.
        let huge = peer.padded(100 * 1024);
        let _ = peer.send(huge).await;
        let events = peer.until_closed().await;
        assert_eq!(
            close_of(&events),
            Some(close::TOO_BIG),
            "{transport:?}: {events:?}"
        );
    }
    hub.shutdown().await;
}

// ---- expiry -------------------------------------------------------------------------

/// A session whose token expires is told `unauthorized` and closed with
/// `close::TOKEN_EXPIRED`, on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_with_token_expired_on_every_transport() {
    let (hub, _dir) = hub_with(|_| {}).await;
    let mut peers = Vec::new();
    for transport in Transport::ALL {
        let tok = token_with_exp("x", &[("f", Role::Editor)], now_secs() + 2);
        peers.push(Peer::connect(transport, &hub.ws_url(), &tok).await);
    }
    for mut peer in peers {
        let events = peer.until_closed().await;
        assert_eq!(
            errors(&events),
            vec![ErrorCode::Unauthorized],
            "{:?}: {events:?}",
            peer.transport
        );
        assert_eq!(
            close_of(&events),
            Some(close::TOKEN_EXPIRED),
            "{:?}: {events:?}",
            peer.transport
        );
    }
    hub.shutdown().await;
}

// ---- drain --------------------------------------------------------------------------

/// A draining hub closes every session with `close::SERVICE_RESTART` (reconnect
/// elsewhere), on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_with_service_restart_on_every_transport() {
    let (hub, _dir) = hub_with(|_| {}).await;
    let mut readers = Vec::new();
    for transport in Transport::ALL {
        let mut peer = Peer::connect(
            transport,
            &hub.ws_url(),
            &token("d", &[("f", Role::Editor)]),
        )
        .await;
        peer.assert_served().await;
        readers.push(tokio::spawn(async move {
            let events = peer.until_closed().await;
            (transport, events)
        }));
    }
    hub.shutdown().await;
    for reader in readers {
        let (transport, events) = reader.await.unwrap();
        assert_eq!(
            close_of(&events),
            Some(close::SERVICE_RESTART),
            "{transport:?}: {events:?}"
        );
    }
}

// ---- slow client --------------------------------------------------------------------

/// A client that sends requests and never reads the answers is closed as too slow
/// (`close::TOO_SLOW`, or dropped when not even the close frame gets through its
/// stalled socket), counted in `sessions_closed_slow`, while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_on_every_transport() {
    let (hub, _dir) = hub_with(|cfg| {
        cfg.session.messages_per_second = 100_000;
        cfg.session.burst = 100_000;
        cfg.outbound_queue = 16;
        cfg.socket_send_buffer = 8 * 1024;
        cfg.write_stall_timeout = Duration::from_secs(2);
    })
    .await;
    let tok = token("slow", &[("f", Role::Editor)]);
    let mut polite = Peer::connect(
        Transport::Native,
        &hub.ws_url(),
        &token("polite", &[("f", Role::Editor)]),
    )
    .await;
    for transport in Transport::ALL {
        let closed_slow = hub.state().metrics.sessions_closed_slow.get();
        // Every answer carries the 4 KiB id back.
        let id = format!("slow-{}", "x".repeat(4096));
        let mut slow = Peer::connect_small_buffer(transport, &hub, &tok, id).await;
        let mut sent = 0;
        while sent < 2000 {
            let probe = slow.probe();
            if !slow.send(probe).await {
                break;
            }
            sent += 1;
        }
        let mut answers = 0;
        let events = slow.until_closed().await;
        answers += events.iter().filter(|e| **e == Event::Answer).count();
        let code = close_of(&events);
        assert!(
            code.is_none() || code == Some(close::TOO_SLOW),
            "{transport:?}: closed with {code:?}"
        );
        assert!(
            answers < sent,
            "{transport:?}: all {sent} answers were delivered to a client that never read"
        );
        assert!(
            hub.state().metrics.sessions_closed_slow.get() > closed_slow,
            "{transport:?}: not counted as closed for being slow"
        );
        polite.assert_served().await;
    }
    hub.shutdown().await;
}

// ---- SSE ----------------------------------------------------------------------------

/// Starts run `run_id` of flow `flow_id` (one `run.started` event).
async fn start_run(hub: &Hub, run_id: &str, flow_id: &str) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/runs/{run_id}/events", hub.addr()))
        .bearer_auth(service_token())
        .json(&serde_json::json!({"events": [
            {"event_id": "e1", "type": "run.started", "flow_id": flow_id, "ts": 1_700_000_000_000u64}
        ]}))
        .send()
        .await
        .expect("POST reaches the hub");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
}

async fn open_stream(hub: &Hub, run_id: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!(
            "http://{}/v1/runs/{run_id}/stream?token={token}",
            hub.addr()
        ))
        .send()
        .await
        .expect("GET reaches the hub")
}

/// A refused SSE stream is an HTTP error with the JSON error body of every other
/// endpoint (the session's refusal): unknown run 404, no role on its flow 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_refusals_are_http_errors_with_a_json_body() {
    let (hub, _dir) = hub_with(|_| {}).await;
    start_run(&hub, "run-a", "flow-a").await;
    let cases = [
        (
            "nope",
            token("v", &[("flow-a", Role::Viewer)]),
            404,
            "not_found",
        ),
        (
            "run-a",
            token("v", &[("flow-b", Role::Viewer)]),
            403,
            "forbidden",
        ),
    ];
    for (run, tok, status, code) in cases {
        let resp = open_stream(&hub, run, &tok).await;
        assert_eq!(resp.status(), status, "{run}");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{run}: {content_type}"
        );
        let body: serde_json::Value = resp.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], code, "{run}: {body}");
        assert!(body["error"]["message"].is_string(), "{run}: {body}");
    }
    // The same viewer with a role on the run's flow gets the stream.
    let resp = open_stream(&hub, "run-a", &token("v", &[("flow-a", Role::Viewer)])).await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    hub.shutdown().await;
}

/// An SSE stream whose token expires ends (the session closed it), though its run
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_ends_when_its_token_expires() {
    let (hub, _dir) = hub_with(|_| {}).await;
    start_run(&hub, "run-x", "flow-a").await;
    let tok = token_with_exp("v", &[("flow-a", Role::Viewer)], now_secs() + 2);
    let mut resp = open_stream(&hub, "run-x", &tok).await;
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    loop {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("the stream did not end within {WAIT:?}: {body}"))
            .expect("the stream is readable");
        match chunk {
            Some(bytes) => body.push_str(&String::from_utf8_lossy(&bytes)),
            None => break,
        }
    }
    assert!(body.contains("event: run_state"), "{body}");
    // The run is still live: a fresh token streams it.
    let resp = open_stream(&hub, "run-x", &token("v", &[("flow-a", Role::Viewer)])).await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    hub.shutdown().await;
}
