//! Flows as JSON and JSON Patch, for clients without Automerge: `subscribe_flow`
//! with `format: json` over WebSocket, and the SSE stream `GET /v1/flows/{id}/stream`.
//! A subscriber that applies every patch to the first snapshot ends equal to
//! `GET /v1/flows/{id}` after 1,000 random edits from Automerge clients, and one that
//! reconnects with the heads it had misses nothing.

mod support;

use std::time::Duration;

use flowhub_client::{Client, FlowHandle, NewNode, Position};
use flowhub_protocol::json_patch;
use flowhub_protocol::{ClientMessage, FlowFormat, Role, ServerMessage};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;
use support::*;

const FLOW: &str = "patched";
const WAIT: Duration = Duration::from_secs(20);

/// One random typed edit on `flow`; returns nothing (the edit may legitimately fail
/// when a concurrent delete removed its node: then it does nothing).
async fn random_edit(flow: &FlowHandle, rng: &mut StdRng, who: &str, i: usize) {
    let nodes: Vec<String> = flow.snapshot().nodes.keys().cloned().collect();
    let pick = |rng: &mut StdRng| nodes[rng.random_range(0..nodes.len())].clone();
    let choice = if nodes.len() < 3 {
        0
    } else {
        rng.random_range(0..6)
    };
    let x = rng.random_range(0..1000) as f64;
    let edited = match choice {
        0 => flow
            .edit(|d| {
                d.add_node(
                    NewNode::new("action", format!("{who} {i}"), Position::new(x, 0.0))
                        .with_id(format!("{who}-{i}")),
                )
                .map(|_| ())
            })
            .await
            .map(|(_, t)| t),
        1 | 2 => {
            let id = pick(rng);
            flow.edit(|d| d.move_node(&id, Position::new(x, x / 2.0)).map(|_| ()))
                .await
                .map(|(_, t)| t)
        }
        3 => {
            let id = pick(rng);
            flow.edit(|d| d.relabel_node(&id, &format!("{who} says {i}")).map(|_| ()))
                .await
                .map(|(_, t)| t)
        }
        4 => {
            let id = pick(rng);
            flow.edit(|d| {
                d.configure_node(&id, "step", serde_json::json!({"n": i, "tags": [who, "x"]}))
                    .map(|_| ())
            })
            .await
            .map(|(_, t)| t)
        }
        _ => {
            let (a, b) = (pick(rng), pick(rng));
            flow.edit(|d| {
                d.connect(
                    Some(format!("{who}-e{i}")),
                    flowhub_client::Endpoint::new(&a, "out"),
                    flowhub_client::Endpoint::new(&b, "in"),
                )
                .map(|_| ())
            })
            .await
            .map(|(_, t)| t)
        }
    };
    if let Ok(ticket) = edited {
        // Pace the writers a little so patches interleave with edits.
        if i.is_multiple_of(50) {
            let _ = flow.wait_acked(&ticket, WAIT).await;
        }
    }
}

