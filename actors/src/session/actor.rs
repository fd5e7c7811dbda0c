//! The session actor: the core of one authenticated connection, whatever its
//! transport.
//!
//! A transport (the hub's `/v1/ws`, `/v1/automerge-repo` and SSE run streams) is a
//! codec around this actor: it decodes each frame into an [`Inbound`] and hands it
//! over with a `call`, so a client that floods is slowed to the pace at which its
//! frames are handled instead of growing a mailbox; and it encodes what the session's
//! bounded [`Outbound`] queue carries ([`crate::outbound::OutFrame`], typed) in its
//! own wire format. Everything else lives here, once: identity, subscriptions and
//! their role checks, the limits (rate, size, bad input), expiry and reauth, and the
//! flush of pending acks before a close. What differs per transport is stated in its
//! [`TransportProfile`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flowhub_crdt::ChangeHash;
use flowhub_protocol::{
    close, validate_flow_id, ClientMessage, ErrorCode, FlowFormat, FrameKind, Limits, RequestId,
    ServerMessage, SyncFrame, MAX_PENDING_HASHES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, Instrument};

use super::inbound::Inbound;
use super::limiter::SessionLimiter;
use super::limiter::SessionLimits;
use crate::flow::{FlowMsg, FlowRegistry, OnInvalid};
use crate::identity::FlowAccess;
use crate::identity::{Identity, TokenVerifier};
use crate::metrics::{Metrics, Transport};
use crate::outbound::{OutFrame, Outbound};
use crate::run::RunMsg;
use crate::run::RunRegistry;

/// Behaviour of a session actor (the state is [`SessionState`]).
pub struct SessionActor;

/// What a session watches of runs (`session/runs.rs` handles the messages).
#[derive(Default)]
pub struct RunSubscriptions {
    /// Run id -> the actor that serves it (at subscribe time).
    pub(super) runs: HashMap<String, ActorRef<RunMsg>>,
    /// Flows whose runs feed this session receives.
    pub(super) flows: HashSet<String>,
}

pub struct SessionArgs {
    pub session_id: String,
    pub identity: Identity,
    pub out: Outbound,
    pub registry: FlowRegistry,
    pub limits: SessionLimits,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<dyn TokenVerifier>,
    /// Run actors (`subscribe_run`, `subscribe_flow_runs`).
    pub runs: RunRegistry,
    /// The session's span (`session_id`, `user_id`), shared with the socket tasks
    /// serving it: one span per connection, not one per task (see [`session_span`]).
    pub span: tracing::Span,
    /// What the session's transport needs of it.
    pub profile: TransportProfile,
}

/// What differs between transports, beyond their wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportProfile {
    /// Counted under this transport in the metrics.
    pub transport: Transport,
    /// A sync message for a flow the session has not subscribed to subscribes it
    /// (automerge-repo has no subscribe message: a `Repo` opens a document by syncing
    /// it). A flow that cannot be opened is told with `OutFrame::Unavailable`, and a
    /// subscription the hub ended is joined again by the next sync message.
    pub join_on_sync: bool,
    /// What the flow does with a schema-breaking change from this session.
    pub on_invalid: OnInvalid,
}

impl TransportProfile {
    /// flowhub's own protocol: explicit subscriptions; a schema-breaking change is
    /// refused and the client rolls back.
    pub const NATIVE: TransportProfile = TransportProfile {
        transport: Transport::Ws,
        join_on_sync: false,
        on_invalid: OnInvalid::Refuse,
    };
    /// A stock automerge-repo peer: it cannot roll back, so its schema-breaking
    /// changes are repaired, never refused (docs/ARCHITECTURE.md, "Refusal or repair").
    pub const AUTOMERGE_REPO: TransportProfile = TransportProfile {
        transport: Transport::AutomergeRepo,
        join_on_sync: true,
        on_invalid: OnInvalid::Repair,
    };
    /// A Server-Sent Events stream: it only watches (runs), never edits.
    pub const SSE: TransportProfile = TransportProfile {
        transport: Transport::Sse,
        join_on_sync: false,
        on_invalid: OnInvalid::Refuse,
    };
}

