//! Checks on what engines send, each failure naming the offending field
//! (`events[3].node_id`) so an engine developer can fix the right thing.

use flowhub_protocol::{validate_flow_id, RunEventInput, RunEventKind};

/// Most events in one ingest batch.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Longest run, event and node id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest log message or error text, in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most heads in `flow_heads`.
pub const MAX_HEADS: usize = 64;
/// Largest timestamp or duration: 2^53 - 1, so JavaScript reads it exactly (and it fits
/// the store's BIGINT columns).
pub const MAX_TIME: u64 = (1 << 53) - 1;

/// An event that cannot be accepted: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidEvent {
    /// Path of the field, like `events[3].node_id`.
    pub field: String,
    pub message: String,
}

impl InvalidEvent {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidEvent {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Run ids share the flow id alphabet: `[A-Za-z0-9_.:-]{1,128}` (they appear in URLs
/// and store keys).
pub fn validate_run_id(run_id: &str) -> Result<(), InvalidEvent> {
    validate_flow_id(run_id)
        .map_err(|_| InvalidEvent::new("run_id", "expected 1 to 128 characters of [A-Za-z0-9_.:-]"))
}

/// Checks a batch: not empty, not too large, every event well-formed, all of one flow.
pub fn validate_batch(events: &[RunEventInput]) -> Result<(), InvalidEvent> {
    if events.is_empty() {
        return Err(InvalidEvent::new(
            "events",
            "at least one event is required",
        ));
    }
    if events.len() > MAX_BATCH_EVENTS {
        return Err(InvalidEvent::new(
            "events",
            format!(
                "{} events in one batch; at most {MAX_BATCH_EVENTS}",
                events.len()
            ),
        ));
    }
    let flow_id = &events[0].flow_id;
    for (i, e) in events.iter().enumerate() {
        validate_event(i, e)?;
        if &e.flow_id != flow_id {
            return Err(InvalidEvent::new(
                format!("events[{i}].flow_id"),
                format!("all events of a batch must belong to one flow (`{flow_id}`)"),
            ));
        }
    }
    Ok(())
}

fn validate_event(i: usize, e: &RunEventInput) -> Result<(), InvalidEvent> {
    let field = |name: &str| format!("events[{i}].{name}");
    check_id(&e.event_id).map_err(|m| InvalidEvent::new(field("event_id"), m))?;
    validate_flow_id(&e.flow_id).map_err(|_| {
        InvalidEvent::new(
            field("flow_id"),
            "expected 1 to 128 characters of [A-Za-z0-9_.:-]",
        )
    })?;
    match &e.node_id {
        None if e.kind.needs_node() => {
            return Err(InvalidEvent::new(
                field("node_id"),
                format!("required for {}", super::kind_str(e.kind)),
            ));
        }
        Some(node) => check_id(node).map_err(|m| InvalidEvent::new(field("node_id"), m))?,
        None => {}
    }
    if e.ts > MAX_TIME {
        return Err(InvalidEvent::new(
            field("ts"),
            "must be milliseconds since the Unix epoch, at most 2^53-1",
        ));
    }
    if e.duration_ms.is_some_and(|d| d > MAX_TIME) {
        return Err(InvalidEvent::new(field("duration_ms"), "at most 2^53-1"));
    }
    if e.attempt == Some(0) {
        return Err(InvalidEvent::new(field("attempt"), "attempts count from 1"));
    }
    match &e.message {
        None if e.kind == RunEventKind::Log => {
            return Err(InvalidEvent::new(field("message"), "required for log"));
        }
        Some(m) if m.len() > MAX_TEXT_LEN => {
            return Err(InvalidEvent::new(
                field("message"),
                format!("longer than {MAX_TEXT_LEN} bytes"),
            ));
        }
        _ => {}
    }
    if e.error.as_ref().is_some_and(|m| m.len() > MAX_TEXT_LEN) {
        return Err(InvalidEvent::new(
            field("error"),
            format!("longer than {MAX_TEXT_LEN} bytes"),
        ));
    }
    if let Some(status) = e.status {
        if e.kind == RunEventKind::RunFinished && !status.is_final() {
            return Err(InvalidEvent::new(
                field("status"),
                "must be succeeded, failed or cancelled",
            ));
        }
    }
    if let Some(heads) = &e.flow_heads {
        if heads.len() > MAX_HEADS {
            return Err(InvalidEvent::new(
                field("flow_heads"),
                format!("at most {MAX_HEADS} heads"),
            ));
        }
        for (j, h) in heads.iter().enumerate() {
            let hex = h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(InvalidEvent::new(
                    format!("events[{i}].flow_heads[{j}]"),
                    "expected a change hash: 64 lowercase hex characters",
                ));
            }
        }
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("longer than {MAX_ID_LEN} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use flowhub_protocol::RunStatus;

    use super::*;

    fn event(id: &str, kind: RunEventKind, node: Option<&str>) -> RunEventInput {
        RunEventInput {
            event_id: id.into(),
            kind,
            flow_id: "demo".into(),
            node_id: node.map(str::to_owned),
            ts: 1,
            duration_ms: None,
            error: None,
            level: None,
            message: None,
            attempt: None,
            status: None,
            flow_heads: None,
        }
    }

    #[test]
    fn a_good_batch_passes() {
        let mut log = event("3", RunEventKind::Log, None);
        log.message = Some("hello".into());
        let batch = vec![
            event("1", RunEventKind::RunStarted, None),
            event("2", RunEventKind::StepStarted, Some("n1")),
            log,
        ];
        assert_eq!(validate_batch(&batch), Ok(()));
    }

    #[test]
    fn failures_name_the_field() {
        let field = |batch: Vec<RunEventInput>| validate_batch(&batch).unwrap_err().field;
        let ok = || event("ok", RunEventKind::RunStarted, None);
        assert_eq!(field(vec![]), "events");
        assert_eq!(
            field(vec![
                ok(),
                ok(),
                ok(),
                event("x", RunEventKind::StepStarted, None)
            ]),
            "events[3].node_id"
        );
        assert_eq!(
            field(vec![event("", RunEventKind::RunStarted, None)]),
            "events[0].event_id"
        );
        assert_eq!(
            field(vec![event("l", RunEventKind::Log, None)]),
            "events[0].message"
        );
        let mut other_flow = ok();
        other_flow.flow_id = "other".into();
        assert_eq!(field(vec![ok(), other_flow]), "events[1].flow_id");
        let mut bad_status = event("f", RunEventKind::RunFinished, None);
        bad_status.status = Some(RunStatus::Running);
        assert_eq!(field(vec![bad_status]), "events[0].status");
        let mut bad_heads = ok();
        bad_heads.flow_heads = Some(vec!["a".repeat(64), "nothex".into()]);
        assert_eq!(field(vec![bad_heads]), "events[0].flow_heads[1]");
        let mut late = ok();
        late.ts = u64::MAX;
        assert_eq!(field(vec![late]), "events[0].ts");
        let err = validate_batch(&[event("x", RunEventKind::StepFailed, None)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "events[0].node_id: required for step.failed"
        );
    }

    #[test]
    fn run_ids_use_the_flow_id_alphabet() {
        assert!(validate_run_id("run-2024.01:abc_1").is_ok());
        assert!(validate_run_id("").is_err());
        assert!(validate_run_id("a/b").is_err());
    }
}
