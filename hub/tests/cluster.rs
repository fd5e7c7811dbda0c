//! Several hub processes sharing Redis and PostgreSQL: they converge, survive a node's
//! death and a Redis outage, drain on SIGTERM, and run on a sharded Redis Cluster.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flowhub_client::{fetch_flow, Client, FlowHandle, NewNode, Position};
use flowhub_protocol::{Role, ServerMessage};
use support::*;

const ACK: Duration = Duration::from_secs(20);

fn uniq(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn start_nodes(
    n: usize,
    db: &str,
    redis: &str,
    extra: &[(&str, &str)],
) -> (Vec<HubProcess>, Vec<tempfile::TempDir>) {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let node_id = format!("node-{i}-{}", uuid::Uuid::new_v4().simple());
        let mut env = vec![
            ("FLOWHUB_DATABASE_URL", db),
            ("FLOWHUB_REDIS_URL", redis),
            ("FLOWHUB_NODE_ID", node_id.as_str()),
        ];
        env.extend_from_slice(extra);
        nodes.push(HubProcess::start_env(dir.path(), free_port(), &env).await);
        dirs.push(dir);
    }
    (nodes, dirs)
}

/// Waits until every replica of every flow has the same heads; returns how long it took.
async fn converge(flows: &HashMap<String, Vec<FlowHandle>>, timeout: Duration) -> Duration {
    let started = Instant::now();
    let ok = eventually(timeout, || {
        flows.values().all(|replicas| {
            let h = replicas[0].heads_hex();
            replicas.iter().all(|r| r.heads_hex() == h)
        })
    })
    .await;
    assert!(ok, "replicas did not converge within {timeout:?}");
    started.elapsed()
}

/// Every replica's JSON equals every node's copy (read through the node's HTTP API).
async fn assert_identical(flows: &HashMap<String, Vec<FlowHandle>>, nodes: &[&HubProcess]) {
    for (flow_id, replicas) in flows {
        let reference = replicas[0].to_json();
        for r in replicas {
            assert_eq!(r.to_json(), reference, "replicas of {flow_id} differ");
        }
        let tok = token("auditor", &[(flow_id.as_str(), Role::Viewer)]);
        for node in nodes {
            let mut stored = fetch_flow(&node.ws_url(), flow_id, &tok).await.unwrap();
            stored.as_object_mut().unwrap().remove("id");
            assert_eq!(
                stored, reference,
                "node {} serves a different {flow_id}",
                node.port
            );
        }
    }
}

