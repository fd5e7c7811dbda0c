//! Two hub processes on the same PostgreSQL but on two different Redis servers: every
//! bus message between them is lost. The store watch (one batched version query per
//! node per interval) still converges their flows while clients stay connected and do
//! nothing, and still reaches a revoked editor on the other node.

mod support;

use std::time::{Duration, Instant};

use flowhub_client::{fetch_flow, Client, ClientError, NewNode, Position};
use flowhub_protocol::{ErrorCode, Role, ServerMessage};
use support::*;

/// The stated bound is one store-watch interval (1 s) plus a query and a sync round
/// trip; the tests wait a generous multiple of it and print what they measured.
const BOUND: Duration = Duration::from_secs(15);
const ACK: Duration = Duration::from_secs(10);

fn uniq(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn split_nodes(db: &str) -> (Vec<HubProcess>, Vec<PrivateRedis>, Vec<tempfile::TempDir>) {
    let redis = vec![PrivateRedis::start(), PrivateRedis::start()];
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for (i, r) in redis.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let url = r.url();
        let node_id = format!("split-{i}");
        let env = [
            ("FLOWHUB_DATABASE_URL", db),
            ("FLOWHUB_REDIS_URL", url.as_str()),
            ("FLOWHUB_NODE_ID", node_id.as_str()),
        ];
        nodes.push(HubProcess::start_env(dir.path(), free_port(), &env).await);
        dirs.push(dir);
    }
    (nodes, redis, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_bus_converges_through_the_store_while_clients_sit_idle() {
    let db = fresh_postgres_database().await;
    let (nodes, _redis, _dirs) = split_nodes(&db).await;
    let flow_id = uniq("split");
    let roles = [(flow_id.as_str(), Role::Editor)];
    let a = Client::connect(&nodes[0].ws_url(), &token("ann", &roles))
        .await
        .unwrap();
    let b = Client::connect(&nodes[1].ws_url(), &token("bob", &roles))
        .await
        .unwrap();
    let fa = a.subscribe(&flow_id).await.unwrap();
    let fb = b.subscribe(&flow_id).await.unwrap();

    // Both sides edit; each edit is acknowledged by its own node (stored).
    let mut tickets = Vec::new();
    for i in 0..10 {
        for (who, flow) in [("ann", &fa), ("bob", &fb)] {
            let (_, t) = flow
                .edit(|d| {
                    d.add_node(NewNode::new(
                        "action",
                        format!("{who}-{i}"),
                        Position::new(i as f64, 0.0),
                    ))
                })
                .await
                .unwrap();
            tickets.push((flow, t));
        }
    }
    for (flow, t) in &tickets {
        flow.wait_acked(t, ACK).await.expect("acked by its node");
    }
    let acked = Instant::now();
    let converged = eventually(BOUND, || {
        fa.heads_hex() == fb.heads_hex() && fa.to_json()["nodes"].as_object().unwrap().len() == 20
    })
    .await;
    let took = acked.elapsed();
    println!("split bus: both replicas converged {took:?} after the last ack");
    assert!(
        converged,
        "replicas on a split bus did not converge in {BOUND:?}"
    );
    assert_eq!(fa.to_json(), fb.to_json());
    let tok = token("auditor", &[(flow_id.as_str(), Role::Viewer)]);
    for node in &nodes {
        let mut served = fetch_flow(&node.ws_url(), &flow_id, &tok).await.unwrap();
        served.as_object_mut().unwrap().remove("id");
        assert_eq!(
            served,
            fa.to_json(),
            "node {} serves another flow",
            node.port
        );
    }
    // Nothing was repaired by chance: node B really caught up from the store.
    assert!(nodes[1].metric("flowhub_antientropy_repairs_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_whose_bus_message_is_lost_still_reaches_the_other_node() {
    let db = fresh_postgres_database().await;
    let (nodes, _redis, _dirs) = split_nodes(&db).await;
    let flow_id = uniq("revoke");
    let eve = Client::connect(
        &nodes[1].ws_url(),
        &token("eve", &[(flow_id.as_str(), Role::Editor)]),
    )
    .await
    .unwrap();
    let flow = eve.subscribe(&flow_id).await.unwrap();
    let (_, t) = flow
        .edit(|d| d.add_node(NewNode::new("action", "before", Position::new(0.0, 0.0))))
        .await
        .unwrap();
    flow.wait_acked(&t, ACK).await.expect("an editor edits");

    // The owner revokes eve through node A; node A publishes on its own Redis, which
    // node B never hears: the bus message is lost on its way to B.
    let mut errors = eve.errors();
    let owner = token("olga", &[(flow_id.as_str(), Role::Owner)]);
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/v1/flows/{flow_id}/members/eve",
            nodes[0].http_url()
        ))
        .bearer_auth(&owner)
        .json(&serde_json::json!({"role": "revoked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let revoked_at = Instant::now();
    let announced = tokio::time::timeout(BOUND, async {
        loop {
            match errors.recv().await {
                Ok(ServerMessage::Error { code, .. }) => break code,
                Ok(_) => continue,
                Err(e) => panic!("error stream ended: {e}"),
            }
        }
    })
    .await
    .expect("node B learns of the revocation from the store");
    let took = revoked_at.elapsed();
    println!("lost membership message: node B revoked the session {took:?} after the PUT");
    assert_eq!(announced, ErrorCode::Forbidden);

    // And the next edit is refused, not stored.
    let ((refused, _), t) = flow
        .edit(|d| d.add_node(NewNode::new("action", "after", Position::new(1.0, 0.0))))
        .await
        .unwrap();
    match flow.wait_acked(&t, ACK).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("a revoked editor's edit was not refused: {other:?}"),
    }
    let stored = fetch_flow(&nodes[0].ws_url(), &flow_id, &owner)
        .await
        .unwrap();
    assert!(
        stored["nodes"].get(&refused).is_none(),
        "a refused edit was stored"
    );
}
