//! `mixed`: the edit, presence and watch workloads at once on the same targets
//! (then, with `--baseline`, the watch fan-out alone against the baseline server).

use std::sync::Arc;

use super::{edit, presence, watch, Ctx, Outcome};
use crate::cli::{EditArgs, PresenceArgs, WatchArgs};
use crate::error::Result;

pub async fn run(
    ctx: Arc<Ctx>,
    edit_args: &EditArgs,
    presence_args: &PresenceArgs,
    watch_args: &WatchArgs,
) -> Result<Outcome> {
    edit::validate(edit_args)?;
    presence::validate(presence_args)?;
    watch::validate(watch_args)?;
    let (e, p, w) = tokio::join!(
        edit::run(ctx.clone(), edit_args),
        presence::run(ctx.clone(), presence_args),
        watch::run_hub(ctx.clone(), watch_args),
    );
    let mut outcome = e?;
    outcome.merge(p?);
    outcome.merge(w?);
    if watch_args.baseline {
        let base = watch::run_baseline(ctx, watch_args).await?;
        watch::compare(&mut outcome, base);
    }
    Ok(outcome)
}
