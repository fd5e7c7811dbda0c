//! How events change a [`RunSnapshot`]. Pure (no I/O, no clock), so the run actor, a
//! store rebuilding a snapshot from its event log, and tests all share one definition:
//! replaying the same events always gives the same snapshot.
//!
//! Rules, for events in sequence order:
//! - `run.started`: `queued` becomes `running`; the first one sets `startedAt` and
//!   `flowHeads`.
//! - `step.*`: per node, in order of first appearance. `step.started` (re)starts the
//!   step: its `attempt` is the event's, else the previous one plus one after a
//!   `step.retrying`, else the previous one (1 for a new step). `step.succeeded`,
//!   `step.failed` and `step.retrying` end an attempt: `finishedAt = ts`, `durationMs`
//!   from the event or `ts - startedAt`, `error` from the event (cleared on success).
//!   A step event on a queued run makes it `running`.
//! - `log`: a line in the recent-logs ring (the oldest lines fall out).
//! - `run.finished`: `status` from the event (default `succeeded`), `finishedAt = ts`.
//!   A run that ended stays ended: later events are recorded but change no run status.

use flowhub_protocol::run::{LogLevel, LogLine, StepState, StepStatus};
use flowhub_protocol::{RunEvent, RunEventKind, RunSnapshot, RunStatus, RunSummary};

/// A run that has no events yet.
pub fn new_snapshot(run_id: &str, flow_id: &str) -> RunSnapshot {
    RunSnapshot {
        id: run_id.to_owned(),
        flow_id: flow_id.to_owned(),
        status: RunStatus::Queued,
        started_at: None,
        finished_at: None,
        flow_heads: Vec::new(),
        last_seq: 0,
        steps: Vec::new(),
        logs: Vec::new(),
    }
}

/// The feed entry of a run.
pub fn summary(run: &RunSnapshot) -> RunSummary {
    RunSummary {
        id: run.id.clone(),
        flow_id: run.flow_id.clone(),
        status: run.status,
        started_at: run.started_at,
        finished_at: run.finished_at,
        last_seq: run.last_seq,
    }
}

/// Applies one event (the next in sequence) and keeps at most `max_logs` log lines.
/// Returns whether the run's summary status, start or end changed (what the per-flow
/// feed reports).
pub fn apply(run: &mut RunSnapshot, event: &RunEvent, max_logs: usize) -> bool {
    let before = (run.status, run.started_at, run.finished_at);
    let e = &event.event;
    run.last_seq = run.last_seq.max(event.seq);
    match e.kind {
        RunEventKind::RunStarted => {
            if run.status == RunStatus::Queued {
                run.status = RunStatus::Running;
            }
            if run.started_at.is_none() {
                run.started_at = Some(e.ts);
                if let Some(heads) = &e.flow_heads {
                    run.flow_heads = heads.clone();
                }
            }
        }
        RunEventKind::StepStarted
        | RunEventKind::StepSucceeded
        | RunEventKind::StepFailed
        | RunEventKind::StepRetrying => {
            if run.status == RunStatus::Queued {
                run.status = RunStatus::Running;
            }
            if let Some(node_id) = &e.node_id {
                apply_step(run, node_id, event);
            }
        }
        RunEventKind::Log => {
            if max_logs > 0 {
                if run.logs.len() >= max_logs {
                    let excess = run.logs.len() + 1 - max_logs;
                    run.logs.drain(..excess);
                }
                run.logs.push(LogLine {
                    seq: event.seq,
                    ts: e.ts,
                    level: e.level.unwrap_or(LogLevel::Info),
                    msg: e.message.clone().unwrap_or_default(),
                    node_id: e.node_id.clone(),
                });
            }
        }
        RunEventKind::RunFinished => {
            if !run.status.is_final() {
                run.status = e
                    .status
                    .filter(|s| s.is_final())
                    .unwrap_or(RunStatus::Succeeded);
                run.finished_at = Some(e.ts);
            }
        }
    }
    before != (run.status, run.started_at, run.finished_at)
}

fn apply_step(run: &mut RunSnapshot, node_id: &str, event: &RunEvent) {
    let e = &event.event;
    let index = match run.steps.iter().position(|s| s.node_id == node_id) {
        Some(i) => i,
        None => {
            run.steps.push(StepState {
                node_id: node_id.to_owned(),
                status: StepStatus::Running,
                attempt: 0,
                started_at: None,
                finished_at: None,
                duration_ms: None,
                error: None,
            });
            run.steps.len() - 1
        }
    };
    let step = &mut run.steps[index];
    let ended = |step: &mut StepState, status: StepStatus| {
        step.status = status;
        step.finished_at = Some(e.ts);
        step.duration_ms = e
            .duration_ms
            .or_else(|| step.started_at.map(|s| e.ts.saturating_sub(s)));
        if let Some(attempt) = e.attempt {
            step.attempt = attempt;
        }
        step.attempt = step.attempt.max(1);
    };
    match e.kind {
        RunEventKind::StepStarted => {
            step.attempt = match e.attempt {
                Some(a) => a,
                None if step.status == StepStatus::Retrying => step.attempt + 1,
                None => step.attempt.max(1),
            };
            step.status = StepStatus::Running;
            step.started_at = Some(e.ts);
            step.finished_at = None;
            step.duration_ms = None;
            step.error = None;
        }
        RunEventKind::StepSucceeded => {
            ended(step, StepStatus::Succeeded);
            step.error = None;
        }
        RunEventKind::StepFailed => {
            ended(step, StepStatus::Failed);
            step.error = e.error.clone();
        }
        RunEventKind::StepRetrying => {
            ended(step, StepStatus::Retrying);
            step.error = e.error.clone();
        }
        _ => {}
    }
}