/// The span for one session; the socket side creates it and passes it in
/// [`SessionArgs::span`].
pub fn session_span(session_id: &str, identity: &Identity) -> tracing::Span {
    tracing::info_span!("session", session_id = %session_id, user_id = %identity.user_id)
}

pub enum SessionMsg {
    /// One frame from the transport, decoded; the reply says it was handled.
    Frame(Inbound, RpcReplyPort<()>),
    /// Closes the session if its token has expired by now.
    CheckExpiry,
}

/// How a flow is joined (see [`SessionState::join_flow`]).
struct JoinOptions {
    id: Option<RequestId>,
    pending: Vec<ChangeHash>,
    stream: bool,
    /// `Some(since_heads)`: the flow as JSON and patches (`format: json`).
    json: Option<Vec<String>>,
    /// The flow opens the sync exchange (see `FlowMsg::Join::greet`).
    greet: bool,
}

struct Subscription {
    flow: ActorRef<FlowMsg>,
    /// The session sent changes: before it closes, it waits until the flow stored and
    /// acknowledged them (the flow actor stores beside its mailbox).
    edited: bool,
}

pub struct SessionState {
    pub(super) session_id: String,
    pub(super) identity: Identity,
    pub(super) out: Outbound,
    pub(super) registry: FlowRegistry,
    pub(super) limits: SessionLimits,
    pub(super) runs: RunRegistry,
    /// Runs and runs feeds this session watches (see `runs.rs`).
    pub(super) run_subs: RunSubscriptions,
    metrics: Arc<Metrics>,
    subscriptions: HashMap<String, Subscription>,
    /// Flows whose subscription the hub ended (access revoked, the flow actor
    /// stopped), with the code to answer frames the client sent before it heard: such
    /// frames are not the client's fault and never count toward the abuse limit.
    ended: HashMap<String, ErrorCode>,
    limiter: SessionLimiter,
    verifier: Arc<dyn TokenVerifier>,
    span: tracing::Span,
    profile: TransportProfile,
    /// The pending expiry check (replaced on reauth).
    expiry_check: Option<ExpiryCheck>,
}

/// A scheduled `CheckExpiry`, cancelled when dropped: the timer task holds a
/// reference to the session actor (its ports and cell, kilobytes) until it fires, up
/// to an hour later, so a session that closed or renewed its token must not leave it
/// running. Without this, every reconnect kept the closed session's actor alive until
/// its old token's expiry.
struct ExpiryCheck(ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<SessionMsg>>>);

impl Drop for ExpiryCheck {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let span = args.span.clone();
        let limiter = SessionLimiter::new(&args.limits);
        let expiry_check = schedule_expiry_check(&myself, args.identity.expires_at);
        let state = SessionState {
            expiry_check,
            limiter,
            verifier: args.verifier,
            session_id: args.session_id,
            identity: args.identity,
            out: args.out,
            registry: args.registry,
            limits: args.limits,
            runs: args.runs,
            run_subs: RunSubscriptions::default(),
            metrics: args.metrics,
            subscriptions: HashMap::new(),
            ended: HashMap::new(),
            span,
            profile: args.profile,
        };
        state.metrics.session_opened(state.profile.transport);
        state.out.send_control(state.welcome(None));
        state.span.in_scope(|| info!("session opened"));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        for (_, sub) in state.subscriptions.drain() {
            if sub.edited {
                // The acks of edits still on their way to the store go out before the
                // connection closes (a draining node acknowledges what it stored).
                let _ = sub
                    .flow
                    .call(FlowMsg::Flush, Some(std::time::Duration::from_secs(5)))
                    .await;
            }
            let _ = sub.flow.cast(FlowMsg::Leave {
                session_id: state.session_id.clone(),
            });
        }
        state.leave_runs();
        state.metrics.session_closed(state.profile.transport);
        state.span.in_scope(|| info!("session closed"));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        Metrics::inc(&state.metrics.frames_in);
        let span = state.span.clone();
        // Boxed: ractor keeps one processing-loop future per actor for the actor's
        // whole life, sized for the largest handler state. Inline, this handler made
        // that about 5 KiB for every idle session; boxed, the memory is taken only
        // while a frame is being handled.
        Box::pin(
            async {
                match msg {
                    SessionMsg::Frame(inbound, reply) => {
                        state.on_frame(inbound, &myself).await;
                        let _ = reply.send(());
                    }
                    SessionMsg::CheckExpiry => {
                        let expired = state
                            .identity
                            .expires_at
                            .is_some_and(|exp| exp <= now_secs());
                        if expired {
                            info!("token expired; closing");
                            state.out.send_control(ServerMessage::error(
                                ErrorCode::Unauthorized,
                                "token expired",
                            ));
                            state.out.close(close::TOKEN_EXPIRED, "token expired");
                        } else {
                            state.expiry_check =
                                schedule_expiry_check(&myself, state.identity.expires_at);
                        }
                    }
                }
            }
            .instrument(span),
        )
        .await;
        Ok(())
    }
}

