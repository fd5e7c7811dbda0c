//! Running a command: build the context, run the scenario, assemble the
//! [`Report`], print it and write the requested files.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::cli::{Command, Common};
use crate::error::{Error, Result};
use crate::machine::{load_average, process_cpu_seconds, Machine};
use crate::report::{write_file, Report};
use crate::scenario::{cluster, edit, idle, mixed, presence, watch, Ctx, Outcome};
use crate::{baseline, html, proxy};

/// How a command ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
}

/// Runs a command to the end: the report on stdout, `--out` and `--html` written.
pub async fn execute(command: &Command) -> Result<Verdict> {
    match command {
        Command::Proxy(args) => {
            proxy::serve(args).await?;
            return Ok(Verdict::Pass);
        }
        Command::BaselineServer(args) => {
            baseline::serve_child(&args.run_id, args.run_for).await?;
            return Ok(Verdict::Pass);
        }
        _ => {}
    }
    let report = run_report(command).await?;
    print!("{}", report.render_text());
    if let Some(common) = command.common() {
        if let Some(path) = &common.out {
            report.write_json(path)?;
            println!("result: {}", path.display());
        }
        if let Some(path) = &common.html {
            write_file(path, &html::render(&report)?)?;
            println!("report: {}", path.display());
        }
    }
    Ok(if report.passed {
        Verdict::Pass
    } else {
        Verdict::Fail
    })
}

/// Runs a scenario and returns its report (nothing printed or written).
pub async fn run_report(command: &Command) -> Result<Report> {
    let Some(common) = command.common() else {
        return Err(Error::usage(format!(
            "`{}` produces no report",
            command.name()
        )));
    };
    let ctx = Arc::new(Ctx::from_common(common)?);
    let started_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let t0 = Instant::now();
    let machine = Machine::detect();
    let cpu0 = process_cpu_seconds();
    let outcome: Outcome = match command {
        Command::Edit { edit: args, .. } => edit::run(ctx.clone(), args).await?,
        Command::Presence { presence: args, .. } => presence::run(ctx.clone(), args).await?,
        Command::Idle { idle: args, .. } => idle::run(ctx.clone(), args).await?,
        Command::Watch { watch: args, .. } => watch::run(ctx.clone(), args).await?,
        Command::Mixed {
            edit: e,
            presence: p,
            watch: w,
            ..
        } => mixed::run(ctx.clone(), e, p, w).await?,
        Command::Cluster { cluster: args, .. } => cluster::run(ctx.clone(), args).await?,
        Command::Proxy(_) | Command::BaselineServer(_) => unreachable!("no common options"),
    };
    let passed = outcome.checks.iter().all(|c| c.passed);
    Ok(Report {
        name: report_name(command, common),
        scenario: command.name().to_owned(),
        started_at_unix_ms,
        wall_seconds: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        machine,
        load_average_after: load_average(),
        harness_cpu_seconds: ((process_cpu_seconds() - cpu0) * 10.0).round() / 10.0,
        targets: ctx.targets.all().to_vec(),
        parameters: parameters(command, common),
        sections: outcome.sections,
        checks: outcome.checks,
        passed,
    })
}

fn report_name(command: &Command, common: &Common) -> String {
    if let Some(name) = &common.name {
        return name.clone();
    }
    common
        .out
        .as_ref()
        .or(common.html.as_ref())
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| command.name().to_owned())
}

fn parameters(command: &Command, common: &Common) -> serde_json::Value {
    let mut p = json!({
        "duration_s": common.duration.as_secs_f64(),
        "ramp_up_s": common.ramp_up.as_secs_f64(),
        "settle_timeout_s": common.settle_timeout.as_secs_f64(),
        "source_addrs": common.source_addrs,
    });
    let extra = match command {
        Command::Edit { edit, .. } => json!({
            "editors": edit.editors, "flows": edit.flows, "edit_rate": edit.edit_rate,
        }),
        Command::Presence { presence, .. } => json!({
            "sessions": presence.sessions, "presence_flows": presence.presence_flows,
            "presence_rate": presence.presence_rate,
        }),
        Command::Idle { idle, .. } => json!({
            "sessions": idle.sessions, "subscribe_flows": idle.subscribe_flows,
            "connect_concurrency": idle.connect_concurrency,
        }),
        Command::Watch { watch, .. } => json!({
            "watchers": watch.watchers, "event_rate": watch.event_rate,
            "batch": watch.batch, "baseline": watch.baseline,
        }),
        Command::Mixed {
            edit,
            presence,
            watch,
            ..
        } => json!({
            "editors": edit.editors, "flows": edit.flows, "edit_rate": edit.edit_rate,
            "sessions": presence.sessions, "presence_flows": presence.presence_flows,
            "presence_rate": presence.presence_rate,
            "watchers": watch.watchers, "event_rate": watch.event_rate,
            "batch": watch.batch, "baseline": watch.baseline,
        }),
        Command::Cluster { cluster, .. } => json!({
            "flows": cluster.flows, "sessions_per_flow": cluster.sessions_per_flow,
            "editors": cluster.editors, "edit_rate": cluster.edit_rate,
            "idle_duration_s": cluster.idle_duration.as_secs_f64(),
            "redis_servers": cluster.redis.len(),
            "postgres_statistics": cluster.database_url.is_some(),
        }),
        Command::Proxy(_) | Command::BaselineServer(_) => json!({}),
    };
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    p
}
