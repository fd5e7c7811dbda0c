//! The per-flow runs feed (`subscribe_flow_runs`): `flow_run` summaries pushed when a
//! run of the flow starts, changes status or finishes, for dashboards and phones.
//!
//! A summary is state, not an event: the newest summary of a run replaces older ones.
//! So when a subscriber's queue is full, its summaries wait in a small backlog (one
//! entry per run, the latest value, in first-change order) that a flusher task retries
//! every [`FLUSH_INTERVAL`]; nothing is lost and the actors publishing never wait. A
//! subscriber whose backlog grows past [`MAX_BACKLOG`] runs is beyond help and is
//! closed with 4003 (too slow), like any session that stops reading.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use flowhub_protocol::{close, RunSummary, ServerMessage};
use tracing::debug;

use crate::outbound::{Delivery, Outbound, SharedMessage};

/// How often backlogs are retried.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Distinct runs a subscriber may have waiting before it is closed as too slow.
pub const MAX_BACKLOG: usize = 1024;

/// Cheap to clone; clones share the subscribers.
#[derive(Clone, Default)]
pub struct FlowRunsFeed {
    inner: Arc<FeedInner>,
}

#[derive(Default)]
struct FeedInner {
    /// flow id -> subscriber id (a session id) -> subscriber.
    flows: DashMap<String, HashMap<String, Subscriber>>,
    /// Whether a flusher task is running.
    flushing: AtomicBool,
}

struct Subscriber {
    out: Outbound,
    /// Summaries that did not fit the queue, oldest first, one per run.
    backlog: Vec<RunSummary>,
}

impl FlowRunsFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a subscriber of `flow_id`'s runs.
    pub fn subscribe(&self, flow_id: &str, subscriber_id: &str, out: Outbound) {
        self.inner
            .flows
            .entry(flow_id.to_owned())
            .or_default()
            .insert(
                subscriber_id.to_owned(),
                Subscriber {
                    out,
                    backlog: Vec::new(),
                },
            );
    }

    /// Removes a subscriber; returns whether it was subscribed.
    pub fn unsubscribe(&self, flow_id: &str, subscriber_id: &str) -> bool {
        let removed = self
            .inner
            .flows
            .get_mut(flow_id)
            .is_some_and(|mut subs| subs.remove(subscriber_id).is_some());
        self.inner
            .flows
            .remove_if(flow_id, |_, subs| subs.is_empty());
        removed
    }

    /// Subscribers of `flow_id` (for tests and metrics).
    pub fn subscribers(&self, flow_id: &str) -> usize {
        self.inner.flows.get(flow_id).map_or(0, |s| s.len())
    }

    /// Pushes a run's summary to every subscriber of its flow. Never waits.
    pub fn publish(&self, summary: &RunSummary) {
        let Some(mut subs) = self.inner.flows.get_mut(&summary.flow_id) else {
            return;
        };
        let msg = ServerMessage::FlowRun {
            flow_id: summary.flow_id.clone(),
            run: summary.clone(),
        };
        // Encoded once, shared by every subscriber's queue.
        let text = SharedMessage::new(msg);
        let mut backlogged = false;
        subs.retain(|_, sub| {
            if !sub.backlog.is_empty() {
                // Keep the order: this summary goes after the waiting ones.
                backlogged = true;
                return push_backlog(sub, summary);
            }
            match sub.out.try_send_message(text.clone()) {
                Delivery::Queued => true,
                Delivery::Closed => false,
                Delivery::Full => {
                    backlogged = true;
                    push_backlog(sub, summary)
                }
            }
        });
        drop(subs);
        if backlogged {
            self.start_flusher();
        }
    }

    /// Retries every backlog; returns how many subscribers still have one.
    fn flush(inner: &FeedInner) -> usize {
        let mut waiting = 0;
        for mut entry in inner.flows.iter_mut() {
            let flow_id = entry.key().clone();
            entry.value_mut().retain(|_, sub| {
                let mut sent = 0;
                for summary in &sub.backlog {
                    let msg = ServerMessage::FlowRun {
                        flow_id: flow_id.clone(),
                        run: summary.clone(),
                    };
                    match sub.out.try_send_message(msg) {
                        Delivery::Queued => sent += 1,
                        Delivery::Full => break,
                        Delivery::Closed => return false,
                    }
                }
                sub.backlog.drain(..sent);
                if !sub.backlog.is_empty() {
                    waiting += 1;
                }
                true
            });
        }
        waiting
    }

    fn start_flusher(&self) {
        if self.inner.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.flushing.store(false, Ordering::Release);
            return;
        };
        // A weak reference: the task ends with the feed.
        let weak: Weak<FeedInner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                if FlowRunsFeed::flush(&inner) == 0 {
                    inner.flushing.store(false, Ordering::Release);
                    // A publish may have backlogged between the flush and the store.
                    if FlowRunsFeed::flush(&inner) == 0
                        || inner.flushing.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                }
            }
        });
    }
}

