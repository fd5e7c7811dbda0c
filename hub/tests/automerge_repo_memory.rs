//! Idle `/v1/automerge-repo` connections are light: the endpoint sizes tungstenite's
//! buffers like `/v1/ws` does. Measured on a separate hub process, from its own RSS.

mod support;

use std::time::Duration;

use flowhub_protocol::Role;

use support::*;

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
