//! Sync frames straight from a session's socket reader to the flow actor.
//!
//! A sync frame for a flow the session is subscribed to needs nothing of the session
//! but its rate bucket and the flow actor's address: handing it to the session actor
//! first cost each edit two more thread wake-ups (reader → session → flow, and the
//! replies back). So the session publishes its subscriptions here, and the reader
//! calls the flow actor itself; everything else (a frame for a flow not subscribed, a
//! payload over the limit, a flow that refused or stopped) still goes to the session,
//! which answers exactly as before.
//!
//! Order is kept: the reader awaits every frame it hands on, to the session or to a
//! flow, before it reads the next, and the session changes its routes only while it
//! handles a frame (subscribe, unsubscribe, reauth) or a sync outcome the reader
//! reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flowhub_protocol::{ErrorCode, FrameKind, SyncFrame};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use tracing::Instrument;

use super::actor::Inbound;
use super::limiter::{rate_bucket, RateBucket, SessionLimits};
use crate::flow::FlowMsg;

/// One subscription as the reader sees it.
#[derive(Clone)]
pub(super) struct Route {
    pub(super) flow: ActorRef<FlowMsg>,
    /// Set once the session sent the flow a change: before it leaves, it waits for
    /// the flow to store and acknowledge them (`FlowMsg::Flush`).
    pub(super) edited: Arc<AtomicBool>,
}

/// The routes of one session, shared by the session actor and its reader.
#[derive(Clone)]
pub struct SyncRoutes {
    inner: Arc<RoutesInner>,
}

struct RoutesInner {
    session_id: String,
    max_payload: usize,
    bucket: RateBucket,
    routes: Mutex<HashMap<String, Route>>,
}

/// What became of a sync frame offered to [`SyncRoutes::forward`].
pub enum Forwarded {
    /// The flow actor handled it.
    Done,
    /// The session must handle this (the frame itself, or the flow's refusal).
    ToSession(Inbound),
}

impl SyncRoutes {
    pub fn new(session_id: &str, limits: &SessionLimits) -> SyncRoutes {
        SyncRoutes {
            inner: Arc::new(RoutesInner {
                session_id: session_id.to_owned(),
                max_payload: limits.max_frame_bytes,
                bucket: rate_bucket(limits),
                routes: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(super) fn bucket(&self) -> RateBucket {
        Arc::clone(&self.inner.bucket)
    }

    pub(super) fn insert(&self, flow_id: &str, route: Route) {
        if let Ok(mut routes) = self.inner.routes.lock() {
            routes.insert(flow_id.to_owned(), route);
        }
    }

    pub(super) fn remove(&self, flow_id: &str) -> Option<Route> {
        self.inner.routes.lock().ok()?.remove(flow_id)
    }

    pub(super) fn get(&self, flow_id: &str) -> Option<Route> {
        self.inner.routes.lock().ok()?.get(flow_id).cloned()
    }

    pub(super) fn len(&self) -> usize {
        self.inner.routes.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub(super) fn flow_ids(&self) -> Vec<String> {
        match self.inner.routes.lock() {
            Ok(routes) => routes.keys().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    pub(super) fn drain(&self) -> Vec<(String, Route)> {
        match self.inner.routes.lock() {
            Ok(mut routes) => routes.drain().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Hands `frame` to its flow actor if the session is subscribed and the payload
    /// is within the limit, paced by the session's rate bucket (sync is slowed down,
    /// never refused); otherwise, or when the flow refused it, says what the session
    /// must handle.
    pub async fn forward(&self, frame: SyncFrame) -> Forwarded {
        let inner = &self.inner;
        let route = match self.get(&frame.flow_id) {
            Some(route) if frame.payload.len() <= inner.max_payload => route,
            _ => return Forwarded::ToSession(Inbound::Sync(frame)),
        };
        inner.bucket.until_ready().await;
        route.edited.store(true, Ordering::Relaxed);
        let session_id = inner.session_id.clone();
        let flow_id = frame.flow_id;
        let payload = frame.payload;
        // Until the flow actor handled the frame: apply, store append, ack, fan-out.
        let span = tracing::trace_span!(
            target: crate::EDIT_PATH_TARGET,
            "edit.frame",
            flow_id = %flow_id,
            session_id = %session_id,
            bytes = payload.len(),
        );
        let result = route
            .flow
            .call(
                |reply| match frame.kind {
                    FrameKind::FlowSync => FlowMsg::Sync {
                        session_id,
                        payload,
                        reply,
                    },
                    FrameKind::FlowChanges => FlowMsg::Changes {
                        session_id,
                        payload,
                        reply,
                    },
                },
                None,
            )
            .instrument(span)
            .await;
        match result {
            Ok(CallResult::Success(true)) => Forwarded::Done,
            // Access was revoked while subscribed.
            Ok(CallResult::Success(false)) => Forwarded::ToSession(Inbound::FlowEnded {
                flow_id,
                code: ErrorCode::Forbidden,
            }),
            // The flow actor stopped (a store failure).
            _ => Forwarded::ToSession(Inbound::FlowEnded {
                flow_id,
                code: ErrorCode::Internal,
            }),
        }
    }
}