impl SessionState {
    fn welcome(&self, id: Option<RequestId>) -> ServerMessage {
        ServerMessage::Welcome {
            id,
            protocol: PROTOCOL_VERSION,
            session_id: self.session_id.clone(),
            user_id: self.identity.user_id.clone(),
            name: self.identity.name.clone(),
            node_id: self.registry.deps().node_id.clone(),
            limits: Limits {
                max_frame_bytes: self.limits.max_frame_bytes,
                max_subscriptions: self.limits.max_subscriptions,
            },
        }
    }

    /// Sends a typed error. The client's own bad input counts toward the abuse limit;
    /// `internal` (the hub's failure, retryable) never does.
    pub(super) fn fail(
        &mut self,
        id: Option<RequestId>,
        flow_id: Option<&str>,
        code: ErrorCode,
        message: String,
    ) {
        self.tell(id, flow_id, code, message);
        self.limiter.count_refusal(code, &self.out);
    }

    /// Sends a typed error without counting it toward the abuse limit.
    fn tell(&self, id: Option<RequestId>, flow_id: Option<&str>, code: ErrorCode, message: String) {
        debug!(%code, message, "request refused");
        let mut err = ServerMessage::error(code, message).with_id(id);
        if let Some(flow) = flow_id {
            err = err.with_flow(flow);
        }
        self.out.send_control(err);
    }

    /// The hub ended this session's subscription to `flow_id`: tells the client, and
    /// answers its frames already in flight with the same code, uncounted.
    fn end_subscription(&mut self, flow_id: &str, code: ErrorCode, message: &str) {
        self.subscriptions.remove(flow_id);
        // Bounded: each entry needs a subscription the hub ended first.
        if self.ended.len() >= 4 * self.limits.max_subscriptions.max(16) {
            self.ended.clear();
        }
        self.ended.insert(flow_id.to_owned(), code);
        self.tell(None, Some(flow_id), code, message.into());
    }

    async fn on_frame(&mut self, inbound: Inbound, myself: &ActorRef<SessionMsg>) {
        match inbound {
            Inbound::Request(msg) => self.on_request(msg, myself).await,
            Inbound::Sync(frame) => self.on_sync(frame).await,
            Inbound::Invalid {
                id,
                flow_id,
                code,
                message,
            } => self.fail(id, flow_id.as_deref(), code, message),
            Inbound::Oversize(size) => {
                let max = self.limits.max_frame_bytes;
                self.fail(
                    None,
                    None,
                    ErrorCode::TooLarge,
                    format!("frame of {size} bytes exceeds the limit of {max}"),
                );
            }
            Inbound::Ignored => {
                if let Err(message) = self.limiter.check() {
                    self.fail(None, None, ErrorCode::RateLimited, message);
                }
            }
        }
    }

