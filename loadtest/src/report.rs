//! The result of a run: [`Report`] (written as JSON with `--out`), and its summary
//! table for the terminal.
//!
//! A report has one [`Section`] per workload (an `edit` run has one, `mixed` three,
//! `--baseline` adds one), each with named values, latency summaries and per-second
//! series, plus [`Check`]s whose failure makes the run fail (non-zero exit code).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::machine::Machine;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub scenario: String,
    pub started_at_unix_ms: u64,
    pub wall_seconds: f64,
    pub machine: Machine,
    /// Load averages when the run ended (see [`Machine::load_average`] for the start).
    pub load_average_after: Vec<f64>,
    /// CPU seconds the harness itself used (its clients compete with the hub for
    /// the same cores when both run on one machine).
    pub harness_cpu_seconds: f64,
    pub targets: Vec<String>,
    /// The parameters of the run, as given.
    pub parameters: serde_json::Value,
    pub sections: Vec<Section>,
    pub checks: Vec<Check>,
    /// Every check passed.
    pub passed: bool,
}

/// The measurements of one workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub values: Vec<Value>,
    pub latencies: Vec<LatencySummary>,
    pub series: Vec<Series>,
    pub notes: Vec<String>,
}

/// One named number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Value {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub name: String,
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// `(quantile, µs)` points of the percentile curve, for plots.
    pub curve: Vec<(f64, f64)>,
}

/// A per-second series (throughput over time, memory over time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub name: String,
    pub unit: String,
    /// Seconds since the start of the run of the first value.
    pub start_s: f64,
    pub values: Vec<f64>,
}

/// A pass/fail verdict on something the run must guarantee.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

impl Section {
    pub fn new(name: impl Into<String>) -> Self {
        Section {
            name: name.into(),
            ..Section::default()
        }
    }

    pub fn value(&mut self, name: impl Into<String>, value: f64, unit: impl Into<String>) {
        self.values.push(Value {
            name: name.into(),
            value,
            unit: unit.into(),
        });
    }

    /// The value called `name`, if any.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|v| v.name == name).map(|v| v.value)
    }

    pub fn latency(&self, name: &str) -> Option<&LatencySummary> {
        self.latencies.iter().find(|l| l.name == name)
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

impl Report {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Writes the report as pretty JSON, creating the parent directory.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Report(e.to_string()))?;
        write_file(path, &json)
    }

    /// The summary table printed at the end of a run.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== {} ({}) — {:.1} s on {} × {} ==",
            self.name, self.scenario, self.wall_seconds, self.machine.nproc, self.machine.cpu_model
        );
        let _ = writeln!(out, "targets: {}", self.targets.join(", "));
        let _ = writeln!(
            out,
            "load average before/after: {:?} / {:?}; harness CPU: {:.1} s",
            self.machine.load_average, self.load_average_after, self.harness_cpu_seconds
        );
        for section in &self.sections {
            let _ = writeln!(out, "\n[{}]", section.name);
            if !section.latencies.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
                );
                for l in &section.latencies {
                    let _ = writeln!(
                        out,
                        "  {:<34} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                        l.name,
                        l.count,
                        ms(l.p50_us),
                        ms(l.p90_us),
                        ms(l.p99_us),
                        ms(l.p999_us),
                        ms(l.max_us)
                    );
                }
            }
            for v in &section.values {
                let _ = writeln!(out, "  {:<44} {:>14} {}", v.name, number(v.value), v.unit);
            }
            for n in &section.notes {
                let _ = writeln!(out, "  note: {n}");
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\nchecks:");
            for c in &self.checks {
                let verdict = if c.passed { "PASS" } else { "FAIL" };
                let _ = writeln!(out, "  {verdict}  {:<28} {}", c.name, c.detail);
            }
        }
        let _ = writeln!(
            out,
            "\nresult: {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        out
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Integers without decimals, everything else with up to 3.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_summary_names_sections_values_and_checks() {
        let mut s = Section::new("edit");
        s.value("edits sent", 10.0, "");
        s.latencies.push(LatencySummary {
            name: "edit → applied".into(),
            count: 0,
            min_us: 0,
            mean_us: 0.0,
            p50_us: 0,
            p90_us: 0,
            p99_us: 0,
            p999_us: 0,
            max_us: 0,
            curve: vec![],
        });
        let r = Report {
            name: "n".into(),
            scenario: "edit".into(),
            started_at_unix_ms: 0,
            wall_seconds: 1.0,
            machine: Machine::detect(),
            load_average_after: vec![],
            harness_cpu_seconds: 0.0,
            targets: vec!["ws://127.0.0.1:1".into()],
            parameters: serde_json::json!({}),
            sections: vec![s],
            checks: vec![Check::new("convergence", false, "flow f differs")],
            passed: false,
        };
        let text = r.render_text();
        assert!(text.contains("[edit]"));
        assert!(text.contains("edits sent"));
        assert!(text.contains("FAIL  convergence"));
        assert!(text.contains("result: FAIL"));
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.250");
    }
}