async fn add_nodes(
    flow: &FlowHandle,
    who: &str,
    n: usize,
) -> Vec<(String, flowhub_client::EditTicket)> {
    let mut out = Vec::new();
    for i in 0..n {
        let ((id, _), t) = flow
            .edit(|d| {
                d.add_node(NewNode::new(
                    "action",
                    format!("{who}-{i}"),
                    Position {
                        x: i as f64,
                        y: 0.0,
                    },
                ))
            })
            .await
            .unwrap();
        out.push((id, t));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_on_three_nodes_converge_on_five_flows() {
    require_machine_redis();
    let db = fresh_postgres_database().await;
    let (nodes, _dirs) = start_nodes(3, &db, MACHINE_REDIS, &[]).await;
    let flow_ids: Vec<String> = (0..5).map(|i| uniq(&format!("f{i}"))).collect();
    let roles: Vec<(&str, Role)> = flow_ids
        .iter()
        .map(|f| (f.as_str(), Role::Editor))
        .collect();

    // Step 1: on every node, one editor per flow.
    let mut clients = Vec::new();
    let mut flows: HashMap<String, Vec<FlowHandle>> = HashMap::new();
    for (n, node) in nodes.iter().enumerate() {
        let client = Client::connect(&node.ws_url(), &token(&format!("user{n}"), &roles))
            .await
            .unwrap();
        for f in &flow_ids {
            flows
                .entry(f.clone())
                .or_default()
                .push(client.subscribe(f).await.unwrap());
        }
        clients.push(client);
    }
    // Step 2: everyone edits every flow at once.
    let mut tasks = Vec::new();
    for (f, replicas) in &flows {
        for (n, r) in replicas.iter().enumerate() {
            let r = r.clone();
            let who = format!("{f}-{n}");
            tasks.push(tokio::spawn(async move {
                for (_, t) in add_nodes(&r, &who, 20).await {
                    r.wait_acked(&t, ACK).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Step 3: all replicas, on all nodes, and the store agree.
    let took = converge(&flows, Duration::from_secs(30)).await;
    eprintln!("5 flows x 3 nodes converged {took:?} after the last ack");
    assert_identical(&flows, &nodes.iter().collect::<Vec<_>>()).await;
    for replicas in flows.values() {
        assert_eq!(replicas[0].snapshot().nodes.len(), 60);
    }
    // Every node measured the lag of what it received over Redis.
    let (mut sum, mut count) = (0.0, 0.0);
    for node in &nodes {
        let n = node.metric("flowhub_bus_lag_seconds_count").await;
        assert!(n > 0.0, "node {} reports no bus lag samples", node.port);
        count += n;
        sum += node.metric("flowhub_bus_lag_seconds_sum").await;
    }
    eprintln!(
        "bus lag: {:.2} ms mean over {count} messages",
        sum / count * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acked_edit_and_leaves_presence() {
    require_machine_redis();
    let db = fresh_postgres_database().await;
    let (mut nodes, _dirs) =
        start_nodes(3, &db, MACHINE_REDIS, &[("FLOWHUB_HEARTBEAT_TTL", "2")]).await;
    let flow = uniq("kill");
    let tok = |u: &str| token(u, &[(flow.as_str(), Role::Editor)]);

    // Step 1: a watcher on node 0 and editors on nodes 1 and 2.
    let mut watcher = RawClient::connect(&nodes[0].ws_url(), &tok("watcher")).await;
    watcher.subscribe(&flow).await;
    let a = Client::connect(&nodes[1].ws_url(), &tok("alice"))
        .await
        .unwrap();
    let alice = a.subscribe(&flow).await.unwrap();
    let c = Client::connect(&nodes[2].ws_url(), &tok("carol"))
        .await
        .unwrap();
    let carol = c.subscribe(&flow).await.unwrap();
    let carol_session = c.session_id().to_string();
    watcher
        .until(Duration::from_secs(10), |m| {
            matches!(m, ServerMessage::PresenceDiff { joined, .. } | ServerMessage::PresenceState { peers: joined, .. }
                if joined.iter().any(|e| e.session_id == carol_session))
        })
        .await
        .expect("presence crosses nodes: the watcher on node 0 sees carol on node 2");

    // Step 2: both edit; carol's node dies with -9 in the middle of her edits.
    let mut acked = Vec::new();
    for (id, t) in add_nodes(&carol, "carol", 15).await {
        carol.wait_acked(&t, ACK).await.unwrap();
        acked.push(id);
    }
    let alice_edits = add_nodes(&alice, "alice", 15).await;
    let _in_flight = add_nodes(&carol, "carol-late", 10).await;
    let dead = nodes.remove(2);
    dead.kill9().await;
    let killed_at = Instant::now();
    for (id, t) in alice_edits {
        alice.wait_acked(&t, ACK).await.unwrap();
        acked.push(id);
    }

    // Step 3: carol's presence disappears for the watcher within the heartbeat TTL.
    watcher
        .until(Duration::from_secs(10), |m| matches!(m, ServerMessage::PresenceDiff { left, .. } if left.contains(&carol_session)))
        .await
        .expect("the dead node's session leaves presence");
    let presence_gone = killed_at.elapsed();
    eprintln!("dead node's presence gone after {presence_gone:?} (TTL 2 s)");
    assert!(presence_gone < Duration::from_secs(8));

    // Step 4: carol reconnects to a surviving node and resyncs: every acked edit is there.
    let c2 = Client::connect(&nodes[0].ws_url(), &tok("carol"))
        .await
        .unwrap();
    let carol2 = c2.subscribe(&flow).await.unwrap();
    let ok = eventually(Duration::from_secs(15), || {
        carol2.heads_hex() == alice.heads_hex()
    })
    .await;
    assert!(ok, "survivors and the reconnected client converge");
    let snap = carol2.snapshot();
    for id in &acked {
        assert!(snap.nodes.contains_key(id), "acknowledged node {id} lost");
    }
    let mut flows = HashMap::new();
    flows.insert(flow.clone(), vec![alice.clone(), carol2.clone()]);
    assert_identical(&flows, &nodes.iter().collect::<Vec<_>>()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_converge_after_a_redis_outage() {
    let mut redis = PrivateRedis::start();
    let db = fresh_postgres_database().await;
    let (nodes, _dirs) = start_nodes(2, &db, &redis.url(), &[]).await;
    let flow = uniq("outage");
    let tok = |u: &str| token(u, &[(flow.as_str(), Role::Editor)]);
    let a = Client::connect(&nodes[0].ws_url(), &tok("a"))
        .await
        .unwrap();
    let fa = a.subscribe(&flow).await.unwrap();
    let b = Client::connect(&nodes[1].ws_url(), &tok("b"))
        .await
        .unwrap();
    let fb = b.subscribe(&flow).await.unwrap();
    for (_, t) in add_nodes(&fa, "before", 5).await {
        fa.wait_acked(&t, ACK).await.unwrap();
    }

    // Step 1: Redis goes away for three seconds while both sides keep editing.
    redis.stop();
    let mut acked = Vec::new();
    for (side, f) in [("a", &fa), ("b", &fb)] {
        for (id, t) in add_nodes(f, &format!("during-{side}"), 10).await {
            f.wait_acked(&t, ACK)
                .await
                .expect("edits are acknowledged while the bus is down");
            acked.push(id);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    let healed = Instant::now();

    // Step 2: within the stated bound, both nodes hold everything.
    let mut flows = HashMap::new();
    flows.insert(flow.clone(), vec![fa.clone(), fb.clone()]);
    converge(&flows, Duration::from_secs(15)).await;
    let took = healed.elapsed();
    let snap = fa.snapshot();
    for id in &acked {
        assert!(
            snap.nodes.contains_key(id),
            "edit {id} lost across the outage"
        );
    }
    assert_identical(&flows, &nodes.iter().collect::<Vec<_>>()).await;
    let repairs = nodes[0].metric("flowhub_antientropy_repairs_total").await
        + nodes[1].metric("flowhub_antientropy_repairs_total").await;
    eprintln!("converged {took:?} after Redis came back; anti-entropy repaired {repairs} changes");
    assert!(
        repairs >= 20.0,
        "the lost messages were repaired from the store ({repairs})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_losing_acked_edits() {
    require_machine_redis();
    let db = fresh_postgres_database().await;
    let (mut nodes, _dirs) =
        start_nodes(1, &db, MACHINE_REDIS, &[("FLOWHUB_DRAIN_TIMEOUT", "5")]).await;
    let flow = uniq("drain");
    let tok = token("d", &[(flow.as_str(), Role::Editor)]);
    let mut raw = RawClient::connect(&nodes[0].ws_url(), &tok).await;
    raw.subscribe(&flow).await;
    let client = Client::connect(&nodes[0].ws_url(), &tok).await.unwrap();
    let f = client.subscribe(&flow).await.unwrap();
    let mut acked = Vec::new();
    for (id, t) in add_nodes(&f, "d", 20).await {
        f.wait_acked(&t, ACK).await.unwrap();
        acked.push(id);
    }
    let node = nodes.remove(0);
    let started = Instant::now();
    let status = node.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "drain exits 0, got {status:?}");
    eprintln!("drained in {:?}", started.elapsed());
    assert_eq!(
        raw.close_code(Duration::from_secs(5)).await,
        Some(1012),
        "clients are told to reconnect elsewhere"
    );

    let (nodes, _dirs2) = start_nodes(1, &db, MACHINE_REDIS, &[]).await;
    let stored = fetch_flow(&nodes[0].ws_url(), &flow, &tok).await.unwrap();
    for id in &acked {
        assert!(
            stored["nodes"].get(id).is_some(),
            "acked edit {id} lost in the drain"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_converge_on_a_sharded_redis_cluster() {
    let cluster = PrivateRedisCluster::start(3);
    let db = fresh_postgres_database().await;
    let (nodes, _dirs) = start_nodes(2, &db, &cluster.url(), &[]).await;
    // Fixed ids (the cluster and the database are this test's own): random ones all
    // landed on one shard now and then (3 × (1/3)^6 of the runs), failing the spread
    // check below for no fault of the hub.
    let flow_ids: Vec<String> = (0..6).map(|i| format!("shard{i}")).collect();
    let roles: Vec<(&str, Role)> = flow_ids
        .iter()
        .map(|f| (f.as_str(), Role::Editor))
        .collect();

    let mut flows: HashMap<String, Vec<FlowHandle>> = HashMap::new();
    let mut clients = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let client = Client::connect(&node.ws_url(), &token(&format!("u{n}"), &roles))
            .await
            .unwrap();
        for f in &flow_ids {
            flows
                .entry(f.clone())
                .or_default()
                .push(client.subscribe(f).await.unwrap());
        }
        clients.push(client);
    }
    for (f, replicas) in &flows {
        for (n, r) in replicas.iter().enumerate() {
            for (_, t) in add_nodes(r, &format!("{f}-{n}"), 5).await {
                r.wait_acked(&t, ACK).await.unwrap();
            }
        }
    }
    converge(&flows, Duration::from_secs(30)).await;
    assert_identical(&flows, &nodes.iter().collect::<Vec<_>>()).await;

    // Each flow's channel lives on exactly one shard (both nodes subscribed there), and
    // the flows are spread over several shards.
    let mut shards_used = std::collections::HashSet::new();
    for f in &flow_ids {
        let channel = format!("flow:{f}");
        let owners: Vec<u16> = cluster
            .ports
            .iter()
            .copied()
            .filter(|p| cluster.shard_subscribers(*p, &channel) > 0)
            .collect();
        assert_eq!(owners.len(), 1, "{channel} is subscribed on {owners:?}");
        assert_eq!(
            cluster.shard_subscribers(owners[0], &channel),
            2,
            "both nodes subscribe on the owning shard"
        );
        shards_used.insert(owners[0]);
    }
    eprintln!("6 flows spread over {} of 3 shards", shards_used.len());
    assert!(shards_used.len() >= 2, "all flows landed on one shard");
}

/// Collects a watcher's `run_event` seqs (and event ids) until `last` arrives.
async fn watch_until(client: &Client, run_id: &str, since: u64, last: u64) -> Vec<(u64, String)> {
    let mut msgs = client.messages();
    client
        .request(flowhub_protocol::ClientMessage::SubscribeRun {
            id: None,
            run_id: run_id.into(),
            since_seq: Some(since),
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.last().map(|(s, _)| *s) != Some(last) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(20), msgs.recv()).await {
            Ok(Ok(ServerMessage::RunEvent { event, .. })) => {
                got.push((event.seq, event.event.event_id))
            }
            Ok(Ok(ServerMessage::ResumeFrom { .. })) => {
                panic!("unexpected resume_from in a small run")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watcher lagged: {e}"),
            Err(_) => break,
        }
    }
    got
}

async fn post_events(
    node: &HubProcess,
    run_id: &str,
    flow: &str,
    ids: std::ops::Range<u32>,
    prefix: &str,
) {
    let svc = keys().sign(&flowhub::auth::Claims {
        sub: "engine".into(),
        name: None,
        exp: flowhub::auth::now_secs() + 600,
        flows: Default::default(),
        svc: true,
    });
    let events: Vec<serde_json::Value> = ids
        .map(|i| serde_json::json!({"event_id": format!("{prefix}{i}"), "type": "log", "flow_id": flow, "ts": i, "level": "info", "message": format!("{prefix}{i}")}))
        .collect();
    post_json(node, run_id, &svc, serde_json::json!({ "events": events })).await;
}

/// POSTs a batch like an engine does: retrying a 5xx (re-posting is idempotent).
async fn post_json(node: &HubProcess, run_id: &str, svc: &str, body: serde_json::Value) {
    let mut last = String::new();
    for _ in 0..5 {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/runs/{run_id}/events", node.http_url()))
            .bearer_auth(svc)
            .json(&body)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            return;
        }
        assert!(
            resp.status().is_server_error(),
            "{}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        last = resp.text().await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("ingest kept failing: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_events_reach_watchers_on_every_node_in_one_order() {
    require_machine_redis();
    let db = fresh_postgres_database().await;
    let (nodes, _dirs) = start_nodes(3, &db, MACHINE_REDIS, &[]).await;
    let flow = uniq("runs");
    let run = uniq("run");
    let tok = token("watcher", &[(flow.as_str(), Role::Viewer)]);
    // The run starts on node A.
    let svc = keys().sign(&flowhub::auth::Claims {
        sub: "engine".into(),
        name: None,
        exp: flowhub::auth::now_secs() + 600,
        flows: Default::default(),
        svc: true,
    });
    post_json(&nodes[0], &run, &svc, serde_json::json!({"events": [{"event_id": "start", "type": "run.started", "flow_id": flow, "ts": 0}]})).await;

    // Step 1: watchers on B and C; 200 events posted to A in batches of 20.
    let on_b = Client::connect(&nodes[1].ws_url(), &tok).await.unwrap();
    let on_c = Client::connect(&nodes[2].ws_url(), &tok).await.unwrap();
    let wb = tokio::spawn({
        let c = on_b.clone();
        let run = run.clone();
        async move { watch_until(&c, &run, 0, 201).await }
    });
    let wc = tokio::spawn({
        let c = on_c.clone();
        let run = run.clone();
        async move { watch_until(&c, &run, 0, 201).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for batch in 0..10 {
        post_events(&nodes[0], &run, &flow, batch * 20..(batch + 1) * 20, "a").await;
    }
    let expected: Vec<u64> = (1..=201).collect();
    for (name, w) in [("B", wb), ("C", wc)] {
        let got = w.await.unwrap();
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            expected,
            "watcher on {name}"
        );
    }

    // Step 2: a watcher moves from B to C mid-run and resumes from its last seq.
    let moving = Client::connect(&nodes[1].ws_url(), &tok).await.unwrap();
    let first = {
        let c = moving.clone();
        let run2 = run.clone();
        let h = tokio::spawn(async move { watch_until(&c, &run2, 201, 241).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        post_events(&nodes[0], &run, &flow, 200..240, "a").await;
        h.await.unwrap()
    };
    moving.close().await;
    post_events(&nodes[0], &run, &flow, 240..280, "a").await; // while it moves
    let moved = Client::connect(&nodes[2].ws_url(), &tok).await.unwrap();
    let last_seen = first.last().unwrap().0;
    let rest = watch_until(&moved, &run, last_seen, 281).await;
    let seqs: Vec<u64> = first.iter().chain(rest.iter()).map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (202..=281).collect::<Vec<_>>(),
        "no gap and no duplicate across the move"
    );

    // Step 3: two engines ingest the same run at A and at C at once: one order.
    let watcher = tokio::spawn({
        let c = on_b.clone();
        let run = run.clone();
        async move { watch_until(&c, &run, 281, 281 + 200).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, c) = tokio::join!(
        async {
            for batch in 0..5 {
                post_events(&nodes[0], &run, &flow, batch * 20..(batch + 1) * 20, "x").await;
            }
        },
        async {
            for batch in 0..5 {
                post_events(&nodes[2], &run, &flow, batch * 20..(batch + 1) * 20, "y").await;
            }
        }
    );
    let _ = (a, c);
    let got = watcher.await.unwrap();
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (282..=481).collect::<Vec<_>>(),
        "one gapless order"
    );
    let mut ids: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every event from both engines exactly once");
}