    async fn on_request(&mut self, msg: ClientMessage, myself: &ActorRef<SessionMsg>) {
        if !matches!(msg, ClientMessage::Presence { .. }) {
            if let Err(message) = self.limiter.check() {
                return self.fail(msg.id().cloned(), None, ErrorCode::RateLimited, message);
            }
        }
        match msg {
            ClientMessage::Hello { id, protocol, .. } => {
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) {
                    self.out.send_control(self.welcome(id));
                } else {
                    self.fail(
                        id,
                        None,
                        ErrorCode::UnsupportedVersion,
                        format!("protocol {protocol} unsupported; this hub speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"),
                    );
                    self.out
                        .close(close::UNSUPPORTED_VERSION, "unsupported protocol version");
                }
            }
            ClientMessage::SubscribeFlow {
                id,
                flow_id,
                pending,
                stream,
                format,
                since_heads,
            } => {
                let json = (format == FlowFormat::Json).then_some(since_heads);
                self.subscribe(id, flow_id, pending, stream, json).await
            }
            ClientMessage::UnsubscribeFlow { id, flow_id } => {
                if let Some(sub) = self.subscriptions.remove(&flow_id) {
                    if sub.edited {
                        // Its edits' acks before the unsubscribe's.
                        let _ = sub
                            .flow
                            .call(FlowMsg::Flush, Some(std::time::Duration::from_secs(5)))
                            .await;
                    }
                    let _ = sub.flow.cast(FlowMsg::Leave {
                        session_id: self.session_id.clone(),
                    });
                    self.out.send_control(ServerMessage::Ack {
                        id,
                        flow_id: Some(flow_id),
                        changes: vec![],
                    });
                } else {
                    self.fail(
                        id,
                        Some(&flow_id),
                        ErrorCode::NotFound,
                        "not subscribed to this flow".into(),
                    );
                }
            }
            ClientMessage::Ping { id } => {
                self.out.send_control(ServerMessage::Pong { id });
            }
            ClientMessage::Presence {
                flow_id,
                cursor,
                selection,
                color,
            } => self.presence(flow_id, cursor, selection, color).await,
            ClientMessage::SubscribeRun {
                id,
                run_id,
                since_seq,
            } => self.subscribe_run(id, run_id, since_seq).await,
            ClientMessage::UnsubscribeRun { id, run_id } => self.unsubscribe_run(id, run_id).await,
            ClientMessage::SubscribeFlowRuns { id, flow_id } => {
                self.subscribe_flow_runs(id, flow_id).await
            }
            ClientMessage::UnsubscribeFlowRuns { id, flow_id } => {
                self.unsubscribe_flow_runs(id, flow_id).await
            }
            ClientMessage::Reauth { id, token } => self.reauth(id, token, myself).await,
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<RequestId>,
        flow_id: String,
        pending: Vec<String>,
        stream: bool,
        // `Some(since_heads)`: the flow as JSON and patches (`format: json`).
        json: Option<Vec<String>>,
    ) {
        if let Err(e) = validate_flow_id(&flow_id) {
            return self.fail(id, None, e.code(), e.to_string());
        }
        if pending.len() > MAX_PENDING_HASHES {
            return self.fail(
                id,
                Some(&flow_id),
                ErrorCode::TooLarge,
                format!("pending: more than {MAX_PENDING_HASHES} hashes"),
            );
        }
        // Parsed here, so the flow actor only ever sees valid hashes.
        let pending = match flowhub_crdt::parse_heads(&pending) {
            Ok(hashes) => hashes,
            Err(e) => {
                return self.fail(
                    id,
                    Some(&flow_id),
                    ErrorCode::BadRequest,
                    format!("pending: {e}"),
                )
            }
        };
        let options = JoinOptions {
            id: id.clone(),
            pending,
            stream,
            json,
            greet: true,
        };
        if let Err((code, message)) = self.join_flow(&flow_id, options).await {
            self.fail(id, Some(&flow_id), code, message);
        }
    }

