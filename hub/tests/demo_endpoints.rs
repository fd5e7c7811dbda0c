//! The demo's development endpoints (`/v1/dev/token`, `/v1/dev/simulate-run`) mint
//! editor tokens for anyone: they exist only when the operator turns the demo on, only
//! on loopback unless told twice, and only for requests naming the listen address.

mod support;

use std::process::Stdio;
use std::time::Duration;

use flowhub::{Hub, HubConfig};
use serde_json::{json, Value};
use support::*;

async fn post(base: &str, path: &str, host: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(host) = host {
        req = req.header(reqwest::header::HOST, host);
    }
    req.send().await.expect("request")
}

async fn start(demo: bool, database_url: Option<String>) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HubConfig {
        demo,
        ..config(dir.path(), database_url)
    };
    (Hub::start(cfg).await.expect("hub starts"), dir)
}

#[tokio::test]
async fn without_the_demo_flag_the_dev_endpoints_are_404_on_every_store() {
    let postgres = fresh_postgres_database().await;
    for url in [None, Some(postgres)] {
        let (hub, _dir) = start(false, url.clone()).await;
        let base = format!("http://{}", hub.addr());
        for path in ["/v1/dev/token", "/v1/dev/simulate-run"] {
            let resp = post(
                &base,
                path,
                None,
                json!({"name": "Mallory", "flow_id": "demo"}),
            )
            .await;
            assert_eq!(resp.status(), 404, "{path} with database {url:?}");
        }
        // The page itself is still served.
        let page = reqwest::get(format!("{base}/")).await.unwrap();
        assert_eq!(page.status(), 200);
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn with_the_demo_flag_on_loopback_tokens_work_and_identity_is_stable_per_browser() {
    let (hub, _dir) = start(true, None).await;
    let base = format!("http://{}", hub.addr());
    let resp = post(&base, "/v1/dev/token", None, json!({"name": "Alice"})).await;
    assert_eq!(resp.status(), 200);
    let cookie = resp
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .expect("a first visit gets the demo cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("flowhub_demo_id="), "{cookie}");
    let first: Value = resp.json().await.unwrap();
    let user_id = first["user_id"].as_str().unwrap().to_owned();
    assert!(hub
        .state()
        .keys
        .verify(first["token"].as_str().unwrap())
        .await
        .is_ok());

    // The same browser (cookie) under another name is the same user.
    let again: Value = reqwest::Client::new()
        .post(format!("{base}/v1/dev/token"))
        .header(reqwest::header::COOKIE, &cookie)
        .json(&json!({"name": "Alice B."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["user_id"], user_id.as_str());
    assert_eq!(again["name"], "Alice B.");
    // Another browser is another user.
    let other: Value = post(&base, "/v1/dev/token", None, json!({"name": "Alice"}))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other["user_id"], user_id.as_str());

    // simulate-run needs a token with a role on the flow, and works with one.
    let token = first["token"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/dev/simulate-run"))
        .bearer_auth(token)
        .json(&json!({"flow_id": "demo", "step_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_dns_rebinding() {
    let (hub, _dir) = start(true, None).await;
    let base = format!("http://{}", hub.addr());
    let port = hub.addr().port();
    for host in ["evil.example".to_string(), format!("evil.example:{port}")] {
        let resp = post(&base, "/v1/dev/token", Some(&host), json!({"name": "Eve"})).await;
        assert_eq!(resp.status(), 403, "Host: {host}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let resp = post(
        &base,
        "/v1/dev/token",
        Some(&format!("localhost:{port}")),
        json!({"name": "Alice"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    hub.shutdown().await;
}

#[tokio::test]
async fn the_demo_on_a_non_loopback_address_needs_a_second_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HubConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        demo: true,
        ..config(dir.path(), None)
    };
    let err = Hub::start(cfg.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("--demo-allow-remote"), "{err}");
    let hub = Hub::start(HubConfig {
        demo_allow_remote: true,
        ..cfg
    })
    .await
    .expect("starts when told twice");
    hub.shutdown().await;
}

/// The binary: an empty `FLOWHUB_DATABASE_URL` is the embedded default and still no
/// demo; `flowhub demo` on 0.0.0.0 refuses to start with a clear message.
#[tokio::test]
async fn the_binary_turns_the_demo_on_only_when_asked() {
    let bin = env!("CARGO_BIN_EXE_flowhub");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut serve = tokio::process::Command::new(bin)
        .arg("serve")
        .env("FLOWHUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLOWHUB_DATA_DIR", dir.path())
        .env("FLOWHUB_DATABASE_URL", "")
        .env_remove("FLOWHUB_DEMO")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            ready = r.status() == 200;
            if ready {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "flowhub serve became ready");
    let resp = post(&base, "/v1/dev/token", None, json!({"name": "Mallory"})).await;
    assert_eq!(resp.status(), 404);
    serve.kill().await.unwrap();

    let out = tokio::process::Command::new(bin)
        .args(["demo", "--listen", "0.0.0.0:0"])
        .env("FLOWHUB_DATA_DIR", dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--demo-allow-remote"), "{stderr}");
}