/// The wire name of an event kind (`"step.started"`), as stored in `run_events.kind`.
pub fn kind_str(kind: RunEventKind) -> &'static str {
    match kind {
        RunEventKind::RunStarted => "run.started",
        RunEventKind::StepStarted => "step.started",
        RunEventKind::StepSucceeded => "step.succeeded",
        RunEventKind::StepFailed => "step.failed",
        RunEventKind::StepRetrying => "step.retrying",
        RunEventKind::Log => "log",
        RunEventKind::RunFinished => "run.finished",
    }
}

/// The wire name of a run status (`"running"`), as stored in `runs.status`.
pub fn status_str(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "queued",
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use flowhub_protocol::RunEventInput;

    use super::*;

    fn ev(seq: u64, kind: RunEventKind, node: Option<&str>, ts: u64) -> RunEvent {
        RunEvent {
            seq,
            event: RunEventInput {
                event_id: format!("e{seq}"),
                kind,
                flow_id: "f".into(),
                node_id: node.map(str::to_owned),
                ts,
                duration_ms: None,
                error: None,
                level: None,
                message: None,
                attempt: None,
                status: None,
                flow_heads: None,
            },
        }
    }

    #[test]
    fn steps_track_status_attempts_errors_and_durations() {
        let mut run = new_snapshot("r", "f");
        let mut started = ev(1, RunEventKind::RunStarted, None, 1000);
        started.event.flow_heads = Some(vec!["ab".repeat(32)]);
        assert!(apply(&mut run, &started, 10));
        assert_eq!(
            (run.status, run.started_at),
            (RunStatus::Running, Some(1000))
        );
        assert_eq!(run.flow_heads, vec!["ab".repeat(32)]);

        assert!(!apply(
            &mut run,
            &ev(2, RunEventKind::StepStarted, Some("a"), 1100),
            10
        ));
        let mut ok = ev(3, RunEventKind::StepSucceeded, Some("a"), 1350);
        ok.event.duration_ms = Some(240);
        apply(&mut run, &ok, 10);

        apply(
            &mut run,
            &ev(4, RunEventKind::StepStarted, Some("b"), 1400),
            10,
        );
        let mut retry = ev(5, RunEventKind::StepRetrying, Some("b"), 1500);
        retry.event.error = Some("timeout".into());
        apply(&mut run, &retry, 10);
        apply(
            &mut run,
            &ev(6, RunEventKind::StepStarted, Some("b"), 1600),
            10,
        );
        let mut failed = ev(7, RunEventKind::StepFailed, Some("b"), 1650);
        failed.event.error = Some("HTTP 500".into());
        apply(&mut run, &failed, 10);

        let mut fin = ev(8, RunEventKind::RunFinished, None, 1700);
        fin.event.status = Some(RunStatus::Failed);
        assert!(apply(&mut run, &fin, 10));

        assert_eq!(run.last_seq, 8);
        assert_eq!(
            (run.status, run.finished_at),
            (RunStatus::Failed, Some(1700))
        );
        let a = &run.steps[0];
        assert_eq!(
            (a.node_id.as_str(), a.status, a.attempt),
            ("a", StepStatus::Succeeded, 1)
        );
        assert_eq!(
            (a.started_at, a.finished_at, a.duration_ms),
            (Some(1100), Some(1350), Some(240))
        );
        let b = &run.steps[1];
        assert_eq!(
            (b.status, b.attempt, b.duration_ms),
            (StepStatus::Failed, 2, Some(50))
        );
        assert_eq!(b.error.as_deref(), Some("HTTP 500"));

        // An ended run stays ended.
        assert!(!apply(
            &mut run,
            &ev(9, RunEventKind::RunStarted, None, 1800),
            10
        ));
        assert_eq!(run.status, RunStatus::Failed);
    }

    #[test]
    fn logs_keep_the_most_recent_lines() {
        let mut run = new_snapshot("r", "f");
        for seq in 1..=5 {
            let mut log = ev(seq, RunEventKind::Log, None, seq * 10);
            log.event.message = Some(format!("line {seq}"));
            apply(&mut run, &log, 3);
        }
        let seqs: Vec<u64> = run.logs.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(run.logs[2].msg, "line 5");
        assert_eq!(run.logs[2].level, LogLevel::Info);
        assert_eq!(run.status, RunStatus::Queued);
    }

    #[test]
    fn wire_names_match_serde() {
        for kind in [
            RunEventKind::RunStarted,
            RunEventKind::StepStarted,
            RunEventKind::StepSucceeded,
            RunEventKind::StepFailed,
            RunEventKind::StepRetrying,
            RunEventKind::Log,
            RunEventKind::RunFinished,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind_str(kind));
        }
        for status in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status_str(status));
        }
    }
}
