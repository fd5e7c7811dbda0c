//! Flows without Automerge: `POST /v1/flows/{id}/edits`, `GET …/diff` and
//! `POST …/restore`, against a real hub with a live Automerge client watching.

mod support;

use std::time::Duration;

use flowhub_client::{Client, NewNode, Position};
use flowhub_protocol::Role;
use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_edits_apply_once_per_key_reach_live_clients_and_respect_roles() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", hub.addr()),
    };
    let editor = token("script", &[("api", Role::Editor)]);
    let viewer = token("phone", &[("api", Role::Viewer)]);
    let watcher = Client::connect(&hub.ws_url(), &token("ann", &[("api", Role::Viewer)]))
        .await
        .unwrap();
    let live = watcher.subscribe("api").await.unwrap();

    let body = json!({
        "idempotency_key": "batch-1",
        "edits": [
            {"op": "add_node", "id": "t", "kind": "trigger", "label": "Start", "position": {"x": 0, "y": 0}},
            {"op": "add_node", "id": "h", "kind": "http", "label": "Fetch", "position": {"x": 200, "y": 0}, "config": {"url": "https://example.test"}},
            {"op": "connect", "id": "e1", "source": {"node": "t", "port": "out"}, "target": {"node": "h", "port": "in"}},
            {"op": "set_name", "name": "From a script"}
        ]
    });
    let (status, first) = api.post("/v1/flows/api/edits", &editor, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["replayed"], false);
    let heads: Vec<String> = serde_json::from_value(first["heads"].clone()).unwrap();
    live.wait_for_heads(&heads, WAIT).await.unwrap();
    let seen = live.snapshot();
    assert_eq!(seen.name, "From a script");
    assert_eq!(seen.nodes["h"].config["url"], "https://example.test");
    assert_eq!(seen.edges["e1"].target.node, "h");

    // A retry with the same key applies nothing and answers with the same change.
    let (status, retry) = api.post("/v1/flows/api/edits", &editor, body).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["replayed"], true);
    assert_eq!(retry["change"], first["change"]);
    assert_eq!(retry["heads"], first["heads"]);

    // Same key in the header works the same; a new key applies again.
    let (status, moved) = api
        .post(
            "/v1/flows/api/edits",
            &editor,
            json!({"edits": [{"op": "move_node", "id": "h", "to": {"x": 300, "y": 40}}]}),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_ne!(moved["change"], first["change"]);

    // Refusals are typed JSON errors and store nothing.
    let (status, err) = api
        .post(
            "/v1/flows/api/edits",
            &viewer,
            json!({"edits": [{"op": "set_name", "name": "viewer"}]}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{err}"
    );
    let (status, err) = api
        .post(
            "/v1/flows/api/edits",
            &editor,
            json!({"edits": [{"op": "set_name", "name": "half"}, {"op": "move_node", "id": "ghost", "to": {"x": 1, "y": 1}}]}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{err}"
    );
    let (status, err) = api
        .post(
            "/v1/flows/api/edits",
            &editor,
            json!({"edits": [{"op": "teleport"}]}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{err}"
    );
    let (status, err) = api
        .post(
            "/v1/flows/api/edits",
            &editor,
            json!({"edits": [{"op": "add_node", "kind": "Not A Kind", "position": {"x": 0, "y": 0}}]}),
        )
        .await;
    assert!(status == 400 || status == 422, "{status} {err}");
    let (_, flow) = api.get("/v1/flows/api", &editor).await;
    assert_eq!(
        flow["name"], "From a script",
        "the failed batch left nothing"
    );
    assert_eq!(
        flow["nodes"]["h"]["position"],
        json!({"x": 300.0, "y": 40.0})
    );
    assert_eq!(flow["nodes"].as_object().unwrap().len(), 2);
    live.wait_for_heads(
        &serde_json::from_value::<Vec<String>>(moved["heads"].clone()).unwrap(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(
        live.to_json()["nodes"],
        flow["nodes"],
        "the live client agrees"
    );
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_and_restore_while_someone_edits() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", hub.addr()),
    };
    let tok = token("rita", &[("restore", Role::Editor)]);
    let client = Client::connect(&hub.ws_url(), &token("carl", &[("restore", Role::Editor)]))
        .await
        .unwrap();
    let flow = client.subscribe("restore").await.unwrap();

    // Version 1: two nodes.
    let (_, t) = flow
        .edit(|d| {
            d.add_node(NewNode::new("trigger", "Start", Position::new(0.0, 0.0)).with_id("a"))?;
            d.add_node(NewNode::new("http", "Fetch", Position::new(100.0, 0.0)).with_id("b"))
        })
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT).await.unwrap();
    let v1 = flow.heads_hex().join(",");

    // Version 2: b moved and relabelled, c added, a deleted.
    let (_, t) = flow
        .edit(|d| {
            d.move_node("b", Position::new(150.0, 50.0))?;
            d.relabel_node("b", "Fetch v2")?;
            d.add_node(NewNode::new("action", "Notify", Position::new(300.0, 0.0)).with_id("c"))?;
            d.delete_node("a")
        })
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT).await.unwrap();

    let (status, diff) = api
        .get(&format!("/v1/flows/restore/diff?from={v1}"), &tok)
        .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["nodes_added"][0]["id"], "c", "{diff}");
    assert_eq!(diff["nodes_removed"][0]["id"], "a", "{diff}");
    let b = &diff["nodes_changed"][0];
    assert_eq!(b["id"], "b", "{diff}");
    assert_eq!(
        b["label"],
        json!({"old": "Fetch", "new": "Fetch v2"}),
        "{diff}"
    );

    // Restore v1 over HTTP while the client adds a node concurrently.
    let (_, t) = flow
        .edit(|d| d.add_node(NewNode::new("action", "Late", Position::new(9.0, 9.0)).with_id("d")))
        .await
        .unwrap();
    let (status, restored) = api
        .post("/v1/flows/restore/restore", &tok, json!({"to": v1}))
        .await;
    assert_eq!(status, 200, "{restored}");
    flow.wait_acked(&t, WAIT).await.unwrap();
    let heads: Vec<String> = serde_json::from_value(restored["heads"].clone()).unwrap();
    flow.wait_for_heads(&heads, WAIT).await.unwrap();
    let (_, stored) = api.get("/v1/flows/restore", &tok).await;
    let seen = flow.snapshot();
    assert_eq!(
        serde_json::to_value(&seen.nodes).unwrap(),
        stored["nodes"],
        "client and store agree"
    );
    // Every node of v1 is back as it was, and c (not in v1) is gone. The concurrent
    // `d` survives when the restore did not see it yet (a concurrent edit merges),
    // and is removed with the rest when it had: either way nothing else differs.
    assert_eq!(seen.nodes["a"].label, "Start");
    assert_eq!(seen.nodes["b"].label, "Fetch");
    assert_eq!(seen.nodes["b"].position, Position::new(100.0, 0.0));
    assert!(!seen.nodes.contains_key("c"));
    let (_, diff_now) = api
        .get(&format!("/v1/flows/restore/diff?from={v1}"), &tok)
        .await;
    assert!(
        diff_now["nodes_changed"]
            .as_array()
            .is_none_or(|c| c.is_empty())
            && diff_now["nodes_removed"]
                .as_array()
                .is_none_or(|r| r.is_empty()),
        "every v1 node is as it was: {diff_now}"
    );
    let added: Vec<&str> = diff_now["nodes_added"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(added.is_empty() || added == ["d"], "{diff_now}");
    client.close().await;
}
