//! The client end to end against an in-process fake hub (see `support`).

mod support;

use std::time::Duration;

use flowhub_client::{
    fetch_flow, Client, ClientError, ClientMessage, ErrorCode, NewNode, Position, Role,
    ServerMessage,
};
use support::FakeHub;

const T: Duration = Duration::from_secs(5);

async fn hub_with_demo() -> FakeHub {
    let hub = FakeHub::start().await;
    hub.create_flow("demo", |doc| {
        doc.set_name("Demo").unwrap();
        doc.add_node(NewNode::new("trigger", "Start", Position::new(0.0, 0.0)).with_id("start"))
            .unwrap();
    });
    hub
}

#[tokio::test]
async fn connect_handshake_and_ping() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    assert!(client.session_id().starts_with("sess-"));
    assert_eq!(client.user_id(), "good");
    assert_eq!(client.welcome().node_id, "fake-node");
    assert_eq!(client.welcome().limits.max_subscriptions, 16);
    assert!(client.ping().await.unwrap() < T);
    assert!(!client.is_closed());
    client.close().await;
    assert!(client.is_closed());
    assert_eq!(client.close_reason().map(|(c, _)| c), Some(1000));
    assert!(matches!(
        client.ping().await,
        Err(ClientError::Closed { code: 1000, .. })
    ));
}

#[tokio::test]
async fn bad_token_is_unauthorized() {
    let hub = hub_with_demo().await;
    let err = Client::connect(&hub.url, "bad").await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized), "{err:?}");
}

#[tokio::test]
async fn unreachable_hub_is_a_connect_error() {
    let err = Client::connect("ws://127.0.0.1:9", "good")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn subscribe_catches_up() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let flow = client.subscribe("demo").await.unwrap();
    assert_eq!(flow.flow_id(), "demo");
    assert_eq!(flow.role(), Role::Editor);
    assert_eq!(flow.snapshot(), hub.snapshot("demo"));
    assert_eq!(flow.heads_hex(), hub.heads_hex("demo"));
    assert_eq!(flow.to_json()["name"], "Demo");
    // A second subscribe shares the replica.
    let again = client.subscribe("demo").await.unwrap();
    assert_eq!(again.heads_hex(), flow.heads_hex());
}

