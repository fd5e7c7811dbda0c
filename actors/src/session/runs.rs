//! Run subscriptions of a session (placeholder until the run actors land).

use flowhub_protocol::{ErrorCode, RequestId};

use super::actor::SessionState;

impl SessionState {
    pub(super) async fn subscribe_run(
        &mut self,
        id: Option<RequestId>,
        _run_id: String,
        _since_seq: Option<u64>,
    ) {
        self.fail(
            id,
            None,
            ErrorCode::NotFound,
            "runs are not available on this hub yet".into(),
        );
    }

    pub(super) async fn unsubscribe_run(&mut self, id: Option<RequestId>, _run_id: String) {
        self.fail(
            id,
            None,
            ErrorCode::NotFound,
            "not subscribed to this run".into(),
        );
    }

    pub(super) async fn subscribe_flow_runs(&mut self, id: Option<RequestId>, _flow_id: String) {
        self.fail(
            id,
            None,
            ErrorCode::NotFound,
            "runs are not available on this hub yet".into(),
        );
    }

    pub(super) async fn unsubscribe_flow_runs(&mut self, id: Option<RequestId>, _flow_id: String) {
        self.fail(
            id,
            None,
            ErrorCode::NotFound,
            "not subscribed to this flow's runs".into(),
        );
    }
}
