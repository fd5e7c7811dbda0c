//! The `flowhub-loadtest` binary end to end: result files, and the exit code
//! following the verdict (0 PASS, 1 FAIL, 2 error).

mod support;

use std::process::Output;

use flowhub_loadtest::proxy::{ChaosConfig, ChaosProxy};
use flowhub_loadtest::Report;
use support::*;

async fn loadtest(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhub-loadtest"))
        .args(args)
        .env_remove("FLOWHUB_JWT_SECRET")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run flowhub-loadtest")
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_run_writes_json_and_html_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let json = dir.path().join("results/edit.json");
    let html = dir.path().join("results/edit.html");
    let out = loadtest(&[
        "edit",
        "--targets",
        &hub.ws_url(),
        "--token-secret",
        SECRET,
        "--editors",
        "4",
        "--flows",
        "2",
        "--duration",
        "2s",
        "--ramp-up",
        "300ms",
        "--out",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASS  convergence"), "{stdout}");
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.name, "edit");
    assert_eq!(report.scenario, "edit");
    assert!(report.passed);
    assert!(report.machine.nproc >= 1);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"), "plots are inline SVG");
    assert!(page.contains("PASS"));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_convergence_check_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let proxy = ChaosProxy::start(
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
    let out = loadtest(&[
        "edit",
        "--targets",
        &proxy.url(),
        "--token-secret",
        SECRET,
        "--editors",
        "2",
        "--flows",
        "1",
        "--duration",
        "1s",
        "--ramp-up",
        "200ms",
        "--settle-timeout",
        "2s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  convergence"));
    proxy.stop().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_baseline_runs_the_broadcast_server_in_a_child_process() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let json = dir.path().join("watch.json");
    let out = loadtest(&[
        "watch",
        "--targets",
        &hub.ws_url(),
        "--token-secret",
        SECRET,
        "--watchers",
        "5",
        "--event-rate",
        "40",
        "--duration",
        "1s",
        "--ramp-up",
        "200ms",
        "--baseline",
        "--out",
        json.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let base = report.section("baseline").expect("baseline section");
    let posted = base.get("log events posted").unwrap();
    assert!(posted > 0.0);
    assert_eq!(base.get("deliveries"), Some(5.0 * posted));
    assert!(report
        .section("watch")
        .unwrap()
        .get("throughput vs baseline")
        .is_some());
    hub.shutdown().await;
}

#[tokio::test]
async fn missing_secret_is_an_error_exit_two() {
    let out = loadtest(&["edit", "--targets", "ws://127.0.0.1:9", "--duration", "1s"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-secret"));
}