#[tokio::test]
async fn unknown_flow_is_a_server_error() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let err = client.subscribe("missing").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .request(ClientMessage::SubscribeFlow {
            id: None,
            flow_id: "missing".into(),
            pending: vec![],
            stream: false,
            format: Default::default(),
            since_heads: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    // The failed subscribe left nothing behind: the flow can still be subscribed later.
    hub.create_flow("missing", |_| {});
    client.subscribe("missing").await.unwrap();
}

#[tokio::test]
async fn edits_are_acked_and_reach_other_clients() {
    let hub = hub_with_demo().await;
    let alice = Client::connect(&hub.url, "good").await.unwrap();
    let bob = Client::connect(&hub.url, "good2").await.unwrap();
    let a = alice.subscribe("demo").await.unwrap();
    let b = bob.subscribe("demo").await.unwrap();

    let changed = tokio::spawn({
        let b = b.clone();
        async move { tokio::time::timeout(T, b.changed()).await }
    });
    let ((id, _), ticket) = a
        .edit(|doc| doc.add_node(NewNode::new("http", "Fetch", Position::new(10.0, 5.0))))
        .await
        .unwrap();
    assert_eq!(ticket.hashes.len(), 1);
    a.wait_acked(&ticket, T).await.unwrap();
    assert!(hub.snapshot("demo").nodes.contains_key(&id));

    changed.await.unwrap().expect("bob saw a change");
    b.wait_until(|s| s.nodes.get(&id).is_some_and(|n| n.label == "Fetch"), T)
        .await
        .unwrap();
    b.wait_for_heads(&a.heads_hex(), T).await.unwrap();
    assert_eq!(a.snapshot(), b.snapshot());

    // Edits from the hub side arrive too.
    hub.edit("demo", |doc| {
        doc.relabel_node("start", "Begin").unwrap();
    });
    a.wait_until(|s| s.nodes["start"].label == "Begin", T)
        .await
        .unwrap();

    // An edit that fails locally is an error and sends nothing.
    let err = a
        .edit(|doc| doc.relabel_node("nope", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Crdt(_)), "{err:?}");
}

#[tokio::test]
async fn viewer_edit_is_rejected_and_rolled_back() {
    let hub = hub_with_demo().await;
    let viewer = Client::connect(&hub.url, "viewer-1").await.unwrap();
    let flow = viewer.subscribe("demo").await.unwrap();
    assert_eq!(flow.role(), Role::Viewer);
    let mut errors = viewer.errors();

    let (_, ticket) = flow
        .edit(|doc| doc.relabel_node("start", "hacked"))
        .await
        .unwrap();
    assert_eq!(flow.snapshot().nodes["start"].label, "hacked");
    let err = flow.wait_acked(&ticket, T).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{err:?}"
    );
    let frame = tokio::time::timeout(T, errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        frame,
        ServerMessage::Error { id: None, code: ErrorCode::Forbidden, ref flow_id, .. } if flow_id.as_deref() == Some("demo")
    ));
    // Rolled back at once, and still in sync afterwards.
    assert_eq!(flow.snapshot().nodes["start"].label, "Start");
    hub.edit("demo", |doc| {
        doc.set_name("Renamed").unwrap();
    });
    flow.wait_until(|s| s.name == "Renamed", T).await.unwrap();
    flow.wait_for_heads(&hub.heads_hex("demo"), T)
        .await
        .unwrap();
    assert_eq!(flow.snapshot(), hub.snapshot("demo"));
    assert_eq!(hub.snapshot("demo").nodes["start"].label, "Start");
}

#[tokio::test]
async fn schema_violation_is_rejected() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let flow = client.subscribe("demo").await.unwrap();
    let (_, ticket) = flow
        .edit(|doc| {
            use automerge::transaction::Transactable;
            doc.doc_mut().put(automerge::ROOT, "bogus", 1)?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(ticket.hashes.len(), 1);
    let err = flow.wait_acked(&ticket, T).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SchemaViolation), "{err:?}");

    // A good edit after the rollback goes through.
    let (_, ticket) = flow.edit(|doc| doc.set_name("fine")).await.unwrap();
    flow.wait_acked(&ticket, T).await.unwrap();
    assert_eq!(hub.snapshot("demo").name, "fine");
}

#[tokio::test]
async fn missing_ack_times_out_and_close_fails_waits() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let flow = client.subscribe("demo").await.unwrap();
    hub.set_acks(false);
    let (_, ticket) = flow.edit(|doc| doc.set_name("x")).await.unwrap();
    let err = flow
        .wait_acked(&ticket, Duration::from_millis(200))
        .await
        .unwrap_err();
    // Not a failure: the outcome is unknown and the edit stays pending.
    assert!(matches!(err, ClientError::AckUnknown { .. }), "{err:?}");
    assert_eq!(flow.pending_edits(), 1);

    let waiting = tokio::spawn({
        let flow = flow.clone();
        let ticket = ticket.clone();
        async move { flow.wait_acked(&ticket, T).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    hub.kick(4003, "too slow");
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Closed { code: 4003, ref reason } if reason == "too slow"),
        "{err:?}"
    );
    assert!(client.is_closed());
    assert_eq!(client.close_reason(), Some((4003, "too slow".to_owned())));
    assert!(matches!(
        flow.edit(|doc| doc.set_name("y")).await,
        Err(ClientError::Closed { code: 4003, .. })
    ));
    // changed() does not hang on a closed connection.
    tokio::time::timeout(T, flow.changed()).await.unwrap();
}

