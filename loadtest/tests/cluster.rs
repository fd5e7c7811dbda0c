//! The `cluster` scenario against two in-process hubs on a fresh PostgreSQL database
//! and a private Redis: it connects everything, reads Redis `INFO` and PostgreSQL's
//! statistics, and reports the idle and edit windows. Needs redis-server and
//! PostgreSQL on 127.0.0.1:5432 (fails, never skips, without them).

mod support;

use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use flowhub::{Hub, HubConfig};
use flowhub_loadtest::cli::{ClusterArgs, Command};
use flowhub_loadtest::run_report;
use support::*;

struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Process::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        // Owned from here: Drop kills and waits for it, on every path.
        let redis = Redis {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {port}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let name = format!("flowhub_lt_cluster_{:08x}", rand::random::<u32>());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run on 127.0.0.1:5432 for this test: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

fn value(report: &flowhub_loadtest::Report, section: &str, name: &str) -> f64 {
    report
        .section(section)
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("no `{name}` in section `{section}`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reports_idle_and_edit_costs_of_redis_postgres_and_nodes() {
    let redis = Redis::start();
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| HubConfig {
        database_url: Some(db.clone()),
        redis_url: Some(format!("redis://127.0.0.1:{}", redis.port)),
        node_id: Some(name.into()),
        ..config(dir.path())
    };
    let a = Hub::start(node("a")).await.expect("hub a starts");
    let b = Hub::start(node("b")).await.expect("hub b starts");
    let mut params = common(vec![a.ws_url(), b.ws_url()]);
    params.duration = Duration::from_secs(3);
    let report = run_report(&Command::Cluster {
        common: params,
        cluster: ClusterArgs {
            flows: 30,
            sessions_per_flow: 2,
            editors: 6,
            edit_rate: 5.0,
            idle_duration: Duration::from_secs(2),
            redis: vec![format!("127.0.0.1:{}", redis.port)],
            database_url: Some(db.clone()),
            connect_concurrency: 16,
        },
    })
    .await
    .unwrap();
    let text = report.render_text();
    println!("{text}");
    assert!(report.passed, "{text}");
    assert_eq!(
        value(&report, "cluster: setup", "idle sessions connected"),
        60.0
    );
    assert_eq!(value(&report, "cluster: setup", "editors ready"), 6.0);
    // Every flow is open on both nodes (its two sessions are on different nodes).
    assert_eq!(
        value(&report, "cluster: setup", "flow actors open (all nodes)"),
        60.0
    );
    // Idle: no flow publishes, whatever the number of flows.
    assert!(
        value(
            &report,
            "cluster: idle",
            "bus publishes per second per node"
        ) <= 1.0
    );
    assert!(value(&report, "cluster: idle", "redis commands per second") > 0.0);
    assert!(value(&report, "cluster: idle", "node 0 CPU").is_finite());
    // Edits: one changes message per edit, then at most 3 heads messages per burst.
    let edits = value(&report, "cluster: edit", "edits applied (all nodes)");
    assert!(edits >= 6.0 * 5.0 * 3.0 * 0.9, "{edits} edits\n{text}");
    let per_edit = value(&report, "cluster: edit", "bus publishes per edit");
    assert!(
        (1.0..=4.0).contains(&per_edit),
        "{per_edit} publishes per edit\n{text}"
    );
    assert!(
        value(
            &report,
            "cluster: edit",
            "redis PUBLISH+SPUBLISH per second"
        ) > 0.0
    );
    assert!(value(&report, "cluster: edit", "store appends per second") > 0.0);
    assert!(
        value(
            &report,
            "cluster: edit",
            "postgres flow_changes inserts per second"
        ) >= 0.0,
        "{text}"
    );
    assert!(report
        .section("cluster: edit")
        .unwrap()
        .latency("edit → ack (client)")
        .is_some());
    a.shutdown().await;
    b.shutdown().await;
}
