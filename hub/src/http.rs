//! Plain HTTP handlers.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use flowhub_actors::flow::FlowMsg;
use flowhub_actors::identity::Identity;
use flowhub_crdt::FlowDoc;
use serde::Deserialize;

use crate::auth::Claims;
use crate::error::AppError;
use crate::state::{AppState, Authenticated};

/// `GET /v1/flows/{id}`: the flow as JSON for anyone with a role on it. Served by the
/// open flow actor when there is one (it may hold changes newer than a reload would
/// give only for an instant), otherwise read from the store without opening the flow.
#[derive(Debug, Deserialize)]
pub struct FlowView {
    /// Comma-separated hex heads: the flow as it was then (a run's pinned heads).
    pub heads: Option<String>,
}

pub async fn get_flow(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Authenticated(claims): Authenticated,
    Query(view): Query<FlowView>,
) -> Result<Json<serde_json::Value>, AppError> {
    flowhub_protocol::validate_flow_id(&flow_id)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    if effective_role(&state, &claims, &flow_id).await?.is_none() {
        return Err(AppError::forbidden("no role on this flow"));
    }
    let at_heads = match view.heads.as_deref().filter(|h| !h.is_empty()) {
        Some(list) => {
            let hex: Vec<&str> = list.split(',').collect();
            Some(
                flowhub_crdt::parse_heads(&hex)
                    .map_err(|e| AppError::bad_request(format!("heads: {e}")))?,
            )
        }
        None => None,
    };
    if let (None, Some(actor)) = (&at_heads, state.registry.get(&flow_id)) {
        if let Ok(json) = ractor::call!(actor, FlowMsg::ToJson) {
            return Ok(Json(json));
        }
    }
    let stored = state
        .store
        .load_flow(&flow_id)
        .await
        .map_err(AppError::internal)?;
    if !stored.exists {
        return Err(AppError::not_found(format!("no flow `{flow_id}`")));
    }
    let changes: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
    let mut doc =
        FlowDoc::load_parts(stored.snapshot.as_deref(), &changes).map_err(AppError::internal)?;
    let mut json = match &at_heads {
        // Every acknowledged change is in the store, so any heads a run recorded are.
        Some(heads) => doc
            .to_json_at(heads)
            .map_err(|e| AppError::not_found(format!("heads: {e}")))?,
        None => doc.to_json(),
    };
    if let Some(obj) = json.as_object_mut() {
        obj.insert("id".into(), flow_id.into());
    }
    Ok(Json(json))
}

/// `GET /v1/nodes`: live hub nodes with their load (this node alone without Redis).
pub async fn nodes(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let nodes = match &state.membership {
        Some(m) => m.live_nodes().await.map_err(AppError::internal)?,
        None => vec![crate::membership::NodeInfo {
            node_id: state.node_id.clone(),
            addr: String::new(),
            connections: state.metrics.sessions_open.get(),
            open_flows: state.metrics.flows_open.get(),
            heartbeat_at: 0,
        }],
    };
    Ok(Json(serde_json::json!({ "nodes": nodes })))
}

/// The role a token has on a flow once `flow_members` overrides apply
/// ([`Identity::flow_access`](flowhub_actors::identity::Identity::flow_access), the
/// rule every transport uses).
pub async fn effective_role(
    state: &AppState,
    claims: &Claims,
    flow_id: &str,
) -> Result<Option<flowhub_protocol::Role>, AppError> {
    Identity::from(claims)
        .flow_access(&*state.store, flow_id)
        .await
        .map(|access| access.role)
        .map_err(AppError::internal)
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store and the bus answer and the node is not draining: 200
/// `{"status":"ready"}`, else 503 `{"status":"unavailable","reason":…}` with the reason
/// `draining`, `bus unreachable`, `store unreachable` or `store and bus unreachable`.
///
/// Always answers within about 500 ms: a load balancer probing a node whose Redis or
/// database hangs must get a quick "no", not a hung request it can only time out on.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    /// Each probe's budget. The probes run concurrently, so this bounds the answer too,
    /// with room to spare under the 500 ms promised above.
    const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(400);
    let unavailable = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "reason": reason})),
        )
    };
    if state.is_draining() {
        return unavailable("draining");
    }
    let bus_ok = async {
        match &state.redis {
            Some(redis) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, redis.ping()).await,
                Ok(Ok(()))
            ),
            None => true,
        }
    };
    let store_ok = async {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await,
            Ok(Ok(()))
        )
    };
    match tokio::join!(bus_ok, store_ok) {
        (true, true) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        (false, true) => unavailable("bus unreachable"),
        (true, false) => unavailable("store unreachable"),
        (false, false) => unavailable("store and bus unreachable"),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.hub_metrics.render(&state.metrics);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

#[derive(Debug, Deserialize)]
pub struct MemberBody {
    /// `owner`, `editor`, `viewer`, `revoked`, or `null` to remove the override.
    pub role: Option<String>,
}

/// `PUT /v1/flows/{id}/members/{user_id}`: sets a user's `flow_members` override
/// (owners and service tokens only). Open sessions of that user on this node get the
/// new role at once; a revoked editor's next edit is refused.
pub async fn put_member(
    State(state): State<AppState>,
    Path((flow_id, user_id)): Path<(String, String)>,
    Authenticated(claims): Authenticated,
    Json(body): Json<MemberBody>,
) -> Result<Json<serde_json::Value>, AppError> {
    use flowhub_actors::store::MemberAccess;
    flowhub_protocol::validate_flow_id(&flow_id)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    let is_owner =
        effective_role(&state, &claims, &flow_id).await? == Some(flowhub_protocol::Role::Owner);
    if !(claims.svc || is_owner) {
        return Err(AppError::forbidden(
            "only owners of the flow and service tokens manage members",
        ));
    }
    if user_id.is_empty() || user_id.len() > 256 {
        return Err(AppError::bad_request("user_id must be 1 to 256 bytes"));
    }
    let access = match body.role.as_deref() {
        None => None,
        Some(role) => Some(MemberAccess::parse(role).ok_or_else(|| {
            AppError::bad_request(format!(
                "role: `{role}` is not one of owner, editor, viewer, revoked"
            ))
        })?),
    };
    state
        .store
        .set_member_access(&flow_id, &user_id, access)
        .await
        .map_err(AppError::internal)?;
    if let Some(actor) = state.registry.get(&flow_id) {
        let _ = actor.cast(FlowMsg::MemberChanged {
            user_id: user_id.clone(),
            access,
        });
    }
    // Sessions of this user on other nodes change at once too (the bus is at most
    // once: a node that misses it applies the stored row on the next subscribe).
    let update = flowhub_actors::bus::MemberUpdate {
        user_id: user_id.clone(),
        access: access.map(|a| a.as_str().to_owned()),
    };
    if let Ok(json) = serde_json::to_vec(&update) {
        let msg = flowhub_actors::bus::FlowBusMessage::Member {
            origin: state.node_id.clone(),
            json,
        };
        let channel = flowhub_actors::bus::channel::flow(&flow_id);
        let deps = state.registry.deps();
        let _ = deps
            .bus
            .publish(&channel, msg.encode_as(deps.config.bus_format))
            .await;
    }
    Ok(Json(
        serde_json::json!({"flow_id": flow_id, "user_id": user_id, "role": access.map(MemberAccess::as_str)}),
    ))
}