    /// Joins the flow actor of `flow_id` if the session's role allows it, and records
    /// the subscription; on failure, the error to tell (nothing was sent yet).
    async fn join_flow(
        &mut self,
        flow_id: &str,
        options: JoinOptions,
    ) -> Result<(), (ErrorCode, String)> {
        let access = match self
            .identity
            .flow_access(&*self.registry.deps().store, flow_id)
            .await
        {
            Ok(access) => access,
            Err(e) => {
                tracing::warn!(flow_id, error = %e, "cannot read flow members");
                return Err((
                    ErrorCode::Internal,
                    "the store is unavailable; retry".into(),
                ));
            }
        };
        let token_role = access.token_role;
        let Some(role) = access.role else {
            return Err((ErrorCode::Forbidden, "no role on this flow".into()));
        };
        if !self.subscriptions.contains_key(flow_id)
            && self.subscriptions.len() >= self.limits.max_subscriptions
        {
            let max = self.limits.max_subscriptions;
            return Err((
                ErrorCode::TooLarge,
                format!("subscription limit of {max} reached"),
            ));
        }
        let JoinOptions {
            id,
            pending,
            stream,
            json,
            greet,
        } = options;
        // An actor may retire between lookup and join; the registry then spawns a
        // fresh one, so a second attempt succeeds.
        for attempt in 0..3 {
            let flow = match self.registry.get_or_spawn(flow_id).await {
                Ok(flow) => flow,
                Err(e) => {
                    tracing::warn!(flow_id, error = %e, "cannot open flow");
                    return Err((ErrorCode::Internal, "the flow could not be opened".into()));
                }
            };
            let joined = match &json {
                Some(since_heads) => {
                    flow.call(
                        |reply| FlowMsg::JoinJson {
                            session_id: self.session_id.clone(),
                            user_id: self.identity.user_id.clone(),
                            token_role,
                            role,
                            request_id: id.clone(),
                            since_heads: since_heads.clone(),
                            out: self.out.clone(),
                            reply,
                        },
                        None,
                    )
                    .await
                }
                None => {
                    flow.call(
                        |reply| FlowMsg::Join {
                            session_id: self.session_id.clone(),
                            user_id: self.identity.user_id.clone(),
                            name: self.identity.name.clone(),
                            token_role,
                            role,
                            out: self.out.clone(),
                            request_id: id.clone(),
                            pending: pending.clone(),
                            stream,
                            on_invalid: self.profile.on_invalid,
                            greet,
                            reply,
                        },
                        None,
                    )
                    .await
                }
            };
            if matches!(joined, Ok(ractor::rpc::CallResult::Success(()))) {
                debug!(flow_id, ?role, attempt, "subscribed");
                self.ended.remove(flow_id);
                self.subscriptions.insert(
                    flow_id.to_owned(),
                    Subscription {
                        flow,
                        edited: false,
                    },
                );
                return Ok(());
            }
        }
        Err((ErrorCode::Internal, "the flow could not be opened".into()))
    }

    async fn on_sync(&mut self, frame: SyncFrame) {
        // Sync frames are slowed down, never refused (see `SessionLimiter::until_ready`).
        self.limiter.until_ready().await;
        let max = self.limits.max_frame_bytes;
        if frame.payload.len() > max {
            let message = format!(
                "sync message of {} bytes exceeds the limit of {max}",
                frame.payload.len()
            );
            return self.fail(None, Some(&frame.flow_id), ErrorCode::TooLarge, message);
        }
        if self.profile.join_on_sync && !self.subscriptions.contains_key(&frame.flow_id) {
            let options = JoinOptions {
                id: None,
                pending: Vec::new(),
                stream: false,
                json: None,
                // The frame that joins is handed to the flow next; it opens the exchange.
                greet: false,
            };
            if let Err((code, message)) = self.join_flow(&frame.flow_id, options).await {
                debug!(flow_id = %frame.flow_id, %code, message, "flow unavailable");
                self.out.send_reliable(OutFrame::Unavailable {
                    flow_id: Arc::from(frame.flow_id.as_str()),
                    code,
                });
                return;
            }
        }
        let Some(sub) = self.subscriptions.get_mut(&frame.flow_id) else {
            if let Some(&code) = self.ended.get(&frame.flow_id) {
                let message = match code {
                    ErrorCode::Forbidden => "no access to this flow",
                    _ => "the flow was closed; subscribe again",
                };
                return self.tell(None, Some(&frame.flow_id), code, message.into());
            }
            return self.fail(
                None,
                Some(&frame.flow_id),
                ErrorCode::BadRequest,
                "sync frame for a flow not subscribed".into(),
            );
        };
        let session_id = self.session_id.clone();
        let payload = frame.payload;
        sub.edited = true;
        // Until the flow actor handled the frame: apply, store append, ack, fan-out.
        let span = tracing::trace_span!(
            target: crate::EDIT_PATH_TARGET,
            "edit.frame",
            flow_id = %frame.flow_id,
            session_id = %session_id,
            bytes = payload.len(),
        );
        let result = sub
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
        let ended = match result {
            Ok(ractor::rpc::CallResult::Success(true)) => return,
            // Access was revoked while subscribed.
            Ok(ractor::rpc::CallResult::Success(false)) => ErrorCode::Forbidden,
            // The flow actor died (store failure): drop the subscription so the client
            // can subscribe again, which reloads the flow from the store.
            _ => ErrorCode::Internal,
        };
        if self.profile.join_on_sync {
            // No subscribe to answer with: the next sync message joins afresh (and a
            // revoked peer hears that the flow is unavailable to it).
            self.subscriptions.remove(&frame.flow_id);
            if ended == ErrorCode::Forbidden {
                self.out.send_reliable(OutFrame::Unavailable {
                    flow_id: Arc::from(frame.flow_id.as_str()),
                    code: ended,
                });
            }
            return;
        }
        let message = match ended {
            ErrorCode::Forbidden => "no access to this flow",
            _ => "the flow was closed; subscribe again",
        };
        self.end_subscription(&frame.flow_id, ended, message);
    }
}

