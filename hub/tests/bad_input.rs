//! Bad input gets a typed error frame; the connection stays usable and the document
//! is unchanged. Bad tokens are refused at upgrade with 401.

mod support;

use std::time::Duration;

use flowhub_client::{fetch_flow, Client, ClientError, NewNode, Position};
use flowhub_protocol::frame::encode_flow_sync;
use flowhub_protocol::{ErrorCode, Role, ServerMessage};
use support::*;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

async fn next_error(errors: &mut broadcast::Receiver<ServerMessage>) -> ServerMessage {
    tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("an error frame arrives")
        .expect("error channel open")
}

fn code_of(msg: &ServerMessage) -> (ErrorCode, Option<String>) {
    match msg {
        ServerMessage::Error { code, flow_id, .. } => (*code, flow_id.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let tok = token(
        "mallory",
        &[("demo", Role::Editor), ("other", Role::Editor)],
    );
    let client = Client::connect(&hub.ws_url(), &tok).await.unwrap();
    let flow = client.subscribe("demo").await.unwrap();
    let (_, t) = flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "trigger",
                "start",
                Position { x: 0.0, y: 0.0 },
            ))
        })
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT).await.unwrap();
    let before = fetch_flow(&hub.ws_url(), "demo", &tok).await.unwrap();
    let mut errors = client.errors();

    // Malformed JSON.
    client.send_text("{not json".into()).await.unwrap();
    assert_eq!(
        code_of(&next_error(&mut errors).await).0,
        ErrorCode::BadRequest
    );

    // Unknown message type: the request id is echoed, so it is a reply, not a broadcast.
    client
        .send_text(r#"{"type":"teleport","id":77}"#.into())
        .await
        .unwrap();
    match next_error(&mut errors).await {
        ServerMessage::Error {
            code, id, message, ..
        } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert_eq!(id, Some(flowhub_protocol::RequestId::Num(77)));
            assert!(message.contains("teleport"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // Invalid Automerge bytes for a subscribed flow.
    client
        .send_binary(encode_flow_sync("demo", b"\x42definitely not automerge"))
        .await
        .unwrap();
    assert_eq!(
        code_of(&next_error(&mut errors).await),
        (ErrorCode::BadRequest, Some("demo".into()))
    );

    // A sync frame for a flow this session has not subscribed to.
    client
        .send_binary(encode_flow_sync("other", b"\x42\x00"))
        .await
        .unwrap();
    assert_eq!(
        code_of(&next_error(&mut errors).await),
        (ErrorCode::BadRequest, Some("other".into()))
    );

    // A binary frame with a broken header.
    client.send_binary(vec![0x09, 0x01]).await.unwrap();
    assert_eq!(
        code_of(&next_error(&mut errors).await).0,
        ErrorCode::BadRequest
    );

    // An oversize frame (above the 1 MiB soft limit, below the hard limit).
    client
        .send_text(format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(2 << 20)
        ))
        .await
        .unwrap();
    assert_eq!(
        code_of(&next_error(&mut errors).await).0,
        ErrorCode::TooLarge
    );

    // The connection still works, the replica still syncs, the document is unchanged.
    client.ping().await.expect("connection still usable");
    let after = fetch_flow(&hub.ws_url(), "demo", &tok).await.unwrap();
    assert_eq!(before, after, "bad input changed the document");
    let (_, t) = flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "action",
                "still editing",
                Position { x: 1.0, y: 0.0 },
            ))
        })
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT)
        .await
        .expect("edits still work after bad input");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_edits_are_refused_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let editor_tok = token("ed", &[("demo", Role::Editor)]);
    let viewer_tok = token("vi", &[("demo", Role::Viewer)]);

    let editor = Client::connect(&hub.ws_url(), &editor_tok).await.unwrap();
    let ed_flow = editor.subscribe("demo").await.unwrap();
    let viewer = Client::connect(&hub.ws_url(), &viewer_tok).await.unwrap();
    let vi_flow = viewer.subscribe("demo").await.unwrap();
    assert_eq!(vi_flow.role(), Role::Viewer);

    // The viewer's edit is refused with `forbidden`.
    let ((evil_id, _), t) = vi_flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "action",
                "sneaky",
                Position { x: 0.0, y: 0.0 },
            ))
        })
        .await
        .unwrap();
    match vi_flow.wait_acked(&t, WAIT).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("viewer edit not refused: {other:?}"),
    }

    // The editor's edit on the same flow succeeds, and reaches the viewer.
    let ((good_id, _), t) = ed_flow
        .edit(|d| d.add_node(NewNode::new("action", "legit", Position { x: 1.0, y: 1.0 })))
        .await
        .unwrap();
    ed_flow.wait_acked(&t, WAIT).await.unwrap();
    vi_flow
        .wait_until(|s| s.nodes.contains_key(&good_id), WAIT)
        .await
        .expect("viewer sees the editor's node");

    // Nothing of the viewer's reached the store, the editor, or stayed on the viewer.
    hub.shutdown().await;
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let stored = fetch_flow(&hub.ws_url(), "demo", &editor_tok)
        .await
        .unwrap();
    assert!(
        stored["nodes"].get(&evil_id).is_none(),
        "viewer edit was persisted"
    );
    assert!(stored["nodes"].get(&good_id).is_some());
    assert!(!ed_flow.snapshot().nodes.contains_key(&evil_id));
    assert!(
        !vi_flow.snapshot().nodes.contains_key(&evil_id),
        "refused edit not rolled back locally"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_upgrade_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let expired = token_with_exp("old", &[("demo", Role::Editor)], 1_000);
    let forged = flowhub::auth::JwtKeys::new("not-the-secret").sign(&flowhub::auth::Claims {
        sub: "eve".into(),
        name: None,
        exp: flowhub::auth::now_secs() + 60,
        flows: [("*".to_string(), Role::Owner)].into(),
        svc: false,
    });
    for bad in ["", "garbage", expired.as_str(), forged.as_str()] {
        match Client::connect(&hub.ws_url(), bad).await {
            Err(ClientError::Unauthorized) => {}
            Err(other) => panic!("expected Unauthorized for {bad:?}, got {other}"),
            Ok(_) => panic!("connected with a bad token {bad:?}"),
        }
    }
    // And over HTTP: 401 with a JSON body.
    let resp = reqwest::get(format!("http://{}/v1/flows/demo?token=garbage", hub.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // No role on a flow: 403; unknown flow: 404.
    let tok = token("u", &[("demo", Role::Viewer)]);
    let resp = reqwest::get(format!("http://{}/v1/flows/secret?token={tok}", hub.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = reqwest::get(format!("http://{}/v1/flows/demo?token={tok}", hub.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    hub.shutdown().await;
}
