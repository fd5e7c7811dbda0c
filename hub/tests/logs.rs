//! The node's logs on stdout: JSON lines with FLOWHUB_LOG_FORMAT=json, plain text
//! otherwise, and never terminal colour codes when stdout is not a terminal (a pipe
//! here, a file or a log shipper in production).

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `flowhub serve` with `env` and returns its first stdout lines (up to the
/// "listening" one).
async fn first_lines(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.arg("serve")
        .env("FLOWHUB_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("FLOWHUB_DATA_DIR", dir.path())
        .env("FLOWHUB_JWT_SECRET", SECRET)
        .env_remove("FLOWHUB_DATABASE_URL")
        .env_remove("FLOWHUB_REDIS_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn flowhub");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("listening");
            out.push(line);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the node logs that it listens");
    let _ = child.kill().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_and_no_colour_codes_in_a_pipe() {
    let json = first_lines(&[("FLOWHUB_LOG_FORMAT", "json")]).await;
    assert!(!json.is_empty());
    for line in &json {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'), "colour codes in {line}");
    }
    let text = first_lines(&[]).await;
    assert!(text.iter().any(|l| l.contains("INFO")), "{text:?}");
    assert!(text.iter().all(|l| !l.contains('\u{1b}')), "{text:?}");
}