impl SessionState {
    async fn presence(
        &mut self,
        flow_id: String,
        cursor: Option<flowhub_protocol::Cursor>,
        selection: Option<Vec<String>>,
        color: Option<String>,
    ) {
        let Some(sub) = self.subscriptions.get(&flow_id) else {
            if self.profile.join_on_sync {
                // Presence may come before the first sync message opens the flow.
                return;
            }
            return self.fail(
                None,
                Some(&flow_id),
                ErrorCode::BadRequest,
                "presence for a flow not subscribed".into(),
            );
        };
        let _ = sub.flow.cast(FlowMsg::Presence {
            session_id: self.session_id.clone(),
            cursor,
            selection,
            color,
        });
    }

    /// Replaces the token of this open session. The user must stay the same; roles
    /// are re-evaluated on every subscribed flow at once.
    async fn reauth(
        &mut self,
        id: Option<RequestId>,
        token: String,
        myself: &ActorRef<SessionMsg>,
    ) {
        let identity = match self.verifier.verify(&token).await {
            Ok(identity) => identity,
            Err(e) => return self.fail(id, None, ErrorCode::Unauthorized, e),
        };
        if identity.user_id != self.identity.user_id {
            return self.fail(
                id,
                None,
                ErrorCode::Unauthorized,
                "reauth must keep the same user".into(),
            );
        }
        self.identity = identity;
        self.expiry_check = schedule_expiry_check(myself, self.identity.expires_at);
        let store = self.registry.deps().store.clone();
        let flows: Vec<String> = self.subscriptions.keys().cloned().collect();
        for flow_id in flows {
            // Without the membership override the effective role is unknown: leave
            // this flow's role as it is rather than guess (a guess from the token
            // alone could undo a revocation).
            let FlowAccess { token_role, role } = match self
                .identity
                .flow_access(&*store, &flow_id)
                .await
            {
                Ok(access) => access,
                Err(e) => {
                    tracing::warn!(flow_id, error = %e, "reauth: cannot read flow members; role unchanged");
                    continue;
                }
            };
            if let Some(sub) = self.subscriptions.get(&flow_id) {
                let _ = sub.flow.cast(FlowMsg::SetRole {
                    session_id: self.session_id.clone(),
                    token_role,
                    role,
                });
            }
            if role.is_none() {
                // The flow actor told the client; frames in flight get `forbidden`.
                self.subscriptions.remove(&flow_id);
                self.ended.insert(flow_id, ErrorCode::Forbidden);
            }
        }
        info!("token refreshed");
        self.out.send_control(ServerMessage::Ack {
            id,
            flow_id: None,
            changes: vec![],
        });
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Wakes the session when its token expires (or in an hour at most, to re-check).
fn schedule_expiry_check(
    myself: &ActorRef<SessionMsg>,
    expires_at: Option<u64>,
) -> Option<ExpiryCheck> {
    let exp = expires_at?;
    let secs = exp.saturating_sub(now_secs()).min(3600);
    Some(ExpiryCheck(myself.send_after(
        std::time::Duration::from_secs(secs) + std::time::Duration::from_millis(50),
        || SessionMsg::CheckExpiry,
    )))
}
