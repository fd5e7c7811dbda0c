//! Shared helpers: in-process hubs on port 0 and small scenario parameters.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use flowhub::{Hub, HubConfig};
use flowhub_loadtest::cli::{Common, EditArgs, PresenceArgs, WatchArgs};

pub const SECRET: &str = "loadtest-test-secret";
/// The machine's Redis (the hub's multi-node tests need it too).
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn config(dir: &Path) -> HubConfig {
    HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        jwt_secret: Some(SECRET.into()),
        ..HubConfig::default()
    }
}

/// A hub on the embedded default (SQLite in `dir`, in-process bus).
pub async fn hub(dir: &Path) -> Hub {
    Hub::start(config(dir)).await.expect("hub starts")
}

/// Two hub nodes sharing one SQLite database and the machine's Redis.
pub async fn two_nodes(dir: &Path) -> (Hub, Hub) {
    let db = format!("sqlite://{}", dir.join("shared.db").display());
    let node = |name: &str| HubConfig {
        database_url: Some(db.clone()),
        redis_url: Some(REDIS_URL.into()),
        node_id: Some(format!("{name}-{}", rand::random::<u32>())),
        ..config(dir)
    };
    let a = Hub::start(node("a"))
        .await
        .unwrap_or_else(|e| panic!("hub a starts (Redis must run on 127.0.0.1:6379): {e}"));
    let b = Hub::start(node("b")).await.expect("hub b starts");
    (a, b)
}

/// Short phases for tests.
pub fn common(targets: Vec<String>) -> Common {
    Common {
        duration: Duration::from_secs(2),
        ramp_up: Duration::from_millis(300),
        settle_timeout: Duration::from_secs(15),
        ..Common::for_targets(targets, SECRET)
    }
}

pub fn edit_args(editors: usize, flows: usize, rate: f64) -> EditArgs {
    EditArgs {
        editors,
        flows,
        edit_rate: rate,
        flow_nodes: 0,
    }
}

pub fn presence_args(sessions: usize, flows: usize, rate: f64) -> PresenceArgs {
    PresenceArgs {
        sessions,
        presence_flows: flows,
        presence_rate: rate,
    }
}

pub fn watch_args(watchers: usize, rate: f64, batch: usize, baseline: bool) -> WatchArgs {
    WatchArgs {
        watchers,
        event_rate: rate,
        batch,
        baseline,
    }
}
