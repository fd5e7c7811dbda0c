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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_names_the_verified_users_and_versions_pin_heads() {
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::ReadDoc;

    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", hub.addr()),
    };
    let flow_id = "hist";
    let ann = Client::connect(&hub.ws_url(), &token("ann", &[(flow_id, Role::Editor)]))
        .await
        .unwrap();
    let bob = Client::connect(&hub.ws_url(), &token("bob", &[(flow_id, Role::Editor)]))
        .await
        .unwrap();
    let mallory = Client::connect(&hub.ws_url(), &token("mallory", &[(flow_id, Role::Editor)]))
        .await
        .unwrap();
    let ann_flow = ann.subscribe(flow_id).await.unwrap();
    let bob_flow = bob.subscribe(flow_id).await.unwrap();
    let mal_flow = mallory.subscribe(flow_id).await.unwrap();

    let (_, t) = ann_flow
        .edit(|d| {
            d.add_node(NewNode::new("trigger", "Start", Position::new(0.0, 0.0)).with_id("a"))
        })
        .await
        .unwrap();
    ann_flow.wait_acked(&t, WAIT).await.unwrap();
    let (status, v1) = api
        .post(
            &format!("/v1/flows/{flow_id}/versions"),
            &token("ann", &[(flow_id, Role::Editor)]),
            json!({"name": "v1"}),
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    bob_flow
        .wait_until(|s| s.nodes.contains_key("a"), WAIT)
        .await
        .unwrap();
    let (_, t) = bob_flow
        .edit(|d| d.relabel_node("a", "Start here"))
        .await
        .unwrap();
    bob_flow.wait_acked(&t, WAIT).await.unwrap();
    let (status, script) = api
        .post(
            &format!("/v1/flows/{flow_id}/edits"),
            &token("ci-bot", &[(flow_id, Role::Editor)]),
            json!({"edits": [{"op": "configure_node", "id": "a", "key": "cron", "value": "0 * * * *"}]}),
        )
        .await;
    assert_eq!(status, 200, "{script}");

    // Mallory claims, in the change's own metadata, to be a JSON edit by ann.
    mal_flow
        .wait_for_heads(
            &serde_json::from_value::<Vec<String>>(script["heads"].clone()).unwrap(),
            WAIT,
        )
        .await
        .unwrap();
    let (_, t) = mal_flow
        .edit(|d| {
            let nodes = d.doc().get(automerge::ROOT, "nodes").unwrap().unwrap().1;
            let raw = d.doc_mut();
            let a = raw.get(&nodes, "a").unwrap().unwrap().1;
            raw.put(&a, "label", "Start (mallory)").unwrap();
            raw.commit_with(CommitOptions::default().with_message("flowhub edits user=ann"));
            Ok::<_, flowhub_crdt::CrdtError>(())
        })
        .await
        .unwrap();
    mal_flow.wait_acked(&t, WAIT).await.unwrap();

    let viewer = token("ann", &[(flow_id, Role::Viewer)]);
    let (status, history) = api
        .get(&format!("/v1/flows/{flow_id}/history"), &viewer)
        .await;
    assert_eq!(status, 200, "{history}");
    let sessions = history["sessions"].as_array().unwrap();
    let users: Vec<&str> = sessions
        .iter()
        .map(|s| s["user_id"].as_str().unwrap())
        .collect();
    // Newest first; the genesis change has no user.
    assert_eq!(
        &users[..4],
        ["mallory", "ci-bot", "bob", "ann"],
        "{history}"
    );
    assert_eq!(
        sessions[3]["summary"]["nodes_added"],
        json!(["a"]),
        "{history}"
    );
    assert_eq!(
        sessions[2]["summary"]["nodes_relabelled"],
        json!(["a"]),
        "{history}"
    );
    assert!(
        sessions[1]["summary"]["config_changed"]
            .to_string()
            .contains("cron"),
        "{history}"
    );
    // Mallory's raw change (index 0) carries no time; every typed edit does, in ms.
    for session in &sessions[1..4] {
        assert!(
            session["end"].as_i64().unwrap() > 1_600_000_000_000,
            "times are ms: {history}"
        );
    }

    // Changes by an actor bound to another user are refused.
    let ann_actor = ann_flow.with_doc(|d| d.actor_hex());
    let stolen = mal_flow
        .edit(|d| {
            d.doc_mut()
                .set_actor(ann_actor.parse::<automerge::ActorId>().unwrap());
            d.relabel_node("a", "as ann")
        })
        .await;
    if let Ok((_, t)) = stolen {
        let verdict = mal_flow.wait_acked(&t, WAIT).await;
        assert!(
            verdict.is_err(),
            "a change by ann's actor from mallory is refused"
        );
    }
    let (_, flow) = api.get(&format!("/v1/flows/{flow_id}"), &viewer).await;
    assert_eq!(flow["nodes"]["a"]["label"], "Start (mallory)");

    // Named versions: list, use in a diff, refuse a duplicate, delete.
    let editor = token("ann", &[(flow_id, Role::Editor)]);
    let (status, dup) = api
        .post(
            &format!("/v1/flows/{flow_id}/versions"),
            &editor,
            json!({"name": "v1"}),
        )
        .await;
    assert_eq!(status, 409, "{dup}");
    let (_, list) = api
        .get(&format!("/v1/flows/{flow_id}/versions"), &viewer)
        .await;
    assert_eq!(list["versions"][0]["name"], "v1", "{list}");
    assert_eq!(list["versions"][0]["heads"], v1["heads"], "{list}");
    let (status, diff) = api
        .get(
            &format!("/v1/flows/{flow_id}/diff?from=version:v1"),
            &viewer,
        )
        .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["nodes_changed"][0]["label"]["old"], "Start", "{diff}");
    let resp = api
        .http
        .delete(format!("{}/v1/flows/{flow_id}/versions/v1", api.base))
        .bearer_auth(&editor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = api
        .get(
            &format!("/v1/flows/{flow_id}/diff?from=version:v1"),
            &viewer,
        )
        .await;
    assert_eq!(status, 404);
    for c in [ann, bob, mallory] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_speaks_the_http_api_and_follows_the_json_stream() {
    use flowhub_client::{Edit, Endpoint, FlowApi};

    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let tok = token("script", &[("rust-api", Role::Editor)]);
    let api = FlowApi::new(&hub.ws_url(), "rust-api", &tok).unwrap();
    let mut stream = api.watch_json(None).await.unwrap();
    assert!(stream.next().await.unwrap().unwrap()["nodes"].is_object());

    let edits = [
        Edit::AddNode {
            id: Some("a".into()),
            kind: "trigger".into(),
            label: "A".into(),
            position: Position::new(0.0, 0.0),
            config: Default::default(),
        },
        Edit::AddNode {
            id: Some("b".into()),
            kind: "http".into(),
            label: "B".into(),
            position: Position::new(1.0, 0.0),
            config: Default::default(),
        },
        Edit::Connect {
            id: Some("e".into()),
            source: Endpoint::new("a", "out"),
            target: Endpoint::new("b", "in"),
        },
    ];
    let first = api.edit(&edits, Some("k1")).await.unwrap();
    let again = api.edit(&edits, Some("k1")).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.change, again.change);
    api.name_version("two nodes").await.unwrap();
    api.edit(&[Edit::DeleteNode { id: "b".into() }], None)
        .await
        .unwrap();

    // The stream follows: eventually b is gone.
    loop {
        let flow = stream.next().await.unwrap().unwrap();
        if flow["nodes"].get("b").is_none() && flow["nodes"].get("a").is_some() {
            break;
        }
    }
    let diff = api.diff("version:two nodes", None).await.unwrap();
    assert_eq!(diff.nodes_removed.len(), 1);
    assert_eq!(diff.edges_removed.len(), 1);
    let restored = api.restore("version:two nodes", None).await.unwrap();
    assert!(!restored.replayed);
    let flow = fetch_flow_json(&hub, &tok).await;
    assert_eq!(flow["nodes"]["b"]["label"], "B");
    assert_eq!(flow["edges"]["e"]["target"]["node"], "b");
    let history = api.history(10, None).await.unwrap();
    assert_eq!(history["sessions"][0]["user_id"], "script", "{history}");
    let versions = api.versions().await.unwrap();
    assert_eq!(versions["versions"][0]["name"], "two nodes");
    api.delete_version("two nodes").await.unwrap();
    match api.diff("version:two nodes", None).await {
        Err(flowhub_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, flowhub_client::ErrorCode::NotFound)
        }
        other => panic!("{other:?}"),
    }
}

async fn fetch_flow_json(hub: &flowhub::Hub, tok: &str) -> Value {
    flowhub_client::fetch_flow(&hub.ws_url(), "rust-api", tok)
        .await
        .unwrap()
}
