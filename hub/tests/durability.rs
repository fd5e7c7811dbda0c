//! An acknowledged edit survives `kill -9` of the hub process.

mod support;

use std::time::Duration;

use flowhub_client::{fetch_flow, Client, NewNode, Position};
use flowhub_protocol::Role;
use support::*;

async fn acked_edits_survive_kill9(database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = HubProcess::start(dir.path(), port, database_url.as_deref()).await;
    let tok = token("alice", &[("durable", Role::Editor)]);

    // Step 1: 50 edits, each awaited until the hub acknowledges it.
    let client = Client::connect(&hub.ws_url(), &tok).await.unwrap();
    let flow = client.subscribe("durable").await.unwrap();
    let mut acked = Vec::new();
    for i in 0..50 {
        let ((id, _), ticket) = flow
            .edit(|d| {
                d.add_node(NewNode::new(
                    "action",
                    format!("step {i}"),
                    Position {
                        x: i as f64,
                        y: 1.0,
                    },
                ))
            })
            .await
            .unwrap();
        flow.wait_acked(&ticket, Duration::from_secs(10))
            .await
            .unwrap();
        acked.push(id);
    }
    // Step 2: some more edits that are sent but not awaited, then SIGKILL at once.
    for i in 0..20 {
        let _ = flow
            .edit(|d| {
                d.add_node(NewNode::new(
                    "action",
                    format!("late {i}"),
                    Position { x: 0.0, y: 0.0 },
                ))
            })
            .await;
    }
    hub.kill9().await;

    // Step 3: a new process on the same store has every acknowledged edit.
    let port = free_port();
    let hub = HubProcess::start(dir.path(), port, database_url.as_deref()).await;
    let stored = fetch_flow(&hub.ws_url(), "durable", &tok).await.unwrap();
    let nodes = stored["nodes"].as_object().unwrap();
    for id in &acked {
        assert!(nodes.contains_key(id), "acknowledged node {id} lost");
    }
    assert_eq!(nodes[&acked[49]]["label"], "step 49");
    hub.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_edits_survive_kill9_on_sqlite() {
    acked_edits_survive_kill9(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_edits_survive_kill9_on_postgres() {
    acked_edits_survive_kill9(Some(fresh_postgres_database().await)).await;
}
