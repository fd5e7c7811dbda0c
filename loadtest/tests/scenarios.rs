//! Small, fast runs of every scenario against in-process hubs, asserting the
//! harness's own correctness: counts add up, and the convergence check passes on a
//! healthy hub and fails on one that drops a client's edits.

mod support;

use std::time::Duration;

use flowhub_loadtest::cli::{Command, EditArgs, IdleArgs};
use flowhub_loadtest::proxy::{ChaosConfig, ChaosProxy};
use flowhub_loadtest::run_report;
use flowhub_loadtest::scenario::{edit, presence, watch};
use support::*;

fn value(report: &flowhub_loadtest::Report, section: &str, name: &str) -> f64 {
    report
        .section(section)
        .unwrap_or_else(|| panic!("no section {section}"))
        .get(name)
        .unwrap_or_else(|| panic!("no value `{name}` in {section}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_counts_add_up_and_converges_on_a_healthy_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let report = run_report(&Command::Edit {
        common: common(vec![hub.ws_url()]),
        edit: edit_args(6, 2, 10.0),
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    let sent = value(&report, "edit", "edits sent");
    // 6 editors × 10/s × 2 s, give or take a tick.
    assert!((100.0..=125.0).contains(&sent), "sent {sent}");
    assert_eq!(value(&report, "edit", "edits acked"), sent);
    // Three editors per flow: every edit is applied by two peers.
    assert_eq!(value(&report, "edit", "applies expected"), 2.0 * sent);
    assert_eq!(value(&report, "edit", "applies observed"), 2.0 * sent);
    let s = report.section("edit").unwrap();
    assert_eq!(s.latency(edit::SAME_NODE).unwrap().count as f64, 2.0 * sent);
    assert!(s.latency(edit::CROSS_NODE).is_none(), "one node only");
    assert_eq!(s.latency(edit::ACK).unwrap().count as f64, sent);
    assert!(report.check("convergence").unwrap().passed);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_on_seeded_flows_edits_among_the_seeded_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let report = run_report(&Command::Edit {
        common: common(vec![hub.ws_url()]),
        edit: EditArgs {
            flow_nodes: 40,
            ..edit_args(4, 2, 10.0)
        },
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    assert_eq!(value(&report, "edit", "nodes seeded per flow"), 40.0);
    // 40 seeded nodes plus the node of each of the flow's two editors.
    assert_eq!(
        value(&report, "edit", "nodes in the smallest flow after the load"),
        42.0
    );
    let sent = value(&report, "edit", "edits sent");
    assert!(sent > 0.0);
    assert_eq!(value(&report, "edit", "applies observed"), sent);
    assert!(report.check("convergence").unwrap().passed);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_fails_when_a_proxy_drops_one_clients_edits() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;

    // Through a proxy that drops nothing, everything passes: the proxy is transparent.
    let clean = ChaosProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        &hub.ws_url(),
        ChaosConfig {
            drop_every: 0,
            victims: 1,
            keep_first: 1,
        },
    )
    .await
    .unwrap();
    let report = run_report(&Command::Edit {
        common: common(vec![clean.url()]),
        edit: edit_args(3, 1, 10.0),
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    assert!(
        clean
            .stats()
            .http_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    clean.stop().await;

    // Dropping every edit of the first session after its setup: its replica has
    // edits the hub never stored.
    let chaos = ChaosProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        &hub.ws_url(),
        ChaosConfig {
            drop_every: 1,
            victims: 1,
            keep_first: 1,
        },
    )
    .await
    .unwrap();
    let mut params = common(vec![chaos.url()]);
    params.settle_timeout = Duration::from_secs(3);
    let report = run_report(&Command::Edit {
        common: params,
        edit: edit_args(3, 1, 10.0),
    })
    .await
    .unwrap();
    let dropped = chaos
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the proxy dropped nothing");
    assert!(!report.passed, "{}", report.render_text());
    let convergence = report.check("convergence").unwrap();
    assert!(!convergence.passed);
    assert!(
        convergence.detail.contains("last wrote"),
        "the FAIL names the lost edits: {}",
        convergence.detail
    );
    assert!(!report.check("edit: counts add up").unwrap().passed);
    assert_eq!(value(&report, "edit", "convergence"), 0.0);
    chaos.stop().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_on_two_nodes_splits_same_and_cross_node_latency() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path()).await;
    let report = run_report(&Command::Edit {
        common: common(vec![a.ws_url(), b.ws_url()]),
        edit: edit_args(4, 1, 10.0),
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    assert_eq!(value(&report, "edit", "hub nodes"), 2.0);
    let s = report.section("edit").unwrap();
    let same = s.latency(edit::SAME_NODE).unwrap().count;
    let cross = s.latency(edit::CROSS_NODE).unwrap().count;
    let sent = value(&report, "edit", "edits sent");
    // Two editors per node: each edit has one same-node and two cross-node peers.
    assert_eq!(same as f64, sent);
    assert_eq!(cross as f64, 2.0 * sent);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_add_up_and_final_cursors_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let report = run_report(&Command::Presence {
        common: common(vec![hub.ws_url()]),
        presence: presence_args(8, 2, 40.0),
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    let sent = value(&report, "presence", "cursor updates sent");
    assert!((550.0..=700.0).contains(&sent), "sent {sent}");
    // Four sessions per flow: without coalescing each update reaches three peers.
    let uncoalesced = value(&report, "presence", "updates a peer would get uncoalesced");
    assert_eq!(uncoalesced, 3.0 * sent);
    let entries = value(&report, "presence", "cursor entries received");
    let superseded = value(&report, "presence", "updates superseded before delivery");
    // Every update a peer should get was either delivered or replaced by a newer one.
    assert_eq!(entries + superseded, uncoalesced);
    let delay = report
        .section("presence")
        .unwrap()
        .latency(presence::DELAY)
        .unwrap();
    assert_eq!(delay.count as f64, entries);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_held_and_counted_by_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let mut params = common(vec![hub.ws_url()]);
    params.duration = Duration::from_secs(1);
    params.source_addrs = 2;
    let report = run_report(&Command::Idle {
        common: params,
        idle: IdleArgs {
            sessions: 40,
            subscribe_flows: 2,
            connect_concurrency: 16,
        },
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    assert_eq!(value(&report, "idle", "sessions connected"), 40.0);
    assert_eq!(value(&report, "idle", "hub sessions_open increase"), 40.0);
    assert_eq!(value(&report, "idle", "loopback source addresses"), 2.0);
    assert!(value(&report, "idle", "hub RSS per session").is_finite());
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_event_to_every_watcher_and_compares_with_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let report = run_report(&Command::Watch {
        common: common(vec![hub.ws_url()]),
        watch: watch_args(10, 50.0, 2, true),
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    for section in ["watch", "baseline"] {
        let posted = value(&report, section, "log events posted");
        assert!(
            (90.0..=110.0).contains(&posted),
            "{section}: posted {posted}"
        );
        assert_eq!(
            value(&report, section, "deliveries"),
            value(&report, section, "deliveries expected"),
            "{section}"
        );
        assert_eq!(
            value(&report, section, "deliveries expected"),
            10.0 * posted
        );
        // run.started + the log events + run.finished.
        assert_eq!(value(&report, section, "run last seq"), posted + 2.0);
    }
    let delivered = report
        .section("watch")
        .unwrap()
        .latency(watch::HUB_DELIVERY)
        .unwrap()
        .count as f64;
    assert_eq!(delivered, value(&report, "watch", "deliveries"));
    assert!(value(&report, "watch", "throughput vs baseline") > 0.0);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_runs_edit_presence_and_watch_together() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let report = run_report(&Command::Mixed {
        common: common(vec![hub.ws_url()]),
        edit: edit_args(4, 2, 10.0),
        presence: presence_args(4, 1, 20.0),
        watch: watch_args(4, 20.0, 1, false),
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.render_text());
    let names: Vec<&str> = report.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["edit", "presence", "watch"]);
    assert_eq!(
        value(&report, "edit", "applies observed"),
        value(&report, "edit", "applies expected")
    );
    hub.shutdown().await;
}
