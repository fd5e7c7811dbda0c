//! Reading a hub's `/metrics` (Prometheus text): resident memory, sessions, counters.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::targets::http_base;

/// Resident set size of the hub process.
pub const RSS: &str = "flowhub_process_resident_bytes";
/// Open WebSocket sessions.
pub const SESSIONS: &str = "flowhub_sessions_open";
/// Frames queued to clients.
pub const FRAMES_OUT: &str = "flowhub_frames_out_total";
/// Outbound frames dropped because a session queue was full.
pub const QUEUE_DROPS: &str = "flowhub_queue_drops_total";

/// One scrape: metric name (without labels) → value.
pub type Scrape = HashMap<String, f64>;

/// `GET {base}/metrics`, parsed.
pub async fn scrape(base: &str) -> Result<Scrape> {
    let url = format!("{}/metrics", http_base(base));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| Error::hub(format!("GET {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(Error::hub(format!("GET {url}: HTTP {}", response.status())));
    }
    let body = response
        .text()
        .await
        .map_err(|e| Error::hub(format!("GET {url}: {e}")))?;
    Ok(parse(&body))
}

/// Parses Prometheus text: `name{labels} value` lines; comments skipped. Labelled
/// samples of one name are summed.
pub fn parse(body: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in body.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once([' ', '{']) else {
            continue;
        };
        let value_text = match rest.rsplit_once('}') {
            Some((_, v)) => v,
            None => rest,
        };
        if let Some(value) = value_text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *out.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let body = "# HELP x y\n# TYPE x gauge\nflowhub_sessions_open 12\nflowhub_process_resident_bytes 1.5e6\nlabelled{a=\"1\"} 2\nlabelled{a=\"2\"} 3\ngarbage\n";
        let m = parse(body);
        assert_eq!(m[SESSIONS], 12.0);
        assert_eq!(m[RSS], 1_500_000.0);
        assert_eq!(m["labelled"], 5.0);
        assert_eq!(m.len(), 3);
    }
}
