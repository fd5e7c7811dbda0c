//! Server-Sent Events over the session core: the transport of `GET
//! /v1/runs/{id}/stream` and `GET /v1/flows/{id}/stream`.
//!
//! An SSE stream is a session ([`SessionActor`], [`TransportProfile::SSE`]) that makes
//! one request when it opens (`subscribe_run`, or `subscribe_flow` with `format: json`)
//! and never reads from the client again. The session does what it does for every
//! transport: the role check, the limits, the bounded queue and its slow-client policy,
//! expiry (the stream ends when the token expires; `EventSource` reconnects with a
//! fresh one), and leaving what it watches when the client goes away. Each endpoint
//! only turns the session's typed messages into SSE events.
//!
//! A refused request is an HTTP error, not a stream: [`SseSession::open`] waits for
//! the session to handle it and answers the session's `error` as a 4xx/5xx with the
//! JSON body of every other endpoint.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::http::StatusCode;
use flowhub_actors::identity::Identity;
use flowhub_actors::session::{
    session_span, Inbound, OutFrame, Outbound, OutboundRx, SessionActor, SessionArgs, SessionMsg,
    TransportProfile,
};
use flowhub_protocol::{ClientMessage, ErrorCode, RequestId, ServerMessage};
use ractor::{Actor, ActorRef};

use crate::error::AppError;
use crate::state::AppState;

/// The request id of the stream's one request, so its answer is told apart.
const OPEN_REQUEST: &str = "sse-open";

/// One SSE stream's session.
pub struct SseSession {
    session: ActorRef<SessionMsg>,
    rx: OutboundRx,
    /// What arrived while the request was handled, still to be streamed.
    pending: VecDeque<OutFrame>,
    /// Cancelled when the node drains: the stream ends.
    shutdown: tokio_util::sync::CancellationToken,
    /// Counts this stream among the connections draining waits for.
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
    /// This stream's place under the node's connection limit.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl SseSession {
    /// Opens a session for `identity`, makes `request` (its `id` is set here) and
    /// waits until the session handled it; a refusal is the matching HTTP error.
    pub async fn open(
        state: &AppState,
        identity: Identity,
        request: ClientMessage,
    ) -> Result<SseSession, AppError> {
        let permit = state.admit_connection()?;
        let session_id = format!("sse-{}", uuid::Uuid::new_v4().simple());
        let span = session_span(&session_id, &identity);
        let (out, rx) = Outbound::new(state.config.outbound_queue, state.metrics.clone());
        let args = SessionArgs {
            session_id,
            identity,
            out,
            registry: state.registry.clone(),
            limits: state.config.session.clone(),
            metrics: state.metrics.clone(),
            verifier: Arc::new(state.keys.clone()),
            runs: state.runs.clone(),
            span,
            profile: TransportProfile::SSE,
        };
        let (session, _) = Actor::spawn(None, SessionActor, args)
            .await
            .map_err(AppError::internal)?;
        let mut sse = SseSession {
            session,
            rx,
            pending: VecDeque::new(),
            shutdown: state.shutdown.clone(),
            _tracked: state.connection_tasks.token(),
            _permit: permit,
        };
        sse.request(request).await?;
        Ok(sse)
    }

    /// Makes one request of the session and waits until it is handled; what it
    /// queued meanwhile is kept for the stream, and an `error` answering the request
    /// is returned as the HTTP error.
    pub async fn request(&mut self, request: ClientMessage) -> Result<(), AppError> {
        let request = with_id(request, RequestId::Str(OPEN_REQUEST.into()));
        self.session
            .call(
                |reply| SessionMsg::Frame(Inbound::Request(request), reply),
                None,
            )
            .await
            .map_err(|_| AppError::internal("the session stopped"))?;
        while let Ok(frame) = self.rx.frames.try_recv() {
            if let OutFrame::Message(m) = &frame {
                match m.message() {
                    ServerMessage::Error {
                        id: Some(RequestId::Str(id)),
                        code,
                        message,
                        ..
                    } if id == OPEN_REQUEST => return Err(http_error(*code, message)),
                    // Nothing to stream: a session greets every client.
                    ServerMessage::Welcome { .. } => continue,
                    _ => {}
                }
            }
            self.pending.push_back(frame);
        }
        Ok(())
    }

    /// The next message for the stream; `None` ends it (the node drains, the session
    /// closed: token expired, too slow, the flow or run went away).
    pub async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            let frame = match self.pending.pop_front() {
                Some(frame) => frame,
                None => tokio::select! {
                    frame = self.rx.frames.recv() => frame?,
                    _ = self.rx.close.changed() => return None,
                    _ = self.shutdown.cancelled() => return None,
                },
            };
            if let OutFrame::Message(m) = frame {
                return Some(m.message().clone());
            }
        }
    }
}

impl Drop for SseSession {
    fn drop(&mut self) {
        // The client went away (or the stream ended): the session leaves what it
        // watches as it stops.
        self.session.stop(None);
    }
}

fn with_id(mut request: ClientMessage, new_id: RequestId) -> ClientMessage {
    match &mut request {
        ClientMessage::SubscribeFlow { id, .. } | ClientMessage::SubscribeRun { id, .. } => {
            *id = Some(new_id)
        }
        _ => {}
    }
    request
}

/// The HTTP status of a session's refusal.
fn http_error(code: ErrorCode, message: &str) -> AppError {
    let status = match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    AppError::new(status, code, message.to_owned())
}