#[tokio::test]
async fn bad_input_errors_are_broadcast() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let mut errors = client.errors();
    client.send_text("not json".into()).await.unwrap();
    let e = tokio::time::timeout(T, errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        e,
        ServerMessage::Error {
            code: ErrorCode::BadRequest,
            id: None,
            ..
        }
    ));
    client
        .send_text(r#"{"type":"nope","id":99}"#.into())
        .await
        .unwrap();
    let e = tokio::time::timeout(T, errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        e,
        ServerMessage::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    client.send_binary(vec![0x09, 1, 2]).await.unwrap();
    let e = tokio::time::timeout(T, errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        e,
        ServerMessage::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    // The connection is still fine.
    client.ping().await.unwrap();
}

#[tokio::test]
async fn unsubscribe_stops_the_handle() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let flow = client.subscribe("demo").await.unwrap();
    flow.unsubscribe().await.unwrap();
    let err = flow.edit(|doc| doc.set_name("z")).await.unwrap_err();
    assert!(matches!(err, ClientError::NotSubscribed { .. }), "{err:?}");
    // Subscribing again gives a fresh, working replica.
    let flow = client.subscribe("demo").await.unwrap();
    let (_, ticket) = flow.edit(|doc| doc.set_name("again")).await.unwrap();
    flow.wait_acked(&ticket, T).await.unwrap();
}

#[tokio::test]
async fn fetch_flow_over_http() {
    let hub = hub_with_demo().await;
    let json = fetch_flow(&hub.url, "demo", "good").await.unwrap();
    assert_eq!(json["id"], "demo");
    assert_eq!(json["name"], "Demo");
    assert_eq!(json["nodes"]["start"]["kind"], "trigger");
    let err = fetch_flow(&hub.url, "missing", "good").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    let err = fetch_flow(&hub.url, "demo", "bad").await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized), "{err:?}");
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let hub = hub_with_demo().await;
    let client = Client::connect(&hub.url, "good").await.unwrap();
    let other = client.clone();
    let flow = client.subscribe("demo").await.unwrap();
    drop(client);
    other.ping().await.unwrap();
    drop(other);
    // The flow handle keeps the connection open.
    let (_, ticket) = flow.edit(|doc| doc.set_name("kept")).await.unwrap();
    flow.wait_acked(&ticket, T).await.unwrap();
    assert_eq!(hub.active_sessions(), 1);
    drop(flow);
    tokio::time::timeout(T, async {
        while hub.active_sessions() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session ended");
}

#[tokio::test]
async fn many_quick_edits_from_two_clients_converge_and_are_all_acked() {
    let hub = hub_with_demo().await;
    let alice = Client::connect(&hub.url, "good").await.unwrap();
    let bob = Client::connect(&hub.url, "good2").await.unwrap();
    let a = alice.subscribe("demo").await.unwrap();
    let b = bob.subscribe("demo").await.unwrap();
    let mut tickets = Vec::new();
    for i in 0..40 {
        let (who, tag) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
        let (_, ticket) = who
            .edit(move |doc| {
                doc.add_node(
                    NewNode::new("http", format!("{tag}{i}"), Position::new(i as f64, 0.0))
                        .with_id(format!("{tag}{i}")),
                )
            })
            .await
            .unwrap();
        tickets.push((who.clone(), ticket));
    }
    for (who, ticket) in &tickets {
        who.wait_acked(ticket, T).await.unwrap();
    }
    let hub_heads = hub.heads_hex("demo");
    a.wait_for_heads(&hub_heads, T).await.unwrap();
    b.wait_for_heads(&hub_heads, T).await.unwrap();
    assert_eq!(hub.snapshot("demo").nodes.len(), 41);
    assert_eq!(a.snapshot(), hub.snapshot("demo"));
    assert_eq!(b.snapshot(), hub.snapshot("demo"));
}
