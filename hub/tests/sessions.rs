//! Sessions that survive hostile clients: rate and size limits answer with typed errors
//! while others are served; permissions stay live (revocation, expiry, reauth).

mod support;

use std::time::Duration;

use flowhub::Hub;
use flowhub_client::{Client, ClientError, NewNode, Position};
use flowhub_protocol::{ClientMessage, ErrorCode, Role, ServerMessage};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn code(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_rate_limited_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.session.messages_per_second = 20;
    cfg.session.burst = 20;
    let hub = Hub::start(cfg).await.unwrap();
    let tok = token("flooder", &[("f", Role::Editor)]);
    let mut flooder = RawClient::connect(&hub.ws_url(), &tok).await;
    let polite = Client::connect(&hub.ws_url(), &token("polite", &[("f", Role::Editor)]))
        .await
        .unwrap();

    // Step 1: 90 pings at once: about the first 20 pass, the rest are refused (and
    // stay under the abuse limit of 100 refused frames).
    for i in 0..90u64 {
        flooder
            .send(&ClientMessage::Ping { id: Some(i.into()) })
            .await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 90 {
        match flooder.next(WAIT).await.expect("an answer for every ping") {
            ServerMessage::Pong { .. } => pongs += 1,
            m if code(&m) == Some(ErrorCode::RateLimited) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    eprintln!("{pongs} pongs, {limited} rate_limited");
    assert!((20..=50).contains(&pongs), "{pongs} pongs passed the limit");
    assert!(limited >= 40);
    // Step 2: meanwhile another session is served at once.
    let rtt = polite.ping().await.expect("others are served");
    assert!(rtt < Duration::from_secs(2));
    // Step 3: the flooder recovers after a pause (the limit is a rate, not a ban).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flooder
        .send(&ClientMessage::Ping {
            id: Some(999u64.into()),
        })
        .await;
    assert!(matches!(
        flooder.next(WAIT).await,
        Some(ServerMessage::Pong { .. })
    ));
    // Step 4: sustained abuse ends with a close and a reason (1008).
    for i in 0..300u64 {
        flooder
            .send(&ClientMessage::Ping { id: Some(i.into()) })
            .await;
    }
    assert_eq!(flooder.close_code(WAIT).await, Some(1008));
    polite.ping().await.expect("others are still served");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_changes_are_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.flow.max_change_bytes = 4 * 1024;
    let hub = Hub::start(cfg).await.unwrap();
    let tok = token("big", &[("f", Role::Editor)]);
    let client = Client::connect(&hub.ws_url(), &tok).await.unwrap();
    let flow = client.subscribe("f").await.unwrap();
    let other = Client::connect(&hub.ws_url(), &token("small", &[("f", Role::Editor)]))
        .await
        .unwrap();
    let other_flow = other.subscribe("f").await.unwrap();

    // Automerge deflates changes, so the payload must be incompressible-ish to be big.
    let noise: String = (0..2000)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let big = serde_json::Value::String(noise);
    let ((id, _), t) = flow
        .edit(|d| {
            d.add_node(
                NewNode::new("action", "huge", Position { x: 0.0, y: 0.0 })
                    .config_entry("blob", big),
            )
        })
        .await
        .unwrap();
    match flow.wait_acked(&t, WAIT).await {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
        }
        other => panic!("oversize change not refused: {other:?}"),
    }
    // The other editor keeps working; the big node is nowhere.
    let ((small, _), t) = other_flow
        .edit(|d| d.add_node(NewNode::new("action", "small", Position { x: 1.0, y: 0.0 })))
        .await
        .unwrap();
    other_flow.wait_acked(&t, WAIT).await.unwrap();
    let stored = flowhub_client::fetch_flow(&hub.ws_url(), "f", &tok)
        .await
        .unwrap();
    assert!(
        stored["nodes"].get(&id).is_none(),
        "an oversize change was stored"
    );
    assert!(stored["nodes"].get(&small).is_some());
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_editor_cannot_edit_on_an_open_session() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let editor_tok = token("eve", &[("f", Role::Editor)]);
    let owner_tok = token("olga", &[("f", Role::Owner)]);
    let eve = Client::connect(&hub.ws_url(), &editor_tok).await.unwrap();
    let flow = eve.subscribe("f").await.unwrap();
    let (_, t) = flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "action",
                "before",
                Position { x: 0.0, y: 0.0 },
            ))
        })
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT).await.expect("an editor edits");

    // Step 1: the owner downgrades eve to viewer: her next edit is refused.
    let http = reqwest::Client::new();
    let put = |role: serde_json::Value| {
        http.put(format!("http://{}/v1/flows/f/members/eve", hub.addr()))
            .bearer_auth(&owner_tok)
            .json(&serde_json::json!({ "role": role }))
            .send()
    };
    assert_eq!(put("viewer".into()).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ((refused, _), t) = flow
        .edit(|d| d.add_node(NewNode::new("action", "after", Position { x: 0.0, y: 0.0 })))
        .await
        .unwrap();
    match flow.wait_acked(&t, WAIT).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("downgraded editor's edit not refused: {other:?}"),
    }
    // Step 2: revoked entirely: the session is told, and edits stay refused.
    let mut errors = eve.errors();
    assert_eq!(put("revoked".into()).await.unwrap().status(), 200);
    let revoked = tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("revocation is announced")
        .unwrap();
    assert_eq!(code(&revoked), Some(ErrorCode::Forbidden));
    // A non-owner cannot change members.
    let resp = http
        .put(format!("http://{}/v1/flows/f/members/eve", hub.addr()))
        .bearer_auth(&editor_tok)
        .json(&serde_json::json!({"role": "owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // And a fresh subscription is refused too.
    let again = Client::connect(&hub.ws_url(), &editor_tok).await.unwrap();
    assert!(matches!(
        again.subscribe("f").await,
        Err(ClientError::Server {
            code: ErrorCode::Forbidden,
            ..
        })
    ));
    let stored = flowhub_client::fetch_flow(&hub.ws_url(), "f", &owner_tok)
        .await
        .unwrap();
    assert!(
        stored["nodes"].get(&refused).is_none(),
        "a refused edit was stored"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_and_reauth_keeps_the_session_open() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let soon = flowhub::auth::now_secs() + 2;

    // Step 1: a session whose token expires in ~2 s is closed with 4001.
    let mut expiring = RawClient::connect(
        &hub.ws_url(),
        &token_with_exp("x", &[("f", Role::Editor)], soon),
    )
    .await;
    expiring.subscribe("f").await;
    assert_eq!(
        expiring.close_code(Duration::from_secs(6)).await,
        Some(4001)
    );

    // Step 2: the same, but it sends `reauth` with a fresh token in time: still open.
    let soon = flowhub::auth::now_secs() + 2;
    let mut kept = RawClient::connect(
        &hub.ws_url(),
        &token_with_exp("y", &[("f", Role::Editor)], soon),
    )
    .await;
    kept.send(&ClientMessage::Reauth {
        id: Some(1u64.into()),
        token: token("y", &[("f", Role::Editor)]),
    })
    .await;
    let ack = kept
        .until(WAIT, |m| {
            matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })
        })
        .await;
    assert!(matches!(ack, Some(ServerMessage::Ack { .. })), "{ack:?}");
    // A token for another user is refused.
    kept.send(&ClientMessage::Reauth {
        id: Some(2u64.into()),
        token: token("mallory", &[("*", Role::Owner)]),
    })
    .await;
    let refused = kept
        .until(WAIT, |m| matches!(m, ServerMessage::Error { .. }))
        .await
        .unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::Unauthorized));
    tokio::time::sleep(Duration::from_secs(3)).await;
    kept.send(&ClientMessage::Ping {
        id: Some(3u64.into()),
    })
    .await;
    assert!(
        matches!(
            kept.until(WAIT, |m| matches!(m, ServerMessage::Pong { .. }))
                .await,
            Some(ServerMessage::Pong { .. })
        ),
        "the reauthenticated session stays open past the old expiry"
    );
    hub.shutdown().await;
}

