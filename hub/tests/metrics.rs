//! `/metrics` after real edits on two hubs (PostgreSQL, a private Redis): the text
//! parses as the Prometheus format, the histograms of the edit path, the store and the
//! bus have observations, sessions are counted by transport, and every `flowhub_*`
//! name the operator's kit and the load-test harness read is exported.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flowhub_client::{Client, NewNode, Position};
use flowhub_protocol::Role;
use support::*;

const ACK: Duration = Duration::from_secs(20);

/// One scrape: family name → its `# TYPE`; sample `name{labels}` → value.
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series `{series}` in the scrape"))
    }

    /// Every exported family and sample name (labels stripped).
    fn names(&self) -> BTreeSet<String> {
        self.samples
            .keys()
            .map(|k| k.split('{').next().unwrap().to_owned())
            .chain(self.types.keys().cloned())
            .collect()
    }
}

/// Parses the Prometheus text format strictly: every line is a `# HELP`/`# TYPE`
/// comment or `name{labels} value`; every sample belongs to a declared family (with
/// the suffix its type allows), and no family is declared twice.
fn parse(body: &str) -> Scrape {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "bad line `{line}`"
        );
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in `{line}`"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in `{line}`"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in `{line}`"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample `{name}` has no # TYPE before it"
        );
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "series {series} twice"
        );
    }
    Scrape { types, samples }
}

async fn scrape(http_url: &str) -> Scrape {
    let response = reqwest::get(format!("{http_url}/metrics")).await.unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    parse(&response.text().await.unwrap())
}

/// A histogram with `count ≥ 1` observations whose buckets are cumulative and end in
/// `+Inf` = count.
fn assert_histogram(s: &Scrape, name: &str) -> f64 {
    assert_eq!(
        s.types.get(name).map(String::as_str),
        Some("histogram"),
        "{name}"
    );
    let count = s.value(&format!("{name}_count"));
    assert!(count >= 1.0, "{name}_count = {count}, want ≥ 1");
    assert!(s.value(&format!("{name}_sum")) >= 0.0);
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = s
        .samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name} has buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} buckets are cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{name}");
    count
}

