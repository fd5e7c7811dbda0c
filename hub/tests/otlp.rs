//! With the `otlp` feature, a hub process given OTEL_EXPORTER_OTLP_ENDPOINT exports the
//! edit path's spans over OTLP/HTTP: after one edit, a collector stand-in (a bare HTTP
//! listener in this test) receives `POST /v1/traces` carrying `edit.frame` and
//! `store.append`. Built only with `--features otlp` (`scripts/otlp-check.sh`, CI).
#![cfg(feature = "otlp")]

mod support;

use std::time::Duration;

use flowhub_client::{Client, NewNode, Position};
use flowhub_protocol::Role;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Accepts HTTP/1.1 requests and forwards `(request line, body)` of each.
async fn collector(
    listener: tokio::net::TcpListener,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                // Headers, then Content-Length bytes of body.
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let _ = tx.send((line, body));
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_path_spans_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(collector(listener, tx));

    let dir = tempfile::tempdir().unwrap();
    let db = fresh_postgres_database().await;
    let hub = HubProcess::start_env(
        dir.path(),
        free_port(),
        &[
            ("FLOWHUB_DATABASE_URL", db.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let flow_id = "otlp-flow";
    let client = Client::connect(&hub.ws_url(), &token("ed", &[(flow_id, Role::Editor)]))
        .await
        .unwrap();
    let flow = client.subscribe(flow_id).await.unwrap();
    let (_, ticket) = flow
        .edit(|d| d.add_node(NewNode::new("action", "n", Position { x: 0.0, y: 0.0 })))
        .await
        .unwrap();
    flow.wait_acked(&ticket, Duration::from_secs(20))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let found = |seen: &[u8], what: &str| seen.windows(what.len()).any(|w| w == what.as_bytes());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(found(&seen, "edit.frame") && found(&seen, "store.append")) {
        let (line, body) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("spans exported within 20 s")
            .expect("collector runs");
        assert!(
            line.starts_with("POST /v1/traces"),
            "unexpected request {line}"
        );
        seen.extend_from_slice(&body);
    }
    // The resource names the service.
    assert!(found(&seen, "flowhub"));
    hub.terminate(Duration::from_secs(10)).await;
}
