//! Regression: closed `/v1/automerge-repo` connections leave nothing running.
//!
//! The writer of a closed automerge-repo connection used to keep polling a channel
//! that had already answered `None`, in a `biased` select, forever: two stock `Repo`
//! clients connecting and leaving pinned both cores of a node. This test is alone in
//! its binary so that no other test's work shows up in the process's CPU time (the
//! idle-memory test of the same endpoint is `automerge_repo_memory.rs`). The hub runs
//! in-process on a current-thread runtime: that schedules the writer after the reader
//! has dropped its sender, the interleaving that spun (a multi-threaded hub hits it
//! only sometimes).

mod support;

use std::time::Duration;

use flowhub_protocol::Role;
use futures_util::StreamExt;
use support::*;

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
    // From here to the end: the hub's work for 20 short connections, then 2 s idle.
    let before = process_cpu();

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
        eventually(Duration::from_secs(10), || metrics.sessions_open.get() == 0).await,
        "every automerge-repo session ends, {} still open",
        metrics.sessions_open.get()
    );

    // With the leak, each closed connection's writer spun a core until the session
    // gave up waiting for it (2 s, then aborted) or forever. Serving 20 short
    // connections and idling 2 s costs well under a second of CPU.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burned = process_cpu() - before;
    println!("CPU for 20 automerge-repo connections, their close and 2 s idle: {burned:?}");
    assert!(
        burned < Duration::from_millis(1500),
        "the hub burned {burned:?} of CPU: a closed connection kept running"
    );
    hub.shutdown().await;
}
