//! Regression: closed `/v1/automerge-repo` connections leave nothing running.
//!
//! The writer of a closed automerge-repo connection used to keep polling a channel
//! that had already answered `None`, in a `biased` select, forever: two stock `Repo`
//! clients connecting and leaving pinned both cores of a node. This test is its own
//! binary so that no other test's work shows up in the process's CPU time.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ciborium::Value;
use flowhub::automerge_repo::flow_document_id;
use flowhub_protocol::Role;
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn cbor(fields: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/v1/automerge-repo` as a stock Repo does: `join`, then a sync
/// `request` for the flow from an empty document (which joins the flow).
async fn open_repo_peer(base: &str, token: &str, peer: &str, flow_id: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{base}/v1/automerge-repo?token={token}"))
            .await
            .expect("connect");
    ws.send(Message::Binary(
        cbor(vec![
            ("type", Value::Text("join".into())),
            ("senderId", Value::Text(peer.into())),
            ("peerMetadata", Value::Map(vec![])),
            (
                "supportedProtocolVersions",
                Value::Array(vec![Value::Text("1".into())]),
            ),
        ])
        .into(),
    ))
    .await
    .unwrap();
    let mut doc = flowhub_crdt::FlowDoc::new();
    let mut sync = flowhub_crdt::SyncState::new();
    let data = doc.generate_sync_message(&mut sync).unwrap();
    ws.send(Message::Binary(
        cbor(vec![
            ("type", Value::Text("request".into())),
            ("senderId", Value::Text(peer.into())),
            ("targetId", Value::Text("hub".into())),
            ("documentId", Value::Text(flow_document_id(flow_id))),
            ("data", Value::Bytes(data)),
        ])
        .into(),
    ))
    .await
    .unwrap();
    ws
}

/// CPU time (user + system) this process has used, from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after `)`.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY-free: clock ticks per second is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn closed_automerge_repo_connections_leave_no_task_and_burn_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let url = hub.ws_url();
    let token = token("rita", &[("leak", Role::Editor)]);

    for i in 0..20 {
        let mut ws = open_repo_peer(&url, &token, &format!("peer-{i}"), "leak").await;
        // Read what the hub answers (peer, sync) until it falls silent: the leak
        // needed a writer with nothing left to send when the reader ended.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        {}
        if i % 2 == 0 {
            // Half leave politely, half just vanish (the reader sees the stream end).
            let _ = ws.close(None).await;
        }
        drop(ws);
    }

    let metrics = hub.state().metrics.clone();
    assert!(
        eventually(Duration::from_secs(10), || metrics
            .sessions_open
            .load(Ordering::Relaxed)
            == 0)
        .await,
        "every automerge-repo session ends, {} still open",
        metrics.sessions_open.load(Ordering::Relaxed)
    );

    // With the leak, each closed connection's writer spun a core: 2 s of wall time
    // cost ~4 s of CPU on two workers. An idle hub costs a few milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = process_cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burned = process_cpu() - before;
    println!("CPU over 2 s after 20 closed automerge-repo connections: {burned:?}");
    assert!(
        burned < Duration::from_millis(500),
        "an idle hub burned {burned:?} of CPU in 2 s: a closed connection is still running"
    );
    hub.shutdown().await;
}

/// Idle `/v1/automerge-repo` connections cost what `/v1/ws` ones do: the endpoint
/// sizes tungstenite's buffers like `/v1/ws` (it kept the 128 KiB defaults: 155–163 KB
/// per idle connection). Measured on a separate hub process from its own RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_automerge_repo_connections_are_light() {
    const CONNECTIONS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), free_port(), None).await;
    let token = token("rita", &[("light", Role::Viewer)]);
    // Open the flow once first, so the measurement is of connections, not the flow.
    let base = hub.ws_url();
    let mut sockets = vec![open_repo_peer(&base, &token, "peer-0", "light").await];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hub.metric("flowhub_process_resident_bytes").await;
    for i in 1..=CONNECTIONS {
        sockets.push(open_repo_peer(&base, &token, &format!("peer-{i}"), "light").await);
    }
    // Let every connection settle (joined the flow, first sync answered).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hub.metric("flowhub_sessions_open").await as usize,
        CONNECTIONS + 1
    );
    let after = hub.metric("flowhub_process_resident_bytes").await;
    let per_connection = (after - before) / CONNECTIONS as f64;
    println!("idle automerge-repo connection: {per_connection:.0} bytes of hub RSS each");
    // Generous: the unsized buffers cost 155 KB each; sized ones a small fraction.
    assert!(
        per_connection < 80_000.0,
        "{per_connection:.0} bytes per idle automerge-repo connection"
    );
    drop(sockets);
}