/// Records `summary` in the backlog (replacing the run's older summary); returns
/// whether the subscriber stays.
fn push_backlog(sub: &mut Subscriber, summary: &RunSummary) -> bool {
    match sub.backlog.iter_mut().find(|s| s.id == summary.id) {
        Some(older) => *older = summary.clone(),
        None => sub.backlog.push(summary.clone()),
    }
    if sub.backlog.len() > MAX_BACKLOG {
        debug!(flow_id = %summary.flow_id, "runs feed subscriber too slow; closing it");
        sub.out.close(
            close::TOO_SLOW,
            "outbound queue overflowed: the client is not reading",
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use flowhub_protocol::RunStatus;

    use super::*;
    use crate::metrics::Metrics;
    use crate::outbound::OutFrame;

    fn summary(id: &str, status: RunStatus) -> RunSummary {
        RunSummary {
            id: id.into(),
            flow_id: "f".into(),
            status,
            started_at: Some(1),
            finished_at: None,
            last_seq: 1,
        }
    }

    fn decode(frame: OutFrame) -> RunSummary {
        let OutFrame::Message(m) = frame else {
            panic!("binary frame")
        };
        match m.message().clone() {
            ServerMessage::FlowRun { run, .. } => run,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_queue_backlogs_latest_values_and_flushes_them_later() {
        let feed = FlowRunsFeed::new();
        let (out, mut rx) = Outbound::new(1, Arc::new(Metrics::default()));
        feed.subscribe("f", "s1", out);
        feed.publish(&summary("a", RunStatus::Running));
        // The queue is full: these wait, and b's second value replaces its first.
        feed.publish(&summary("b", RunStatus::Running));
        feed.publish(&summary("c", RunStatus::Running));
        feed.publish(&summary("b", RunStatus::Failed));
        feed.publish(&summary("other-flow", RunStatus::Running).clone_with_flow("g"));

        let mut got = Vec::new();
        while got.len() < 3 {
            let frame = tokio::time::timeout(Duration::from_secs(2), rx.frames.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(decode(frame));
        }
        let seen: Vec<(&str, RunStatus)> = got.iter().map(|s| (s.id.as_str(), s.status)).collect();
        assert_eq!(
            seen,
            vec![
                ("a", RunStatus::Running),
                ("b", RunStatus::Failed),
                ("c", RunStatus::Running)
            ]
        );
        assert!(feed.unsubscribe("f", "s1"));
        assert!(!feed.unsubscribe("f", "s1"));
        assert_eq!(feed.subscribers("f"), 0);
    }

    trait WithFlow {
        fn clone_with_flow(&self, flow: &str) -> RunSummary;
    }

    impl WithFlow for RunSummary {
        fn clone_with_flow(&self, flow: &str) -> RunSummary {
            RunSummary {
                flow_id: flow.into(),
                ..self.clone()
            }
        }
    }
}
