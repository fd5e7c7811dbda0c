//! Run subscriptions of a session: `subscribe_run` (watch one run: `run_state`, the
//! events after `since_seq`, then live events) and `subscribe_flow_runs` (the
//! `flow_run` feed of one flow).
//!
//! Reading a run needs a role on the run's flow, decided exactly as for
//! `subscribe_flow` (the token's role, overridden by a `flow_members` row). The run
//! actor does the sending; the session only remembers what it watches, so it can
//! leave everything when it stops.

use flowhub_protocol::{validate_flow_id, ErrorCode, RequestId, Role, ServerMessage};
use ractor::ActorRef;
use tracing::{debug, warn};

use super::actor::SessionState;
use crate::run::{validate_run_id, RunMsg, WatchOutcome, WatchRequest};

impl SessionState {
    pub(super) async fn subscribe_run(
        &mut self,
        id: Option<RequestId>,
        run_id: String,
        since_seq: Option<u64>,
    ) {
        if let Err(e) = validate_run_id(&run_id) {
            return self.fail(id, None, ErrorCode::BadRequest, e.to_string());
        }
        if !self.run_subs.runs.contains_key(&run_id)
            && self.run_subs.runs.len() >= self.limits.max_subscriptions
        {
            let max = self.limits.max_subscriptions;
            return self.fail(
                id,
                None,
                ErrorCode::TooLarge,
                format!("run subscription limit of {max} reached"),
            );
        }
        // The run's flow decides who may read it.
        let flow_id = match self.runs.info(&run_id).await {
            Ok(Some(info)) => info.flow_id,
            Ok(None) => {
                return self.fail(id, None, ErrorCode::NotFound, format!("no run `{run_id}`"))
            }
            Err(e) => {
                warn!(run_id, error = %e, "cannot open run");
                return self.fail(
                    id,
                    None,
                    ErrorCode::Internal,
                    "the run could not be opened; retry".into(),
                );
            }
        };
        match self.flow_role(&flow_id).await {
            _ if self.identity.service => {}
            Ok(Some(_)) => {}
            Ok(None) => {
                return self.fail(
                    id,
                    None,
                    ErrorCode::Forbidden,
                    "no role on this run's flow".into(),
                )
            }
            Err(()) => {
                return self.fail(
                    id,
                    None,
                    ErrorCode::Internal,
                    "the store is unavailable; retry".into(),
                )
            }
        }
        let request = WatchRequest {
            watcher_id: self.session_id.clone(),
            out: self.out.clone(),
            since_seq: since_seq.unwrap_or(0),
            request_id: id.clone(),
        };
        match self.runs.watch(&run_id, request, |f| f == flow_id).await {
            Ok(WatchOutcome::Watching(actor)) => {
                debug!(run_id, since_seq, "watching run");
                self.run_subs.runs.insert(run_id, actor);
            }
            Ok(WatchOutcome::NotFound) => {
                self.fail(id, None, ErrorCode::NotFound, format!("no run `{run_id}`"))
            }
            Ok(WatchOutcome::Forbidden) => self.fail(
                id,
                None,
                ErrorCode::Forbidden,
                "no role on this run's flow".into(),
            ),
            Err(e) => {
                warn!(run_id, error = %e, "cannot watch run");
                self.fail(
                    id,
                    None,
                    ErrorCode::Internal,
                    "the run could not be opened; retry".into(),
                )
            }
        }
    }

    pub(super) async fn unsubscribe_run(&mut self, id: Option<RequestId>, run_id: String) {
        if let Some(actor) = self.run_subs.runs.remove(&run_id) {
            self.unwatch(&run_id, &actor);
            self.out.send_control(ServerMessage::Ack {
                id,
                flow_id: None,
                changes: vec![],
            });
        } else {
            self.fail(
                id,
                None,
                ErrorCode::NotFound,
                "not subscribed to this run".into(),
            );
        }
    }

    pub(super) async fn subscribe_flow_runs(&mut self, id: Option<RequestId>, flow_id: String) {
        if let Err(e) = validate_flow_id(&flow_id) {
            return self.fail(id, None, e.code(), e.to_string());
        }
        match self.flow_role(&flow_id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return self.fail(
                    id,
                    Some(&flow_id),
                    ErrorCode::Forbidden,
                    "no role on this flow".into(),
                )
            }
            Err(()) => {
                return self.fail(
                    id,
                    Some(&flow_id),
                    ErrorCode::Internal,
                    "the store is unavailable; retry".into(),
                )
            }
        }
        if !self.run_subs.flows.contains(&flow_id)
            && self.run_subs.flows.len() >= self.limits.max_subscriptions
        {
            let max = self.limits.max_subscriptions;
            return self.fail(
                id,
                Some(&flow_id),
                ErrorCode::TooLarge,
                format!("subscription limit of {max} reached"),
            );
        }
        // Ack first: every `flow_run` after it is news to the subscriber.
        self.out.send_control(ServerMessage::Ack {
            id,
            flow_id: None,
            changes: vec![],
        });
        self.runs
            .feed()
            .subscribe(&flow_id, &self.session_id, self.out.clone());
        self.run_subs.flows.insert(flow_id);
    }

    pub(super) async fn unsubscribe_flow_runs(&mut self, id: Option<RequestId>, flow_id: String) {
        if self.run_subs.flows.remove(&flow_id) {
            self.runs.feed().unsubscribe(&flow_id, &self.session_id);
            self.out.send_control(ServerMessage::Ack {
                id,
                flow_id: None,
                changes: vec![],
            });
        } else {
            self.fail(
                id,
                Some(&flow_id),
                ErrorCode::NotFound,
                "not subscribed to this flow's runs".into(),
            );
        }
    }

    /// Leaves every run and runs feed (the session is stopping).
    pub(super) fn leave_runs(&mut self) {
        let runs: Vec<(String, ActorRef<RunMsg>)> = self.run_subs.runs.drain().collect();
        for (run_id, actor) in runs {
            self.unwatch(&run_id, &actor);
        }
        for flow_id in self.run_subs.flows.drain() {
            self.runs.feed().unsubscribe(&flow_id, &self.session_id);
        }
    }

    /// Stops watching a run, on the actor subscribed to and on the current one (a
    /// resubscribe after `resume_from` may have reached a fresh actor).
    fn unwatch(&self, run_id: &str, actor: &ActorRef<RunMsg>) {
        let _ = actor.cast(RunMsg::Unwatch {
            watcher_id: self.session_id.clone(),
        });
        if let Some(current) = self.runs.get(run_id) {
            if current.get_id() != actor.get_id() {
                let _ = current.cast(RunMsg::Unwatch {
                    watcher_id: self.session_id.clone(),
                });
            }
        }
    }

    /// The session's role on a flow, as `subscribe_flow` decides it; `Err` when the
    /// store cannot say.
    async fn flow_role(&self, flow_id: &str) -> Result<Option<Role>, ()> {
        self.identity
            .flow_access(&*self.registry.deps().store, flow_id)
            .await
            .map(|access| access.role)
            .map_err(|e| warn!(flow_id, error = %e, "cannot read flow members"))
    }
}
