//! The convergence check that ends every `edit` run.
//!
//! 1. Wait (bounded) until every replica of the flow has the same heads.
//! 2. Fetch the flow from every hub (`GET /v1/flows/{id}`), retrying until its heads
//!    match the replicas' (bounded by the same deadline).
//! 3. Compare every replica's `to_json()` and every hub's JSON (without `id`), and
//!    check that each editor's own node sits where that editor last put it: an edit
//!    the hub never stored shows up here even if every other replica agrees.
//!
//! Any difference is a problem; a flow with problems FAILs the run.

use std::time::Duration;

use flowhub_client::{fetch_flow, FlowHandle};
use serde_json::Value;
use tokio::time::Instant;

/// One replica of a flow taking part in the check.
pub struct Replica {
    pub label: String,
    pub flow: FlowHandle,
    /// The node this replica's editor owns, and the `x` it last wrote.
    pub owned_node: Option<(String, f64)>,
}

/// The outcome for one flow.
#[derive(Debug, Clone)]
pub struct FlowVerdict {
    pub flow_id: String,
    /// Empty when the flow converged.
    pub problems: Vec<String>,
    /// How long after the check started the replicas' heads matched.
    pub settle_ms: u64,
}

impl FlowVerdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

const POLL: Duration = Duration::from_millis(50);

pub async fn check_flow(
    flow_id: &str,
    replicas: &[Replica],
    hubs: &[String],
    token: &str,
    deadline: Instant,
) -> FlowVerdict {
    let started = Instant::now();
    let mut problems = Vec::new();
    let Some(first) = replicas.first() else {
        return FlowVerdict {
            flow_id: flow_id.to_owned(),
            problems: vec!["no replica to compare".into()],
            settle_ms: 0,
        };
    };

    // 1. Heads.
    let mut heads_problem = None;
    let heads = loop {
        let all: Vec<Vec<String>> = replicas.iter().map(|r| r.flow.heads_hex()).collect();
        if all.iter().all(|h| h == &all[0]) {
            break Some(all[0].clone());
        }
        if Instant::now() >= deadline {
            let differing: Vec<String> = replicas
                .iter()
                .zip(&all)
                .filter(|(_, h)| *h != &all[0])
                .take(3)
                .map(|(r, h)| format!("{} ({} heads)", r.label, h.len()))
                .collect();
            heads_problem = Some(format!(
                "replica heads still differ after {:.1} s: {} vs {}",
                started.elapsed().as_secs_f64(),
                first.label,
                differing.join(", ")
            ));
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    let settle_ms = started.elapsed().as_millis() as u64;

    // 2. The hubs' view.
    let mut hub_views = Vec::new();
    for hub in dedup(hubs) {
        let mut last: Result<Value, String>;
        loop {
            match fetch_flow(&hub, flow_id, token).await {
                Ok(v) => {
                    let matches = heads.as_ref().is_some_and(|h| heads_of(&v) == *h);
                    last = Ok(v);
                    if matches || heads.is_none() {
                        break;
                    }
                }
                Err(e) => last = Err(e.to_string()),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        match last {
            Ok(v) => hub_views.push((hub, v)),
            Err(e) => problems.push(format!("cannot read the flow from hub {hub}: {e}")),
        }
    }

    // 3. Compare. Lost edits first: they are the most telling problem.
    let mut differences = Vec::new();
    let reference = without_id(first.flow.to_json());
    for (hub, json) in &hub_views {
        let json = without_id(json.clone());
        for r in replicas {
            if let Some((node, x)) = &r.owned_node {
                let hub_x = json["nodes"][node.as_str()]["position"]["x"].as_f64();
                if hub_x != Some(*x) {
                    problems.push(format!(
                        "hub {hub} has node {node} at x={} but {} last wrote x={x}",
                        hub_x.map_or("(missing)".into(), |v| v.to_string()),
                        r.label
                    ));
                }
            }
        }
        if json != reference {
            differences.push(format!(
                "hub {hub} differs from {}: {}",
                first.label,
                describe_difference(&reference, &json)
            ));
        }
    }
    for r in &replicas[1..] {
        let json = without_id(r.flow.to_json());
        if json != reference {
            differences.push(format!(
                "{} differs from {}: {}",
                r.label,
                first.label,
                describe_difference(&reference, &json)
            ));
        }
    }
    problems.append(&mut differences);
    problems.extend(heads_problem);
    FlowVerdict {
        flow_id: flow_id.to_owned(),
        problems,
        settle_ms,
    }
}

fn dedup(hubs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hubs {
        if !out.contains(h) {
            out.push(h.clone());
        }
    }
    out
}

fn heads_of(v: &Value) -> Vec<String> {
    let mut heads: Vec<String> = v["heads"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    heads.sort();
    heads
}

/// The flow JSON without the `id` the hub adds, heads sorted.
fn without_id(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.remove("id");
        let heads = heads_of(&Value::Object(obj.clone()));
        obj.insert("heads".into(), heads.into());
    }
    v
}

/// A short account of how two flow JSONs differ.
fn describe_difference(a: &Value, b: &Value) -> String {
    let mut parts = Vec::new();
    if a["heads"] != b["heads"] {
        parts.push("heads differ".to_owned());
    }
    if a["name"] != b["name"] {
        parts.push(format!("name {} vs {}", a["name"], b["name"]));
    }
    let empty = serde_json::Map::new();
    let na = a["nodes"].as_object().unwrap_or(&empty);
    let nb = b["nodes"].as_object().unwrap_or(&empty);
    let mut nodes = Vec::new();
    for (id, node) in na {
        match nb.get(id) {
            None => nodes.push(format!("{id} missing")),
            Some(other) if other != node => nodes.push(format!(
                "{id} at x={} vs x={}",
                node["position"]["x"], other["position"]["x"]
            )),
            Some(_) => {}
        }
    }
    for id in nb.keys().filter(|id| !na.contains_key(*id)) {
        nodes.push(format!("{id} extra"));
    }
    if !nodes.is_empty() {
        let n = nodes.len();
        nodes.truncate(3);
        parts.push(format!("{n} node(s) differ ({})", nodes.join(", ")));
    }
    if a["edges"] != b["edges"] {
        parts.push("edges differ".to_owned());
    }
    if parts.is_empty() {
        "JSON differs".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_described() {
        let a = json!({"name": "x", "heads": ["b", "a"], "nodes": {"n1": {"position": {"x": 1.0}}, "n2": {}}, "edges": {}});
        let b = json!({"id": "f", "name": "x", "heads": ["a", "b"], "nodes": {"n1": {"position": {"x": 2.0}}, "n3": {}}, "edges": {}});
        assert_eq!(without_id(a.clone())["heads"], json!(["a", "b"]));
        assert!(without_id(b.clone()).get("id").is_none());
        let d = describe_difference(&without_id(a), &without_id(b));
        assert!(d.contains("n1 at x=1.0 vs x=2.0"), "{d}");
        assert!(d.contains("n2 missing"), "{d}");
        assert!(d.contains("n3 extra"), "{d}");
        assert!(!d.contains("heads differ"), "{d}");
    }
}
