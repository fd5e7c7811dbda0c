//! `flowhub-cli` against the in-process fake hub.

mod support;

use std::process::Stdio;
use std::time::Duration;

use flowhub_client::{NewNode, Position};
use serde_json::Value;
use support::FakeHub;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const T: Duration = Duration::from_secs(10);

async fn hub() -> FakeHub {
    let hub = FakeHub::start().await;
    hub.create_flow("demo", |doc| {
        doc.add_node(NewNode::new("trigger", "Start", Position::new(0.0, 0.0)).with_id("start"))
            .unwrap();
    });
    hub
}

fn cli(hub: &FakeHub, token: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub-cli"));
    cmd.arg("--url").arg(&hub.url).env("FLOWHUB_TOKEN", token);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> (i32, Value, String) {
    let out = tokio::time::timeout(T, cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn edit_ops_print_ok_and_reach_the_hub() {
    let hub = hub().await;
    let mut cmd = cli(&hub, "good");
    cmd.args([
        "edit", "demo", "add-node", "--kind", "http", "--label", "Fetch", "--x", "-5", "--y",
        "2.5", "--id", "fetch",
    ]);
    let (code, json, stderr) = run(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["ok"], true);
    assert_eq!(json["id"], "fetch");
    assert_eq!(json["changes"].as_array().unwrap().len(), 1);
    let node = &hub.snapshot("demo").nodes["fetch"];
    assert_eq!((node.position.x, node.position.y), (-5.0, 2.5));

    let ops: Vec<Vec<&str>> = vec![
        vec!["move-node", "fetch", "--x", "1", "--y", "-1"],
        vec!["relabel", "fetch", "Fetch it"],
        vec!["configure", "fetch", "url", r#"{"href":"https://x"}"#],
        vec!["connect", "start", "fetch", "--id", "e1"],
        vec!["disconnect", "e1"],
        vec!["set-name", "CLI flow"],
        vec!["delete-node", "fetch"],
    ];
    for op in ops {
        let mut cmd = cli(&hub, "good");
        cmd.args(["edit", "demo"]).args(&op);
        let (code, json, stderr) = run(cmd).await;
        assert_eq!(code, 0, "{op:?}: {stderr}");
        assert_eq!(json["ok"], true, "{op:?}");
    }
    let snap = hub.snapshot("demo");
    assert_eq!(snap.name, "CLI flow");
    assert!(!snap.nodes.contains_key("fetch"));
    assert!(snap.edges.is_empty());
}

#[tokio::test]
async fn refused_and_invalid_edits_exit_1() {
    let hub = hub().await;
    let mut cmd = cli(&hub, "viewer-x");
    cmd.args(["edit", "demo", "relabel", "start", "nope"]);
    let (code, json, _) = run(cmd).await;
    assert_eq!(code, 1);
    assert_eq!(json["ok"], false);
    assert_eq!(json["error"]["code"], "forbidden");
    assert_eq!(hub.snapshot("demo").nodes["start"].label, "Start");

    let mut cmd = cli(&hub, "good");
    cmd.args(["edit", "demo", "relabel", "ghost", "x"]);
    let (code, json, _) = run(cmd).await;
    assert_eq!(code, 1);
    assert_eq!(json["error"]["code"], "not_found");

    let mut cmd = cli(&hub, "bad");
    cmd.args(["edit", "demo", "set-name", "x"]);
    let (code, _, stderr) = run(cmd).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("unauthorized"), "{stderr}");
}

#[tokio::test]
async fn dump_prints_the_flow() {
    let hub = hub().await;
    let mut cmd = cli(&hub, "good");
    cmd.args(["dump", "demo"]);
    let (code, json, stderr) = run(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["id"], "demo");
    assert_eq!(json["nodes"]["start"]["label"], "Start");

    let mut cmd = cli(&hub, "good");
    cmd.args(["dump", "missing"]);
    let (code, _, stderr) = run(cmd).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("not_found"), "{stderr}");
}

#[tokio::test]
async fn watch_prints_every_change() {
    let hub = hub().await;
    let mut cmd = cli(&hub, "good");
    cmd.args(["watch", "demo"]).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(
        &tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["id"], "demo");
    assert_eq!(first["nodes"]["start"]["label"], "Start");

    hub.edit("demo", |doc| {
        doc.relabel_node("start", "Go").unwrap();
    });
    let next: Value = serde_json::from_str(
        &tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(next["nodes"]["start"]["label"], "Go");
    child.kill().await.unwrap();
}