/// Sync frames a revoked editor sent before (or after) hearing of the revocation are
/// answered `forbidden` with the flow, and never count toward the abuse limit: the
/// session stays open however many arrive (before, they were `bad_request: sync frame
/// for a flow not subscribed` and the 101st closed the session with 1008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_a_revocation_are_forbidden_and_not_abuse() {
    use futures_util::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.session.messages_per_second = 10_000;
    cfg.session.burst = 10_000;
    let hub = Hub::start(cfg).await.unwrap();
    let mut eve = RawClient::connect(&hub.ws_url(), &token("eve", &[("f", Role::Editor)])).await;
    eve.subscribe("f").await;
    let resp = reqwest::Client::new()
        .put(format!("http://{}/v1/flows/f/members/eve", hub.addr()))
        .bearer_auth(token("olga", &[("f", Role::Owner)]))
        .json(&serde_json::json!({"role": "revoked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let frame = flowhub_protocol::SyncFrame {
        kind: flowhub_protocol::FrameKind::FlowSync,
        flow_id: "f".into(),
        payload: vec![0x42, 1, 2, 3],
    }
    .encode();
    for _ in 0..150 {
        eve.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                frame.clone().into(),
            ))
            .await
            .unwrap();
    }
    let mut forbidden = 0;
    while let Some(msg) = eve.next(Duration::from_secs(2)).await {
        match msg {
            ServerMessage::Error { code, flow_id, .. } => {
                assert_eq!(code, ErrorCode::Forbidden, "every answer is forbidden");
                assert_eq!(flow_id.as_deref(), Some("f"));
                forbidden += 1;
            }
            ServerMessage::PresenceState { .. } | ServerMessage::PresenceDiff { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(forbidden >= 150, "{forbidden} forbidden answers");
    // Still open: a ping is answered.
    eve.send(&ClientMessage::Ping { id: Some(7.into()) }).await;
    assert!(
        matches!(eve.next(WAIT).await, Some(ServerMessage::Pong { .. })),
        "the session was closed"
    );
    hub.shutdown().await;
}

/// A full node refuses a new long-lived connection with 503 and the JSON error body
/// before upgrading, on both WebSocket endpoints, and takes one again once a place
/// frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_answers_503_and_frees_a_place_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.max_connections = 2;
    let hub = Hub::start(cfg).await.unwrap();
    let tok = token("u", &[("f", Role::Editor)]);
    let first = RawClient::connect(&hub.ws_url(), &tok).await;
    let _second = RawClient::connect(&hub.ws_url(), &tok).await;
    for path in ["/v1/ws", "/v1/automerge-repo"] {
        let refused =
            tokio_tungstenite::connect_async(format!("{}{path}?token={tok}", hub.ws_url())).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503, "{path}");
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            }
            other => panic!("{path}: a third connection was not refused: {other:?}"),
        }
    }
    drop(first);
    let mut admitted = false;
    for _ in 0..100 {
        if tokio_tungstenite::connect_async(format!("{}/v1/ws?token={tok}", hub.ws_url()))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a closed connection never gave its place back");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_the_hard_limit_closes_with_1009() {
    use futures_util::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.hard_frame_bytes = 64 * 1024;
    cfg.session.max_frame_bytes = 16 * 1024;
    let hub = Hub::start(cfg).await.unwrap();
    let mut raw = RawClient::connect(&hub.ws_url(), &token("big", &[("f", Role::Editor)])).await;
    // Above the socket's hard limit: tungstenite refuses it while reading, and the
    // hub tells the client why (1009) rather than just dropping it.
    let pad = "x".repeat(100 * 1024);
    raw.ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            format!(r#"{{"type":"ping","pad":"{pad}"}}"#).into(),
        ))
        .await
        .unwrap();
    assert_eq!(raw.close_code(WAIT).await, Some(1009));
    hub.shutdown().await;
}
