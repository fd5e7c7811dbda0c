//! A run is pinned to the graph it executed: edits after the run started do not show
//! through the run's recorded heads.

mod support;

use std::time::Duration;

use flowhub::auth::{now_secs, Claims};
use flowhub_client::{Client, NewNode, Position};
use flowhub_protocol::Role;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_shows_the_flow_as_it_was_when_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let tok = token("ed", &[("pin", Role::Editor)]);
    let client = Client::connect(&hub.ws_url(), &tok).await.unwrap();
    let flow = client.subscribe("pin").await.unwrap();
    let ((before, _), t) = flow
        .edit(|d| {
            d.add_node(NewNode::new(
                "trigger",
                "before",
                Position { x: 0.0, y: 0.0 },
            ))
        })
        .await
        .unwrap();
    flow.wait_acked(&t, Duration::from_secs(10)).await.unwrap();

    // Step 1: the engine reports the run's start; the hub records the flow's heads.
    let svc = keys().sign(&Claims {
        sub: "engine".into(),
        name: None,
        exp: now_secs() + 60,
        flows: Default::default(),
        svc: true,
    });
    let http = reqwest::Client::new();
    let base = format!("http://{}", hub.addr());
    let resp = http
        .post(format!("{base}/v1/runs/run-1/events"))
        .bearer_auth(&svc)
        .json(&serde_json::json!({"events": [{"event_id": "e1", "type": "run.started", "flow_id": "pin", "ts": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let run: serde_json::Value = http
        .get(format!("{base}/v1/runs/run-1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pinned: Vec<String> = serde_json::from_value(run["flowHeads"].clone()).unwrap();
    assert_eq!(
        pinned,
        flow.heads_hex(),
        "the run records the heads at its start"
    );

    // Step 2: people keep editing after the run started.
    let ((after, _), t) = flow
        .edit(|d| d.add_node(NewNode::new("action", "after", Position { x: 1.0, y: 0.0 })))
        .await
        .unwrap();
    flow.wait_acked(&t, Duration::from_secs(10)).await.unwrap();
    flow.wait_acked(
        &flow
            .edit(|d| d.relabel_node(&before, "renamed"))
            .await
            .unwrap()
            .1,
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // Step 3: through the pinned heads, the graph that ran; without, the current one.
    let then: serde_json::Value = http
        .get(format!("{base}/v1/flows/pin?heads={}", pinned.join(",")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        then["nodes"].get(&after).is_none(),
        "a node added after the run started shows"
    );
    assert_eq!(then["nodes"][&before]["label"], "before");
    assert_eq!(then["heads"], serde_json::json!(pinned));
    let now: serde_json::Value = http
        .get(format!("{base}/v1/flows/pin"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(now["nodes"].get(&after).is_some());
    assert_eq!(now["nodes"][&before]["label"], "renamed");

    // Unknown or malformed heads are typed 4xx errors.
    let bad = http
        .get(format!("{base}/v1/flows/pin?heads=zz"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unknown = http
        .get(format!("{base}/v1/flows/pin?heads={}", "ab".repeat(32)))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    hub.shutdown().await;
}
