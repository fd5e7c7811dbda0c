//! Several editors co-edit one flow through a real hub: every replica and the store's
//! copy end identical and valid. Runs on the embedded SQLite default and on PostgreSQL.

mod support;

use std::time::Duration;

use flowhub_client::{fetch_flow, Client, Endpoint, FlowHandle, NewNode, Position};
use flowhub_protocol::Role;
use support::*;

const ACK: Duration = Duration::from_secs(20);

async fn editor(hub_url: &str, name: &str) -> (Client, FlowHandle) {
    let client = Client::connect(hub_url, &token(name, &[("demo", Role::Editor)]))
        .await
        .expect("connect");
    let flow = client.subscribe("demo").await.expect("subscribe");
    (client, flow)
}

async fn three_editors_converge(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let hub = flowhub::Hub::start(config(dir.path(), database_url.clone()))
        .await
        .expect("hub starts");
    let url = hub.ws_url();

    // Step 1: three editors on one flow; Alice seeds ten shared nodes.
    let (_a, alice) = editor(&url, "alice").await;
    let (_b, bob) = editor(&url, "bob").await;
    let (_c, carol) = editor(&url, "carol").await;
    let mut shared = Vec::new();
    for i in 0..10 {
        let ((id, _), ticket) = alice
            .edit(|d| {
                d.add_node(NewNode::new(
                    "action",
                    format!("shared {i}"),
                    Position {
                        x: i as f64,
                        y: 0.0,
                    },
                ))
            })
            .await
            .unwrap();
        alice.wait_acked(&ticket, ACK).await.unwrap();
        shared.push(id);
    }
    for replica in [&bob, &carol] {
        replica
            .wait_until(|s| s.nodes.len() == 10, ACK)
            .await
            .expect("seed nodes reach every editor");
    }

    // Step 2: all at once: each adds 100 nodes, all move the same 10 nodes, Carol
    // deletes three shared nodes while Alice and Bob connect edges to them.
    async fn work(flow: FlowHandle, me: usize, shared: Vec<String>) {
        let mut tickets = Vec::new();
        for i in 0..100 {
            let (_, t) = flow
                .edit(|d| {
                    d.add_node(NewNode::new(
                        "http",
                        format!("n{me}-{i}"),
                        Position {
                            x: i as f64,
                            y: me as f64,
                        },
                    ))
                })
                .await
                .unwrap();
            tickets.push(t);
            if i % 10 == 0 {
                let target = &shared[i / 10];
                // Carol may have deleted it already on this replica: then there is
                // nothing to move.
                if let Ok((_, t)) = flow
                    .edit(|d| {
                        d.move_node(
                            target,
                            Position {
                                x: (me * 1000 + i) as f64,
                                y: -(i as f64),
                            },
                        )
                    })
                    .await
                {
                    tickets.push(t);
                }
                if me == 2 && (i / 10) < 3 {
                    let (_, t) = flow
                        .edit(|d| d.delete_node(&shared[7 + i / 10]))
                        .await
                        .unwrap();
                    tickets.push(t);
                }
                if me < 2 {
                    let src = shared[i / 10].clone();
                    let dst = shared[7 + (i / 10) % 3].clone();
                    // The target may already be gone on this replica: that is fine.
                    if let Ok((_, t)) = flow
                        .edit(|d| {
                            d.connect(
                                None,
                                Endpoint {
                                    node: src,
                                    port: "out".into(),
                                },
                                Endpoint {
                                    node: dst,
                                    port: "in".into(),
                                },
                            )
                        })
                        .await
                    {
                        tickets.push(t);
                    }
                }
            }
            if i % 25 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for t in &tickets {
            flow.wait_acked(t, ACK)
                .await
                .expect("every edit is acknowledged");
        }
    }
    let (r1, r2, r3) = tokio::join!(
        tokio::spawn(work(alice.clone(), 0, shared.clone())),
        tokio::spawn(work(bob.clone(), 1, shared.clone())),
        tokio::spawn(work(carol.clone(), 2, shared.clone()))
    );
    r1.unwrap();
    r2.unwrap();
    r3.unwrap();

    // Step 3: every replica and the store converge to one valid document.
    let replicas = [&alice, &bob, &carol];
    let converged = eventually(Duration::from_secs(30), || {
        let h = alice.heads_hex();
        replicas.iter().all(|r| r.heads_hex() == h)
    })
    .await;
    assert!(converged, "replicas did not reach the same heads");
    let stored = fetch_flow(&url, "demo", &token("auditor", &[("demo", Role::Viewer)]))
        .await
        .unwrap();
    let reference = alice.to_json();
    for r in replicas {
        assert_eq!(r.to_json(), reference, "replica differs");
        r.with_doc(|d| d.validate()).expect("replica is valid");
    }
    assert_eq!(
        stored,
        with_id(reference.clone(), "demo"),
        "the hub's copy differs"
    );

    let snap = alice.snapshot();
    assert_eq!(
        snap.nodes.len(),
        10 + 300 - 3,
        "300 added, 3 of the 10 shared deleted"
    );
    for gone in &shared[7..] {
        assert!(!snap.nodes.contains_key(gone));
    }
    for e in snap.edges.values() {
        assert!(
            snap.nodes.contains_key(&e.source.node) && snap.nodes.contains_key(&e.target.node),
            "dangling edge {e:?}"
        );
    }

    // Step 4: the store itself holds that document: a fresh hub on the same store,
    // with no flow actor open, serves it from the database.
    hub.shutdown().await;
    let hub = flowhub::Hub::start(config(dir.path(), database_url))
        .await
        .expect("hub restarts");
    let reloaded = fetch_flow(
        &hub.ws_url(),
        "demo",
        &token("auditor", &[("demo", Role::Viewer)]),
    )
    .await
    .unwrap();
    assert_eq!(
        reloaded,
        with_id(reference, "demo"),
        "the stored copy differs after restart"
    );
    hub.shutdown().await;
}

fn with_id(mut v: serde_json::Value, id: &str) -> serde_json::Value {
    v.as_object_mut().unwrap().insert("id".into(), id.into());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_editors_converge_on_sqlite() {
    three_editors_converge(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_editors_converge_on_postgres() {
    three_editors_converge(Backend::Postgres).await;
}
