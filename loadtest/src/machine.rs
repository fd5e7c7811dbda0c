//! [`Machine`]: what the run ran on (cores, CPU model, memory), for reports.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// Cores available to this process.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal` from `/proc/meminfo`.
    pub mem_total_bytes: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// 1, 5 and 15 minute load averages when the run started: other work on the
    /// machine shows here.
    pub load_average: Vec<f64>,
}

impl Machine {
    /// Reads `/proc` (Linux); fields it cannot read stay empty or zero.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".into()),
            mem_total_bytes: mem_total(&meminfo).unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            load_average: load_average(),
        }
    }
}

/// `/proc/loadavg`'s first three numbers (empty if unreadable).
pub fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpu = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t: x\n";
        assert_eq!(cpu_model(cpu).as_deref(), Some("Example CPU @ 2.0GHz"));
        assert_eq!(mem_total("MemTotal:       1024 kB\n"), Some(1024 * 1024));
        assert_eq!(mem_total(""), None);
        let m = Machine::detect();
        assert!(m.nproc >= 1);
        assert_eq!(m.load_average.len(), 3);
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(process_cpu_seconds() > 0.0);
    }
}
