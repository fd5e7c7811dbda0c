//! [`ClientError`]: everything a client call can fail with.

use flowhub_crdt::CrdtError;
use flowhub_protocol::ErrorCode;

/// Why a client call failed.
///
/// The variants that carry an [`ErrorCode`] ([`Server`](ClientError::Server) and
/// [`Rejected`](ClientError::Rejected)) come from the hub; [`ClientError::code`] returns it
/// whichever of the two it is.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection or the WebSocket upgrade failed (for a reason other than 401).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The hub refused the token (HTTP 401 at upgrade, or an `unauthorized` error or a
    /// 4001 close during the handshake).
    #[error("unauthorized: the hub refused the token")]
    Unauthorized,
    /// The connection is closed. `code` is the WebSocket close code the hub sent (1006
    /// when the connection was lost without a close frame).
    #[error("connection closed ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// A wait did not complete in time; the text names what was awaited.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// [`crate::FlowHandle::wait_acked`] ran out of time: the outcome is unknown, not
    /// a failure. The edit may already be stored (its ack lost with a connection);
    /// it stays pending, the sync keeps offering it to the hub, and after every
    /// (re)subscribe the hub acks it if it holds it. Wait again to learn the verdict.
    #[error("edit not acknowledged yet on flow `{flow_id}`: outcome unknown, still retrying")]
    AckUnknown { flow_id: String },
    /// The hub answered a request with an `error` frame (or an HTTP call with a typed
    /// JSON error body).
    #[error("hub error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The hub refused a sync frame while the awaited changes were pending: nothing was
    /// stored, and the changes were rolled back locally.
    #[error("edit rejected ({code}): {message}")]
    Rejected { code: ErrorCode, message: String },
    /// The hub sent something this client did not expect (a reply of the wrong type, a
    /// head that is not a change hash), or a request was malformed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The handle's flow was unsubscribed (by [`crate::FlowHandle::unsubscribe`]).
    #[error("flow `{flow_id}` is not subscribed")]
    NotSubscribed { flow_id: String },
    /// A local edit failed: it broke the flow schema or named a missing node.
    #[error(transparent)]
    Crdt(#[from] CrdtError),
    /// An HTTP call failed below the protocol level (connection refused, a non-JSON
    /// body, an unexpected status).
    #[error("http: {0}")]
    Http(String),
}

impl ClientError {
    /// The hub's error code for [`Server`](ClientError::Server) and
    /// [`Rejected`](ClientError::Rejected) (and `unauthorized` for
    /// [`Unauthorized`](ClientError::Unauthorized)).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Rejected { code, .. } => Some(*code),
            ClientError::Unauthorized => Some(ErrorCode::Unauthorized),
            _ => None,
        }
    }

    pub(crate) fn closed(info: Option<&(u16, String)>) -> Self {
        match info {
            Some((code, reason)) => ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            },
            None => ClientError::Closed {
                code: 1006,
                reason: "connection closed".into(),
            },
        }
    }
}
