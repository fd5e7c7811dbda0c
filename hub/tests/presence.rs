//! Presence: joins, updates and leaves reach the others; vanished clients leave within
//! the idle bound; cursor storms are coalesced.

mod support;

use std::time::{Duration, Instant};

use flowhub::Hub;
use flowhub_protocol::{ClientMessage, Cursor, Role, ServerMessage};
use support::*;

const WAIT: Duration = Duration::from_secs(5);

async fn hub_with_fast_heartbeat(dir: &std::path::Path) -> Hub {
    let mut cfg = config(dir, None);
    cfg.ping_interval = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_millis(700);
    Hub::start(cfg).await.unwrap()
}

fn left_ids(m: &ServerMessage) -> Vec<String> {
    match m {
        ServerMessage::PresenceDiff { left, .. } => left.clone(),
        _ => vec![],
    }
}

fn joined_ids(m: &ServerMessage) -> Vec<String> {
    match m {
        ServerMessage::PresenceDiff { joined, .. } => {
            joined.iter().map(|e| e.session_id.clone()).collect()
        }
        _ => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_update_and_leave_reach_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_fast_heartbeat(dir.path()).await;
    let url = hub.ws_url();
    let mut alice = RawClient::connect(&url, &token("alice", &[("p", Role::Editor)])).await;
    alice.subscribe("p").await;
    let state = alice
        .until(WAIT, |m| matches!(m, ServerMessage::PresenceState { .. }))
        .await
        .unwrap();
    match state {
        ServerMessage::PresenceState { peers, .. } => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].user_id, "alice");
            assert_eq!(peers[0].name, "alice (test)", "name comes from the token");
        }
        _ => unreachable!(),
    }

    // Step 1: Bob joins; Alice sees him with his verified identity.
    let mut bob = RawClient::connect(&url, &token("bob", &[("p", Role::Viewer)])).await;
    bob.subscribe("p").await;
    let joined = alice
        .until(WAIT, |m| matches!(m, ServerMessage::PresenceDiff { joined, .. } if joined.iter().any(|e| e.user_id == "bob")))
        .await
        .expect("alice sees bob join");
    let ServerMessage::PresenceDiff { joined, .. } = joined else {
        unreachable!()
    };
    assert_eq!(joined[0].session_id, bob.session_id);

    // Step 2: Bob moves his cursor and selects nodes; Alice sees it.
    bob.send(&ClientMessage::Presence {
        flow_id: "p".into(),
        cursor: Some(Cursor { x: 10.0, y: 20.0 }),
        selection: Some(vec!["n1".into(), "n2".into()]),
        color: Some("#123456".into()),
    })
    .await;
    let update = alice
        .until(
            WAIT,
            |m| matches!(m, ServerMessage::PresenceDiff { updated, .. } if !updated.is_empty()),
        )
        .await
        .expect("alice sees bob's cursor");
    let ServerMessage::PresenceDiff { updated, .. } = update else {
        unreachable!()
    };
    assert_eq!(updated[0].cursor, Some(Cursor { x: 10.0, y: 20.0 }));
    assert_eq!(
        updated[0].selection,
        vec!["n1".to_string(), "n2".to_string()]
    );
    assert_eq!(updated[0].color, "#123456");
    assert_eq!(updated[0].user_id, "bob");

    // Step 3: Bob closes cleanly; Alice sees him leave.
    bob.ws.close(None).await.unwrap();
    let left = alice
        .until(WAIT, |m| !left_ids(m).is_empty())
        .await
        .expect("alice sees bob leave");
    assert_eq!(left_ids(&left), vec![bob.session_id.clone()]);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_leave_within_the_idle_bound() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_fast_heartbeat(dir.path()).await;
    let url = hub.ws_url();
    let mut alice = RawClient::connect(&url, &token("alice", &[("p", Role::Editor)])).await;
    alice.subscribe("p").await;

    // A TCP drop without a close frame: the socket just disappears.
    let mut dropper = RawClient::connect(&url, &token("dropper", &[("p", Role::Editor)])).await;
    dropper.subscribe("p").await;
    let dropper_id = dropper.session_id.clone();
    // (A join and leave within one flush interval are, rightly, never announced.)
    alice
        .until(WAIT, |m| joined_ids(m).contains(&dropper_id))
        .await
        .expect("dropper joins");
    drop(dropper);
    let started = Instant::now();
    alice
        .until(WAIT, |m| left_ids(m).contains(&dropper_id))
        .await
        .expect("dropped client leaves");
    let drop_leave = started.elapsed();

    // A client that stops reading (and so never answers pings) but keeps its socket.
    let mut frozen = RawClient::connect(&url, &token("frozen", &[("p", Role::Editor)])).await;
    frozen.subscribe("p").await;
    let frozen_id = frozen.session_id.clone();
    let started = Instant::now();
    alice
        .until(WAIT, |m| joined_ids(m).contains(&frozen_id))
        .await
        .expect("frozen joins");
    alice
        .until(WAIT, |m| left_ids(m).contains(&frozen_id))
        .await
        .expect("silent client leaves");
    let frozen_leave = started.elapsed();
    // Bound: idle timeout (0.7 s) plus a flush interval; generous for a noisy machine.
    assert!(
        frozen_leave < Duration::from_secs(4),
        "took {frozen_leave:?}"
    );
    eprintln!("leave after TCP drop: {drop_leave:?}; after silence: {frozen_leave:?}");
    drop(frozen);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_storm_is_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_fast_heartbeat(dir.path()).await;
    let url = hub.ws_url();
    let mut alice = RawClient::connect(&url, &token("alice", &[("p", Role::Editor)])).await;
    alice.subscribe("p").await;
    let mut storm = RawClient::connect(&url, &token("storm", &[("p", Role::Editor)])).await;
    storm.subscribe("p").await;
    alice
        .until(
            WAIT,
            |m| matches!(m, ServerMessage::PresenceDiff { joined, .. } if !joined.is_empty()),
        )
        .await
        .unwrap();

    // 1,000 cursor updates within about one second.
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            storm
                .send(&ClientMessage::Presence {
                    flow_id: "p".into(),
                    cursor: Some(Cursor {
                        x: i as f64,
                        y: 0.0,
                    }),
                    selection: None,
                    color: None,
                })
                .await;
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        storm
    });
    let mut diffs = 0;
    let mut last_x = -1.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_x < 999.0 && Instant::now() < deadline {
        if let Some(ServerMessage::PresenceDiff { updated, .. }) =
            alice.next(Duration::from_secs(2)).await
        {
            if let Some(c) = updated.first().and_then(|e| e.cursor) {
                diffs += 1;
                last_x = c.x;
            }
        }
    }
    let _storm = sender.await.unwrap();
    assert_eq!(last_x, 999.0, "the last cursor position arrives");
    eprintln!("1000 cursor updates arrived as {diffs} presence diffs");
    assert!(diffs <= 60, "{diffs} diffs for 1000 updates: not coalesced");
    hub.shutdown().await;
}
