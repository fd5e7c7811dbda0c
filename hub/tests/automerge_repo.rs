//! `GET /v1/automerge-repo`: a peer speaking the automerge-repo WebSocket protocol
//! (CBOR `join`/`peer`/`request`/`sync`/`ephemeral`/`doc-unavailable`/`error`) co-edits
//! a flow with a flowhub client through a real hub. (The same protocol against the real
//! npm packages is tested in clients/js/test/automerge-repo.test.ts.)

mod support;

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc};
use ciborium::Value;
use flowhub::automerge_repo::wire::HubNotice;
use flowhub::automerge_repo::{base58check_encode, flow_document_id};
use flowhub_client::{Client, NewNode, Position};
use flowhub_crdt::{FlowDoc, SyncState};
use flowhub_protocol::{ErrorCode, Role};
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn cbor(fields: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(fields.into_iter().map(|(k, v)| (text(k), v)).collect());
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

async fn get_flow(hub: &flowhub::Hub, flow_id: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://{}/v1/flows/{flow_id}", hub.addr()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()
}

/// What a test peer read from the socket.
#[derive(Debug)]
enum Incoming {
    Msg(Value),
    Closed(Option<u16>),
}

/// A minimal automerge-repo peer: one FlowDoc replica, one sync state.
struct RepoPeer {
    ws: Ws,
    peer_id: String,
    doc: FlowDoc,
    sync: SyncState,
    document_id: String,
}

impl RepoPeer {
    async fn connect(base: &str, token: &str, peer_id: &str, flow_id: &str) -> RepoPeer {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{base}/v1/automerge-repo?token={token}"))
                .await
                .expect("connect");
        RepoPeer {
            ws,
            peer_id: peer_id.to_owned(),
            doc: FlowDoc::new(),
            sync: SyncState::new(),
            document_id: flow_document_id(flow_id),
        }
    }

    async fn send(&mut self, fields: Vec<(&str, Value)>) {
        self.ws
            .send(Message::Binary(cbor(fields).into()))
            .await
            .expect("send");
    }

    async fn next(&mut self, timeout: Duration) -> Option<Incoming> {
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Incoming::Closed(None)),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    return Some(Incoming::Msg(
                        ciborium::de::from_reader(&b[..]).expect("hub sends CBOR"),
                    ))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Some(Incoming::Closed(frame.map(|f| u16::from(f.code))))
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    async fn join(&mut self) -> Value {
        let peer = self.peer_id.clone();
        self.send(vec![
            ("type", text("join")),
            ("senderId", text(&peer)),
            ("peerMetadata", Value::Map(vec![])),
            ("supportedProtocolVersions", Value::Array(vec![text("1")])),
        ])
        .await;
        match self.next(WAIT).await {
            Some(Incoming::Msg(m)) => m,
            other => panic!("expected peer, got {other:?}"),
        }
    }

    /// Sends whatever the sync protocol has for the hub (`kind`: request or sync).
    async fn flush(&mut self, kind: &str) {
        while let Some(msg) = self.doc.generate_sync_message(&mut self.sync) {
            let (peer, doc) = (self.peer_id.clone(), self.document_id.clone());
            self.send(vec![
                ("type", text(kind)),
                ("senderId", text(&peer)),
                ("targetId", text("hub")),
                ("documentId", text(&doc)),
                ("data", Value::Bytes(msg)),
            ])
            .await;
        }
    }

    /// Answers sync messages until `done` holds for the replica; returns the other
    /// messages seen on the way.
    async fn sync_until(&mut self, done: impl Fn(&FlowDoc) -> bool) -> Vec<Value> {
        let mut others = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.doc) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Incoming::Msg(m)) if field_text(&m, "type") == Some("sync") => {
                    let Some(Value::Bytes(data)) = field(&m, "data") else {
                        panic!("sync without data")
                    };
                    assert_eq!(
                        field_text(&m, "documentId"),
                        Some(self.document_id.as_str())
                    );
                    assert_eq!(field_text(&m, "targetId"), Some(self.peer_id.as_str()));
                    self.doc
                        .receive_sync_message(&mut self.sync, data)
                        .expect("valid sync message");
                    self.flush("sync").await;
                }
                Some(Incoming::Msg(m)) => others.push(m),
                other => panic!("connection ended while syncing: {other:?}"),
            }
        }
        others
    }

    /// Answers sync messages until the hub sends one of its notices (an ephemeral
    /// whose data is a [`HubNotice`]); `None` when none comes within `timeout`.
    /// Panics if the connection ends: the hub must never close on a refusal.
    async fn next_notice(&mut self, timeout: Duration) -> Option<HubNotice> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Incoming::Msg(m) if field_text(&m, "type") == Some("sync") => {
                    let Some(Value::Bytes(data)) = field(&m, "data") else {
                        panic!("sync without data")
                    };
                    // A peer whose change was refused keeps it: its replica may stay
                    // ahead of (and even invalid against) the hub's.
                    let _ = self.doc.receive_sync_message(&mut self.sync, data);
                    self.flush("sync").await;
                }
                Incoming::Msg(m) if field_text(&m, "type") == Some("ephemeral") => {
                    assert_eq!(
                        field_text(&m, "documentId"),
                        Some(self.document_id.as_str())
                    );
                    assert!(field_text(&m, "sessionId").is_some());
                    let Some(Value::Bytes(data)) = field(&m, "data") else {
                        panic!("ephemeral without data")
                    };
                    if let Ok(notice) = ciborium::de::from_reader::<HubNotice, _>(&data[..]) {
                        return Some(notice);
                    }
                }
                Incoming::Msg(_) => {}
                Incoming::Closed(code) => panic!("the hub closed the peer: {code:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_repo_peer_and_a_flowhub_client_co_edit_a_flow() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let url = hub.ws_url();

    let client = Client::connect(&url, &token("alice", &[("shared", Role::Editor)]))
        .await
        .unwrap();
    let flow = client.subscribe("shared").await.unwrap();
    let ((js_id, _), ticket) = flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "trigger",
                "From flowhub",
                Position::new(0.0, 0.0),
            ))
        })
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();

    let mut peer = RepoPeer::connect(
        &url,
        &token("rita", &[("shared", Role::Editor)]),
        "rita-peer",
        "shared",
    )
    .await;
    let reply = peer.join().await;
    assert_eq!(field_text(&reply, "type"), Some("peer"));
    assert_eq!(field_text(&reply, "targetId"), Some("rita-peer"));
    assert_eq!(field_text(&reply, "selectedProtocolVersion"), Some("1"));
    assert!(field_text(&reply, "senderId").is_some_and(|s| s.starts_with("flowhub-")));

    // Request the flow and sync until the flowhub client's node arrived.
    peer.flush("request").await;
    let id = js_id.clone();
    let others = peer
        .sync_until(move |d| d.snapshot().nodes.contains_key(&id))
        .await;
    // Presence of the flow arrives as ephemeral messages (CBOR of presence_state).
    assert!(others
        .iter()
        .any(|m| field_text(m, "type") == Some("ephemeral")));

    // The peer edits; the flowhub client sees it, and the hub stored it.
    let (repo_id, _) = peer
        .doc
        .add_node(NewNode::new(
            "http",
            "From the Repo",
            Position::new(10.0, 20.0),
        ))
        .unwrap();
    peer.flush("sync").await;
    let rid = repo_id.clone();
    flow.wait_until(move |s| s.nodes.contains_key(&rid), WAIT)
        .await
        .unwrap();
    assert_eq!(flow.snapshot().nodes[&repo_id].label, "From the Repo");

    // And the other way round once more, then both replicas are identical.
    let (_, ticket) = flow
        .edit(|d| d.move_node(&repo_id, Position::new(99.0, 98.0)))
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();
    let rid = repo_id.clone();
    peer.sync_until(move |d| d.node(&rid).is_some_and(|n| n.position.x == 99.0))
        .await;
    assert_eq!(peer.doc.snapshot(), flow.snapshot());

    // Presence from the peer: an ephemeral message with a cursor.
    let mut presence = Vec::new();
    ciborium::ser::into_writer(
        &Value::Map(vec![
            (
                text("cursor"),
                Value::Map(vec![
                    (text("x"), Value::Float(3.0)),
                    (text("y"), Value::Float(4.0)),
                ]),
            ),
            (text("color"), text("#00ff00")),
        ]),
        &mut presence,
    )
    .unwrap();
    let doc_id = peer.document_id.clone();
    peer.send(vec![
        ("type", text("ephemeral")),
        ("senderId", text("rita-peer")),
        ("targetId", text("hub")),
        ("documentId", text(&doc_id)),
        ("sessionId", text("s1")),
        ("count", Value::Integer(1.into())),
        ("data", Value::Bytes(presence)),
    ])
    .await;
    let mut raw = RawClient::connect(&url, &token("bob", &[("shared", Role::Viewer)])).await;
    raw.subscribe("shared").await;
    // The presence snapshot bob gets on joining has it, or, when the flow handles the
    // peer's update after bob joined, the diff that follows does.
    let rita_green =
        |p: &flowhub_protocol::PresenceEntry| p.user_id == "rita" && p.color == "#00ff00";
    let seen = raw
        .until(WAIT, |m| match m {
            flowhub_protocol::ServerMessage::PresenceState { peers, .. } => {
                peers.iter().any(rita_green)
            }
            flowhub_protocol::ServerMessage::PresenceDiff {
                joined, updated, ..
            } => joined.iter().chain(updated).any(rita_green),
            _ => false,
        })
        .await;
    assert!(
        seen.is_some(),
        "the Repo peer's presence reaches flowhub clients"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn viewer_edits_are_refused_and_unknown_documents_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let url = hub.ws_url();

    // A document id that names no flow (16 random-looking bytes, as repo.create()).
    let mut peer = RepoPeer::connect(
        &url,
        &token("vera", &[("guarded", Role::Viewer)]),
        "vera-peer",
        "guarded",
    )
    .await;
    peer.join().await;
    let bogus = base58check_encode(&[0x9c, 1, 0xff, 0x10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let msg = peer
        .doc
        .generate_sync_message(&mut SyncState::new())
        .unwrap();
    peer.send(vec![
        ("type", text("request")),
        ("senderId", text("vera-peer")),
        ("targetId", text("hub")),
        ("documentId", text(&bogus)),
        ("data", Value::Bytes(msg.clone())),
    ])
    .await;
    match peer.next(WAIT).await {
        Some(Incoming::Msg(m)) => {
            assert_eq!(field_text(&m, "type"), Some("doc-unavailable"));
            assert_eq!(field_text(&m, "documentId"), Some(bogus.as_str()));
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    // A flow the token grants no role on is unavailable too.
    let other = flow_document_id("not-yours");
    peer.send(vec![
        ("type", text("request")),
        ("senderId", text("vera-peer")),
        ("targetId", text("hub")),
        ("documentId", text(&other)),
        ("data", Value::Bytes(msg)),
    ])
    .await;
    match peer.next(WAIT).await {
        Some(Incoming::Msg(m)) => assert_eq!(field_text(&m, "type"), Some("doc-unavailable")),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }

    // An editor writes; the viewer reads it, then edits: one `flowhub/refused`
    // ephemeral its application can observe, nothing stored, and no close.
    let editor = Client::connect(&url, &token("ed", &[("guarded", Role::Editor)]))
        .await
        .unwrap();
    let flow = editor.subscribe("guarded").await.unwrap();
    let (_, ticket) = flow
        .edit(|d| {
            d.add_node(NewNode::new("trigger", "Base", Position::new(0.0, 0.0)).with_id("base"))
        })
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();
    peer.flush("request").await;
    peer.sync_until(|d| d.snapshot().nodes.contains_key("base"))
        .await;
    let before = get_flow(
        &hub,
        "guarded",
        &token("vera", &[("guarded", Role::Viewer)]),
    )
    .await;
    peer.doc.set_name("viewer was here").unwrap();
    peer.flush("sync").await;
    match peer.next_notice(WAIT).await {
        Some(HubNotice::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden, "{message}")
        }
        other => panic!("expected flowhub/refused, got {other:?}"),
    }
    // The refusal does not start a fresh sync round that would make the peer resend
    // its change: no second notice, and the connection stays open.
    assert_eq!(peer.next_notice(Duration::from_millis(1500)).await, None);
    let after = get_flow(
        &hub,
        "guarded",
        &token("vera", &[("guarded", Role::Viewer)]),
    )
    .await;
    assert_eq!(after, before, "a viewer's edit was stored");
    assert_eq!(after["name"], "");
    // Still connected and still served: the editor's next edit reaches the viewer.
    let (_, ticket) = flow
        .edit(|d| {
            d.add_node(NewNode::new("action", "Later", Position::new(1.0, 0.0)).with_id("later"))
        })
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();
    peer.sync_until(|d| d.snapshot().nodes.contains_key("later"))
        .await;
    assert!(!flow.snapshot().name.contains("viewer"));
    hub.shutdown().await;
}

#[tokio::test]
async fn a_schema_breaking_change_is_repaired_and_the_peer_keeps_editing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let url = hub.ws_url();
    let tok = token("rita", &[("fixme", Role::Editor)]);

    let client = Client::connect(&url, &token("ed", &[("fixme", Role::Editor)]))
        .await
        .unwrap();
    let flow = client.subscribe("fixme").await.unwrap();
    let (_, ticket) = flow
        .edit(|d| d.add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)).with_id("n1")))
        .await
        .unwrap();
    flow.wait_acked(&ticket, WAIT).await.unwrap();

    let mut peer = RepoPeer::connect(&url, &tok, "rita-peer", "fixme").await;
    peer.join().await;
    peer.flush("request").await;
    peer.sync_until(|d| d.snapshot().nodes.contains_key("n1"))
        .await;

    // What a JS app does with `doc.nodes.n1.label = new Text(...)` or a rich-text
    // editor: the label becomes an Automerge Text object, which the schema forbids.
    {
        let raw = peer.doc.doc_mut();
        let (_, nodes) = raw.get(automerge::ROOT, "nodes").unwrap().unwrap();
        let (_, node) = raw.get(&nodes, "n1").unwrap().unwrap();
        let label = raw.put_object(&node, "label", ObjType::Text).unwrap();
        raw.splice_text(&label, 0, 0, "Typed in JS").unwrap();
        raw.commit();
    }
    assert!(peer.doc.validate().is_err());
    peer.flush("sync").await;

    // Not closed: told what was repaired, and the repair reaches it by sync.
    match peer.next_notice(WAIT).await {
        Some(HubNotice::Repaired { change, problems }) => {
            assert_eq!(change.len(), 64, "a hex change hash: {change}");
            assert!(
                problems.iter().any(|p| p.contains("nodes/n1/label")),
                "{problems:?}"
            );
        }
        other => panic!("expected flowhub/repaired, got {other:?}"),
    }
    peer.sync_until(|d| d.validate().is_ok()).await;
    assert_eq!(peer.doc.node("n1").unwrap().label, "Typed in JS");

    // The hub's flow is valid, with the label as a plain string.
    let stored = get_flow(&hub, "fixme", &tok).await;
    assert_eq!(stored["nodes"]["n1"]["label"], "Typed in JS");
    flow.wait_until(|s| s.nodes["n1"].label == "Typed in JS", WAIT)
        .await
        .unwrap();

    // A later valid edit from the same peer lands.
    peer.doc.move_node("n1", Position::new(50.0, 60.0)).unwrap();
    peer.flush("sync").await;
    flow.wait_until(|s| s.nodes["n1"].position.x == 50.0, WAIT)
        .await
        .expect("the peer's later edit lands");
    let stored = get_flow(&hub, "fixme", &tok).await;
    assert_eq!(stored["nodes"]["n1"]["position"]["x"], 50.0);
    assert_eq!(stored["nodes"]["n1"]["label"], "Typed in JS");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_and_closed_as_on_v1_ws() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.session.messages_per_second = 20;
    cfg.session.burst = 20;
    let hub = flowhub::Hub::start(cfg).await.unwrap();
    let url = hub.ws_url();
    let tok = token("flooder", &[("f", Role::Editor)]);
    let polite = Client::connect(&url, &token("polite", &[("f", Role::Editor)]))
        .await
        .unwrap();
    let mut peer = RepoPeer::connect(&url, &tok, "flood-peer", "f").await;
    peer.join().await;

    // Step 1: 90 control messages at once: beyond the burst they are refused with
    // `rate_limited` (and stay under the abuse limit of 100 refused messages).
    let flood = |peer: &str| {
        cbor(vec![
            ("type", text("remote-subscription-change")),
            ("senderId", text(peer)),
            ("targetId", text("hub")),
            ("add", Value::Array(vec![])),
        ])
    };
    for _ in 0..90 {
        peer.ws
            .send(Message::Binary(flood("flood-peer").into()))
            .await
            .unwrap();
    }
    let mut limited = 0;
    while let Some(msg) = peer.next(Duration::from_secs(1)).await {
        match msg {
            Incoming::Msg(m) if field_text(&m, "type") == Some("error") => {
                assert!(
                    field_text(&m, "message").is_some_and(|t| t.starts_with("rate_limited")),
                    "{m:?}"
                );
                limited += 1;
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(code) => panic!("closed too early: {code:?}"),
        }
    }
    assert!((40..=70).contains(&limited), "{limited} rate_limited");
    // Meanwhile another session is served.
    polite.ping().await.expect("others are served");
    // Step 2: after a pause the peer is served again (a rate, not a ban): `join`
    // is answered with `peer`.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = peer.join().await;
    assert_eq!(field_text(&reply, "type"), Some("peer"));

    // Step 3: sustained abuse ends with the same close code as on /v1/ws.
    for _ in 0..300 {
        if peer
            .ws
            .send(Message::Binary(flood("flood-peer").into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let repo_code = loop {
        match peer.next(WAIT).await {
            Some(Incoming::Closed(code)) => break code,
            Some(Incoming::Msg(_)) => {}
            None => panic!("a flooding peer was not closed"),
        }
    };
    let mut native = RawClient::connect(&url, &tok).await;
    for i in 0..400u64 {
        native
            .send(&flowhub_protocol::ClientMessage::Ping { id: Some(i.into()) })
            .await;
    }
    let native_code = native.close_code(WAIT).await;
    assert_eq!(native_code, Some(1008));
    assert_eq!(repo_code, native_code);
    polite.ping().await.expect("others are still served");
    hub.shutdown().await;
}

#[tokio::test]
async fn handshake_errors_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let url = hub.ws_url();
    let tok = token("x", &[("f", Role::Editor)]);

    // A sync before join.
    let mut peer = RepoPeer::connect(&url, &tok, "p1", "f").await;
    peer.flush("request").await;
    assert!(
        matches!(peer.next(WAIT).await, Some(Incoming::Msg(m)) if field_text(&m, "type") == Some("error"))
    );
    assert!(matches!(
        peer.next(WAIT).await,
        Some(Incoming::Closed(Some(1008)))
    ));

    // A protocol version the hub does not speak.
    let mut peer = RepoPeer::connect(&url, &tok, "p2", "f").await;
    peer.send(vec![
        ("type", text("join")),
        ("senderId", text("p2")),
        ("supportedProtocolVersions", Value::Array(vec![text("99")])),
    ])
    .await;
    assert!(
        matches!(peer.next(WAIT).await, Some(Incoming::Msg(m)) if field_text(&m, "type") == Some("error"))
    );
    assert!(matches!(
        peer.next(WAIT).await,
        Some(Incoming::Closed(Some(4002)))
    ));

    // No token: 401 before the upgrade.
    let refused =
        tokio_tungstenite::connect_async(format!("{url}/v1/automerge-repo?token=bad")).await;
    assert!(refused.is_err());
    hub.shutdown().await;
}