async fn get_flow(hub_addr: std::net::SocketAddr, token: &str) -> Value {
    let mut json: Value = reqwest::Client::new()
        .get(format!("http://{hub_addr}/v1/flows/{FLOW}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    json.as_object_mut().unwrap().remove("heads");
    json
}

/// A WebSocket JSON subscriber: its document and the heads it is at.
struct JsonSubscriber {
    raw: RawClient,
    doc: Value,
    heads: Vec<String>,
    patches: usize,
    /// Every author the patches named (the live history feed).
    authors: std::collections::BTreeSet<String>,
}

impl JsonSubscriber {
    async fn subscribe(base: &str, token: &str, since: Vec<String>, doc: Value) -> JsonSubscriber {
        let mut raw = RawClient::connect(base, token).await;
        raw.send(&ClientMessage::SubscribeFlow {
            id: None,
            flow_id: FLOW.into(),
            pending: Vec::new(),
            stream: false,
            format: FlowFormat::Json,
            since_heads: since.clone(),
        })
        .await;
        let mut sub = JsonSubscriber {
            raw,
            doc,
            heads: since,
            patches: 0,
            authors: Default::default(),
        };
        // flow_state first, then the flow or a patch from `since`.
        loop {
            match sub.raw.next(WAIT).await.expect("a message") {
                ServerMessage::FlowState { .. } => continue,
                msg => {
                    sub.apply(msg);
                    return sub;
                }
            }
        }
    }

    fn apply(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::FlowJson { heads, flow, .. } => {
                self.doc = flow;
                self.heads = heads;
            }
            ServerMessage::FlowPatch {
                from_heads,
                heads,
                patch,
                authors,
                ..
            } => {
                assert_eq!(from_heads, self.heads, "patches chain without a gap");
                json_patch::apply(&mut self.doc, &patch).expect("the patch applies");
                self.heads = heads;
                self.patches += 1;
                self.authors.extend(authors);
            }
            _ => {}
        }
    }

    /// Applies messages until the subscriber is at `heads`.
    async fn until_at(&mut self, heads: &[String]) {
        let mut want = heads.to_vec();
        want.sort();
        while {
            let mut have = self.heads.clone();
            have.sort();
            have != want
        } {
            let msg = self.raw.next(WAIT).await.expect("patches keep coming");
            self.apply(msg);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_subscriber_matches_the_flow_after_1000_random_edits_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let editor = |u: &str| token(u, &[(FLOW, Role::Editor)]);
    let viewer = token("dash", &[(FLOW, Role::Viewer)]);
    let ann = Client::connect(&hub.ws_url(), &editor("ann"))
        .await
        .unwrap();
    let bob = Client::connect(&hub.ws_url(), &editor("bob"))
        .await
        .unwrap();
    let (ann_flow, bob_flow) = (
        ann.subscribe(FLOW).await.unwrap(),
        bob.subscribe(FLOW).await.unwrap(),
    );
    let mut sub = JsonSubscriber::subscribe(&hub.ws_url(), &viewer, Vec::new(), Value::Null).await;
    let subscribed_heads = sub.heads.clone();
    assert!(
        sub.doc["nodes"].is_object(),
        "the first message is the flow"
    );

    let mut rng_a = StdRng::seed_from_u64(7);
    let mut rng_b = StdRng::seed_from_u64(11);
    for i in 0..250 {
        random_edit(&ann_flow, &mut rng_a, "ann", i).await;
        random_edit(&bob_flow, &mut rng_b, "bob", i).await;
    }

    // The subscriber follows the edits as patches.
    let (_, t) = ann_flow.edit(|d| d.set_name("half")).await.unwrap();
    ann_flow.wait_acked(&t, WAIT).await.unwrap();
    bob_flow
        .wait_for_heads(&ann_flow.heads_hex(), WAIT)
        .await
        .unwrap();
    ann_flow
        .wait_for_heads(&bob_flow.heads_hex(), WAIT)
        .await
        .unwrap();
    sub.until_at(&ann_flow.heads_hex()).await;
    assert_ne!(sub.heads, subscribed_heads);
    let named: Vec<&str> = sub.authors.iter().map(String::as_str).collect();
    assert_eq!(
        named,
        ["ann", "bob"],
        "the patches name who made the changes"
    );
    assert_eq!(sub.doc, get_flow(hub.addr(), &viewer).await);

    // Disconnect mid-way; edits go on; resume from the heads it had.
    let (doc, at) = (sub.doc.clone(), sub.heads.clone());
    let patches_before = sub.patches;
    drop(sub);
    for i in 250..500 {
        random_edit(&ann_flow, &mut rng_a, "ann", i).await;
        random_edit(&bob_flow, &mut rng_b, "bob", i).await;
    }
    let (t, _) = (ann_flow.edit(|d| d.set_name("done")).await.unwrap().1, ());
    ann_flow.wait_acked(&t, WAIT).await.unwrap();
    bob_flow
        .wait_for_heads(&ann_flow.heads_hex(), WAIT)
        .await
        .unwrap();

    let mut sub = JsonSubscriber::subscribe(&hub.ws_url(), &viewer, at, doc).await;
    assert_eq!(
        sub.patches, 1,
        "the resume is one patch from the heads it had"
    );
    sub.until_at(&ann_flow.heads_hex()).await;
    let stored = get_flow(hub.addr(), &viewer).await;
    assert_eq!(
        sub.doc, stored,
        "patches applied to the snapshot give the flow"
    );
    assert_eq!(stored["name"], "done");
    // Patches are coalesced per tick (250 ms), so their number depends on timing.
    eprintln!("{patches_before} patches while 1,000 edits were made");
    ann.close().await;
    bob.close().await;
}

/// The SSE stream: events parsed by hand (`event:`, `id:`, `data:` lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sse_stream_sends_the_flow_then_patches_and_resumes_from_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(Backend::Sqlite, dir.path()).await;
    let ann = Client::connect(&hub.ws_url(), &token("ann", &[(FLOW, Role::Editor)]))
        .await
        .unwrap();
    let flow = ann.subscribe(FLOW).await.unwrap();
    let (_, t) = flow
        .edit(|d| {
            d.add_node(NewNode::new("trigger", "Start", Position::new(0.0, 0.0)).with_id("a"))
        })
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT).await.unwrap();
    let viewer = token("phone", &[(FLOW, Role::Viewer)]);
    let http = reqwest::Client::new();
    let open = |last: Option<String>| {
        let mut req = http
            .get(format!("http://{}/v1/flows/{FLOW}/stream", hub.addr()))
            .bearer_auth(&viewer);
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        req.send()
    };
    let resp = open(None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = SseEvents::new(resp);
    let (kind, id, data) = events.next().await;
    assert_eq!(kind, "flow");
    let mut doc: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(doc["nodes"]["a"]["label"], "Start");

    let (_, t) = flow.edit(|d| d.relabel_node("a", "Begin")).await.unwrap();
    flow.wait_acked(&t, WAIT).await.unwrap();
    let (kind, mut last_id, data) = events.next().await;
    assert_eq!(kind, "patch");
    assert_ne!(last_id, id);
    let patch: Value = serde_json::from_str(&data).unwrap();
    let ops: Vec<json_patch::PatchOp> = serde_json::from_value(patch["patch"].clone()).unwrap();
    json_patch::apply(&mut doc, &ops).unwrap();
    assert_eq!(doc["nodes"]["a"]["label"], "Begin");
    drop(events);

    // Missed while away: one patch on reconnect with Last-Event-ID.
    let (_, t) = flow
        .edit(|d| d.move_node("a", Position::new(5.0, 6.0)))
        .await
        .unwrap();
    flow.wait_acked(&t, WAIT).await.unwrap();
    let mut events = SseEvents::new(open(Some(last_id.clone())).await.unwrap());
    let (kind, id, data) = events.next().await;
    assert_eq!(kind, "patch", "{data}");
    let patch: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(patch["from_heads"].as_array().unwrap().len(), 1);
    let ops: Vec<json_patch::PatchOp> = serde_json::from_value(patch["patch"].clone()).unwrap();
    json_patch::apply(&mut doc, &ops).unwrap();
    last_id = id;
    assert_eq!(last_id, flow.heads_hex().join(","));
    let stored = get_flow(hub.addr(), &viewer).await;
    assert_eq!(doc, stored);

    // No role, no stream.
    let resp = http
        .get(format!("http://{}/v1/flows/{FLOW}/stream", hub.addr()))
        .bearer_auth(token("stranger", &[("other", Role::Editor)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    ann.close().await;
}

/// The SSE events of a response, parsed by hand.
struct SseEvents {
    resp: reqwest::Response,
    buf: String,
}

impl SseEvents {
    fn new(resp: reqwest::Response) -> Self {
        SseEvents {
            resp,
            buf: String::new(),
        }
    }

    /// The next `(event, id, data)`, skipping keep-alive comments.
    async fn next(&mut self) -> (String, String, String) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut kind, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !kind.is_empty() {
                    return (kind, id, data);
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an event in time")
                .expect("the stream stays open")
                .expect("the stream does not end");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
