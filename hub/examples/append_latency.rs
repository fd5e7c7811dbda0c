//! What one `append_changes` costs, one at a time (the hub at low load, where no
//! group commit shares a transaction): wall time per append, on the embedded SQLite
//! store or on the database at DATABASE_URL (give PostgreSQL a fresh database). For its CPU time and thread hops, run it under `perf stat -e
//! task-clock,context-switches` (docs/PERFORMANCE.md, "Eighth round").
//!
//!   cargo build --release -p flowhub --example append_latency
//!   target/release/examples/append_latency [APPENDS] [DATABASE_URL]

use std::time::Instant;

use flowhub::sql_store::SqlStore;
use flowhub_actors::store::{ChangeRecord, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let appends: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let url = std::env::args()
        .nth(2)
        .unwrap_or_else(|| format!("sqlite://{}/flowhub.db?mode=rwc", dir.path().display()));
    let store = SqlStore::connect(&url).await?;
    let mut micros = Vec::with_capacity(appends);
    for i in 0..appends {
        let change = ChangeRecord {
            hash: format!("{i:064x}"),
            bytes: vec![7; 120],
        };
        let t = Instant::now();
        store.append_changes("bench", &[change]).await?;
        micros.push(t.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "{appends} appends: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, mean {:.0} µs",
        at(0.5),
        at(0.9),
        at(0.99),
        micros.iter().sum::<f64>() / micros.len() as f64
    );
    store.close().await;
    Ok(())
}