/// `flowhub_*` names in a text (dashboards, alerts, docs); in Rust sources
/// (`quoted_only`) only those that open a string literal, not crate paths.
fn names_in(text: &str, quoted_only: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("flowhub_") {
        let start = i + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(text.len() - start);
        let before_ok = if quoted_only {
            start > 0 && bytes[start - 1] == b'"'
        } else {
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric())
        };
        let name = text[start..end].trim_end_matches('_');
        if before_ok && name.len() > "flowhub_".len() {
            out.insert(name.to_owned());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_histograms_fill_after_an_edit() {
    let redis = PrivateRedis::start();
    let db = fresh_postgres_database().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &std::path::Path| {
        let mut c = config(dir, Some(db.clone()));
        c.redis_url = Some(redis.url());
        c
    };
    let a = flowhub::Hub::start(start(dir_a.path())).await.unwrap();
    let b = flowhub::Hub::start(start(dir_b.path())).await.unwrap();
    let flow_id = format!(
        "metrics-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let tok = |sub: &str| token(sub, &[(flow_id.as_str(), Role::Editor)]);

    // An editor and a watcher on node a, a watcher on node b: the edit is acked, fanned
    // out on a and published to b.
    let editor = Client::connect(&a.ws_url(), &tok("ed")).await.unwrap();
    let flow = editor.subscribe(&flow_id).await.unwrap();
    let local = Client::connect(&a.ws_url(), &tok("local")).await.unwrap();
    let local_flow = local.subscribe(&flow_id).await.unwrap();
    let remote = Client::connect(&b.ws_url(), &tok("remote")).await.unwrap();
    let remote_flow = remote.subscribe(&flow_id).await.unwrap();
    // An SSE stream of the flow on node a (counted as transport `sse`).
    let mut sse = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/flows/{flow_id}/stream?token={}",
            a.addr(),
            tok("sse")
        ))
        .send()
        .await
        .unwrap();
    assert!(sse.status().is_success(), "SSE: {}", sse.status());
    let first = tokio::time::timeout(ACK, sse.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some(), "the SSE stream sends the flow first");

    let (_, ticket) = flow
        .edit(|d| d.add_node(NewNode::new("action", "n", Position { x: 1.0, y: 2.0 })))
        .await
        .unwrap();
    flow.wait_acked(&ticket, ACK).await.unwrap();
    for replica in [&local_flow, &remote_flow] {
        replica
            .wait_until(|s| s.nodes.len() == 1, ACK)
            .await
            .expect("the edit reaches both watchers");
    }

    let sa = scrape(&format!("http://{}", a.addr())).await;
    assert_histogram(&sa, "flowhub_edit_ack_seconds");
    assert!(assert_histogram(&sa, "flowhub_store_append_seconds") >= 1.0);
    assert_histogram(&sa, "flowhub_fan_out_peers");
    assert_histogram(&sa, "flowhub_bus_publish_seconds");
    // The change reached the local watcher: one fan-out of at least one peer.
    let zero = sa
        .samples
        .iter()
        .find(|(k, _)| k.starts_with("flowhub_fan_out_peers_bucket{le=\"0"))
        .map(|(_, v)| *v)
        .expect("a bucket for 0 peers");
    assert!(zero < sa.value("flowhub_fan_out_peers_count"));
    assert_eq!(
        sa.value("flowhub_sessions_by_transport{transport=\"ws\"}"),
        2.0
    );
    assert_eq!(
        sa.value("flowhub_sessions_by_transport{transport=\"sse\"}"),
        1.0
    );
    assert_eq!(
        sa.value("flowhub_sessions_by_transport{transport=\"automerge-repo\"}"),
        0.0
    );
    assert_eq!(sa.value("flowhub_sessions_open"), 2.0);
    assert_eq!(sa.types["flowhub_edits_applied_total"], "counter");
    assert!(sa.value("flowhub_edits_applied_total") >= 1.0);
    assert!(sa.value("flowhub_store_changes_committed_total") >= 1.0);
    assert!(sa.value("flowhub_process_resident_bytes") > 1e6);

    // Node b received the change on the bus, where the lag is measured.
    let sb = eventually_scrape(
        &format!("http://{}", b.addr()),
        "flowhub_bus_lag_seconds_count",
    )
    .await;
    assert_histogram(&sb, "flowhub_bus_lag_seconds");

    // Every metric the operator's kit and the harness name is exported (a renamed
    // metric would otherwise leave a dashboard panel or an alert silently empty).
    let exported = sa.names();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // Names that are not metrics: a table, a cookie, the edit path's tracing target,
    // the simulation's database names.
    let not_metrics = [
        "flowhub_migrations",
        "flowhub_demo_id",
        "flowhub_edit",
        "flowhub_sim",
    ];
    let mut missing = Vec::new();
    for file in [
        "ops/grafana/flowhub.json",
        "ops/prometheus/flowhub-alerts.yaml",
        "ops/OPERATIONS.md",
        "docs/SCALING.md",
        "loadtest/src/metrics.rs",
        "loadtest/src/scenario/cluster.rs",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for name in names_in(&text, file.ends_with(".rs")) {
            if !exported.contains(&name) && !not_metrics.contains(&name.as_str()) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "named but not exported: {missing:#?}");
    drop(sse);
}

/// Scrapes until `series` is at least 1 (bus delivery is asynchronous).
async fn eventually_scrape(http_url: &str, series: &str) -> Scrape {
    for _ in 0..100 {
        let s = scrape(http_url).await;
        if s.samples.get(series).copied().unwrap_or(0.0) >= 1.0 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} stayed 0 on {http_url}");
}
