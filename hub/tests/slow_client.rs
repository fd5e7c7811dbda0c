//! Ten fast clients and one that never reads its socket: the fast ones get every run
//! event and every edit, the slow one is capped (its frames are dropped or it is
//! closed), and the hub's memory stays bounded.

mod support;

use std::time::{Duration, Instant};

use flowhub::auth::{now_secs, Claims};
use flowhub::Hub;
use flowhub_client::{Client, NewNode, Position};
use flowhub_protocol::{ClientMessage, Role, ServerMessage};
use support::*;

const EVENTS: u64 = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_slows_nobody_down() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), None);
    let hub = Hub::start(cfg).await.unwrap();
    let base = format!("http://{}", hub.addr());
    let tok = |u: &str| token(u, &[("busy", Role::Editor)]);
    let svc = keys().sign(&Claims {
        sub: "engine".into(),
        name: None,
        exp: now_secs() + 600,
        flows: Default::default(),
        svc: true,
    });
    let http = reqwest::Client::new();
    let post = |events: serde_json::Value| {
        http.post(format!("{base}/v1/runs/busy-run/events"))
            .bearer_auth(&svc)
            .json(&serde_json::json!({ "events": events }))
            .send()
    };
    assert_eq!(post(serde_json::json!([{"event_id": "start", "type": "run.started", "flow_id": "busy", "ts": 1}])).await.unwrap().status(), 200);

    // Step 1: ten fast clients and one frozen one, all on the flow and the run.
    let mut fast = Vec::new();
    for i in 0..10 {
        let c = Client::connect(&hub.ws_url(), &tok(&format!("fast{i}")))
            .await
            .unwrap();
        let flow = c.subscribe("busy").await.unwrap();
        let mut msgs = c.messages();
        c.request(ClientMessage::SubscribeRun {
            id: None,
            run_id: "busy-run".into(),
            since_seq: Some(0),
        })
        .await
        .unwrap();
        let resumer = c.clone();
        let collector = tokio::spawn(async move {
            let mut seqs: Vec<u64> = Vec::new();
            let mut resumes = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while seqs.last() != Some(&(EVENTS + 1)) && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(30), msgs.recv()).await {
                    Ok(Ok(ServerMessage::RunEvent { event, .. })) => seqs.push(event.seq),
                    // Fell behind a burst: resume from the last event seen, as any
                    // client does; the hub then replays the rest with no gap.
                    Ok(Ok(ServerMessage::ResumeFrom { seq, .. })) => {
                        resumes += 1;
                        let since = seqs.last().copied().unwrap_or(seq);
                        resumer
                            .request(ClientMessage::SubscribeRun {
                                id: None,
                                run_id: "busy-run".into(),
                                since_seq: Some(since),
                            })
                            .await
                            .unwrap();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("fast client lagged: {e}"),
                    Err(_) => break,
                }
            }
            (seqs, resumes)
        });
        fast.push((c, flow, collector));
    }
    let mut frozen = RawClient::connect_small_buffer(&hub.ws_url(), &tok("frozen")).await;
    frozen.subscribe("busy").await;
    frozen
        .send(&ClientMessage::SubscribeRun {
            id: None,
            run_id: "busy-run".into(),
            since_seq: Some(0),
        })
        .await;
    let rss_before = metric(&base, "flowhub_process_resident_bytes").await;
    // The hub's kernel send queue toward the frozen client, sampled all along.
    let frozen_port = match frozen.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!("plain TCP"),
    };
    let hub_port = hub.addr().port();
    let sampler = tokio::spawn(async move {
        let mut max = 0u64;
        for _ in 0..400 {
            max = max.max(kernel_send_queue(hub_port, frozen_port));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        max
    });

    // Step 2: the engine posts 4,000 events of 2 KiB; an editor adds 100 nodes.
    let editor = fast[0].1.clone();
    let edits = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..100 {
            let ((id, _), t) = editor
                .edit(|d| {
                    d.add_node(NewNode::new(
                        "action",
                        format!("n{i}"),
                        Position {
                            x: i as f64,
                            y: 0.0,
                        },
                    ))
                })
                .await
                .unwrap();
            editor
                .wait_acked(&t, Duration::from_secs(30))
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    });
    let filler = "x".repeat(2048);
    for batch in 0..(EVENTS / 100) {
        let events: Vec<serde_json::Value> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                serde_json::json!({"event_id": format!("log-{n}"), "type": "log", "flow_id": "busy", "ts": n + 2,
                                   "level": "info", "message": format!("{n} {filler}")})
            })
            .collect();
        assert_eq!(
            post(serde_json::Value::Array(events))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let ids = edits.await.unwrap();

    // Step 3: every fast client got every event once, in order, and every edit.
    let mut total_resumes = 0;
    for (_, flow, collector) in fast {
        let (seqs, resumes) = collector.await.unwrap();
        total_resumes += resumes;
        assert_eq!(
            seqs,
            (1..=EVENTS + 1).collect::<Vec<_>>(),
            "a fast client missed or reordered events"
        );
        flow.wait_until(
            |s| ids.iter().all(|id| s.nodes.contains_key(id)),
            Duration::from_secs(30),
        )
        .await
        .expect("every edit");
    }
    // Step 4: the frozen client was capped, and memory stayed bounded.
    let drops = metric(&base, "flowhub_queue_drops_total").await;
    let closed = metric(&base, "flowhub_sessions_closed_slow_total").await;
    let rss_after = metric(&base, "flowhub_process_resident_bytes").await;
    let growth = (rss_after - rss_before) / 1e6;
    eprintln!("fast clients resumed {total_resumes} times");
    eprintln!("frozen client: {drops} frames dropped, {closed} sessions closed as too slow; RSS grew {growth:.1} MB");
    // 8 MB of events were meant for the frozen client; the hub held back instead of
    // buffering them (its queue is bounded and replay waits for room).
    assert!(growth < 64.0, "RSS grew by {growth:.1} MB");

    // Step 5: the frozen client was detected by progress: its socket accepted nothing
    // for the stall bound while the hub had data for it, so it was closed as too slow
    // (before, its writer stayed blocked forever with megabytes in the kernel).
    let queued = sampler.await.unwrap();
    eprintln!("frozen client: at most {queued} bytes in the hub's kernel send queue");
    // 64 KiB SO_SNDBUF (Linux doubles it): a stalled socket holds well under 256 KiB
    // instead of the megabytes autotuning allows.
    assert!(queued > 0, "the sampler never saw the frozen connection");
    assert!(
        queued <= 256 * 1024,
        "{queued} bytes in one socket's send queue"
    );
    let stalled_since = Instant::now();
    let mut closed = closed;
    while closed < 1.0 && stalled_since.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        closed = metric(&base, "flowhub_sessions_closed_slow_total").await;
    }
    eprintln!(
        "frozen client closed as too slow {:?} after the load ended",
        stalled_since.elapsed()
    );
    assert!(
        closed >= 1.0,
        "the frozen client was never closed as too slow"
    );
    // What it still reads is a gapless prefix, and a reconnect resuming from its last
    // event gets the rest: it was held back and closed, never handed a hole.
    let mut seqs = Vec::new();
    while let Some(msg) = frozen.next(Duration::from_secs(5)).await {
        if let ServerMessage::RunEvent { event, .. } = msg {
            seqs.push(event.seq);
        }
    }
    let again = Client::connect(&hub.ws_url(), &tok("frozen"))
        .await
        .unwrap();
    let mut msgs = again.messages();
    let since = seqs.last().copied().unwrap_or(0);
    again
        .request(ClientMessage::SubscribeRun {
            id: None,
            run_id: "busy-run".into(),
            since_seq: Some(since),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs.last() != Some(&(EVENTS + 1)) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), msgs.recv()).await {
            Ok(Ok(ServerMessage::RunEvent { event, .. })) => seqs.push(event.seq),
            Ok(Ok(ServerMessage::ResumeFrom { .. })) => {
                let since = seqs.last().copied().unwrap_or(0);
                again
                    .request(ClientMessage::SubscribeRun {
                        id: None,
                        run_id: "busy-run".into(),
                        since_seq: Some(since),
                    })
                    .await
                    .unwrap();
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    assert_eq!(
        seqs,
        (1..=EVENTS + 1).collect::<Vec<_>>(),
        "the slow client got a hole or a duplicate"
    );
    drop(frozen);
    hub.shutdown().await;
}

/// Bytes waiting in the kernel send queue of the connection from `local` to `remote`
/// (`tx_queue` in /proc/net/tcp); 0 when there is no such socket.
fn kernel_send_queue(local: u16, remote: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (port(cols.get(1)?)? == local && port(cols.get(2)?)? == remote).then(|| {
                let tx = cols.get(4)?.split(':').next()?;
                u64::from_str_radix(tx, 16).ok()
            })?
        })
        .max()
        .unwrap_or(0)
}

async fn metric(base: &str, name: &str) -> f64 {
    let body = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
