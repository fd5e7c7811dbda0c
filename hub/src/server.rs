//! Starting, running and draining one hub node.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use flowhub_actors::bus::{Bus, MemoryBus};
use flowhub_actors::flow::{FlowDeps, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::run::{MemoryRunStore, RunConfig, RunDeps, RunRegistry, RunStore};
use flowhub_actors::store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::auth::{AuthSetupError, JwtKeys, Verifier};
use crate::config::{resolve_secret, HubConfig};
use crate::membership::Membership;
use crate::metrics::HubMetrics;
use crate::redis_bus::RedisBus;
use crate::sql_store::SqlStore;
use crate::state::AppState;
use crate::{http, ws};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read or create the JWT secret: {0}")]
    Secret(std::io::Error),
    #[error("cannot set up token verification: {0}")]
    Auth(#[from] AuthSetupError),
    #[error("cannot open the store: {0}")]
    Store(#[from] flowhub_actors::store::StoreError),
    /// The database's schema is one this binary must not serve (newer than it knows, or
    /// migrated by a different build).
    #[error("refusing to start: {0}")]
    Schema(crate::sql_store::ConnectError),
    #[error("cannot connect to Redis: {0}")]
    Bus(#[from] flowhub_actors::bus::BusError),
    #[error(
        "refusing to start the demo's development endpoints on {0}: anyone who can reach \
         a non-loopback address would get an editor token. Listen on 127.0.0.1, or add \
         --demo-allow-remote (FLOWHUB_DEMO_ALLOW_REMOTE=1) if you really mean it"
    )]
    DemoRemote(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl From<crate::sql_store::ConnectError> for StartError {
    fn from(e: crate::sql_store::ConnectError) -> Self {
        match e {
            crate::sql_store::ConnectError::Store(e) => StartError::Store(e),
            refusal => StartError::Schema(refusal),
        }
    }
}

/// A running hub node.
pub struct Hub {
    addr: SocketAddr,
    server: JoinHandle<()>,
    state: AppState,
}

impl Hub {
    /// Opens the store, binds the listener (port 0 picks a free port) and serves.
    pub async fn start(config: HubConfig) -> Result<Hub, StartError> {
        check_demo(&config)?;
        let secret = resolve_secret(&config).map_err(StartError::Secret)?;
        if config.database_url.is_none() {
            std::fs::create_dir_all(&config.data_dir).map_err(StartError::Secret)?;
        }
        let sql = Arc::new(
            SqlStore::connect_with_pool(&config.database_url(), config.database_pool).await?,
        );
        let store: Arc<dyn Store> = crate::failpoint::wrap(sql.clone());
        let redis = match &config.redis_url {
            Some(url) => Some(RedisBus::connect(url).await?),
            None => None,
        };
        let bus: Arc<dyn Bus> = match &redis {
            Some(redis) => Arc::new(redis.clone()),
            None => Arc::new(MemoryBus::new()),
        };
        Self::start_with(config, JwtKeys::new(secret), store, Some(sql), bus, redis).await
    }

    /// Starts on given store and bus (tests run several hubs on one in-process bus).
    pub async fn start_with(
        mut config: HubConfig,
        keys: JwtKeys,
        store: Arc<dyn Store>,
        sql: Option<Arc<SqlStore>>,
        bus: Arc<dyn Bus>,
        redis: Option<RedisBus>,
    ) -> Result<Hub, StartError> {
        check_demo(&config)?;
        let keys = Verifier::new(&config, keys)?;
        tokio::spawn({
            let keys = keys.clone();
            async move { keys.prefetch().await }
        });
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let metrics = Arc::new(Metrics::default());
        let registry = FlowRegistry::new(Arc::new(FlowDeps {
            store: store.clone(),
            bus,
            node_id: node_id.clone(),
            metrics: metrics.clone(),
            config: config.flow.clone(),
        }));
        // Anti-entropy and membership versions from the store, independent of the bus.
        registry.spawn_store_watch(config.flow.store_watch_interval);
        // Runs live in the same database as flows; without one (tests), in memory.
        let run_store: Arc<dyn RunStore> = match &sql {
            Some(sql) => sql.clone(),
            None => Arc::new(MemoryRunStore::new()),
        };
        let runs = RunRegistry::new(Arc::new(RunDeps {
            store: run_store,
            flows: registry.clone(),
            metrics: metrics.clone(),
            config: RunConfig::default(),
        }));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        // From here on the config names the address actually bound (port 0 picked one):
        // the demo's Host check compares against it.
        config.listen = addr;
        // Bounded kernel send buffers: 10,000 clients that stopped reading must not
        // pin gigabytes in the kernel (autotuning grows each to several MB).
        let send_buffer = config.socket_send_buffer;
        let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
            // Nagle off: a change frame or an ack is a small write that must leave at
            // once. With Nagle, a second small frame waits for the ACK of the first,
            // which the client's TCP delays: 1.5 % of edits took 25-30 ms at 100
            // edits/s once streaming removed the request/response rhythm that hid it.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot disable Nagle's algorithm");
            }
            if send_buffer > 0 {
                if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer) {
                    tracing::debug!(error = %e, "cannot bound the socket send buffer");
                }
            }
        });
        let shutdown = CancellationToken::new();
        let membership = redis.clone().map(|bus| Membership {
            bus,
            node_id: node_id.clone(),
            addr: format!("ws://{addr}"),
            interval: config.heartbeat_interval,
            ttl: config.heartbeat_ttl,
        });
        if let Some(m) = &membership {
            tokio::spawn(
                m.clone()
                    .run(registry.clone(), metrics.clone(), shutdown.clone()),
            );
        }
        let max_connections = config.max_connections.max(1);
        let hub_metrics = Arc::new(HubMetrics::new(runs.clone(), redis.as_ref(), sql.clone()));
        let state = AppState {
            redis,
            membership,
            config: Arc::new(config),
            keys,
            registry,
            runs,
            store,
            sql,
            metrics,
            hub_metrics,
            node_id: node_id.clone(),
            shutdown: shutdown.clone(),
            connection_tasks: TaskTracker::new(),
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            document_ids: Arc::default(),
        };
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "server failed");
            }
        });
        info!(%addr, node_id, "flowhub listening");
        Ok(Hub {
            addr,
            server,
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://addr`, the base URL clients connect to.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Drains: stop accepting, tell every session to reconnect elsewhere (1012), stop
    /// the flow actors, flush and close the store.
    pub async fn shutdown(self) {
        info!("draining");
        self.state.shutdown.cancel();
        let timeout = self.state.config.drain_timeout;
        let _ = tokio::time::timeout(timeout, self.server).await;
        // Connections see the cancellation and close (1012), each flushing what it
        // has queued: wait for every one of them, within the drain timeout. No new
        // connection is tracked once the server has stopped accepting.
        self.state.connection_tasks.close();
        if tokio::time::timeout(timeout, self.state.connection_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.state.connection_tasks.len(),
                "connections still open at the drain timeout"
            );
        }
        if let Some(m) = &self.state.membership {
            m.leave().await;
        }
        self.state.registry.stop_all().await;
        // Every run event is stored before it is broadcast: nothing to flush.
        self.state.runs.stop_all().await;
        if let Some(sql) = &self.state.sql {
            sql.close().await;
        }
        info!("drained");
    }
}

/// The demo's endpoints hand out editor tokens to anyone: refused on a non-loopback
/// address unless the operator said so twice, and loudly announced either way.
fn check_demo(config: &HubConfig) -> Result<(), StartError> {
    if !config.demo {
        return Ok(());
    }
    if !config.listen.ip().is_loopback() && !config.demo_allow_remote {
        return Err(StartError::DemoRemote(config.listen));
    }
    tracing::warn!(
        listen = %config.listen,
        "DEMO MODE: /v1/dev/token gives an editor token to anyone who can reach this \
         address; never run --demo on a deployment"
    );
    Ok(())
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/flows/{flow_id}", get(http::get_flow))
        .route(
            "/v1/flows/{flow_id}/edits",
            axum::routing::post(crate::flow_api::post_edits),
        )
        .route("/v1/flows/{flow_id}/diff", get(crate::flow_api::get_diff))
        .route(
            "/v1/flows/{flow_id}/stream",
            get(crate::flow_api::get_stream),
        )
        .route(
            "/v1/flows/{flow_id}/history",
            get(crate::flow_api::get_history),
        )
        .route(
            "/v1/flows/{flow_id}/versions",
            get(crate::flow_api::get_versions).post(crate::flow_api::post_version),
        )
        .route(
            "/v1/flows/{flow_id}/versions/{name}",
            axum::routing::delete(crate::flow_api::delete_version),
        )
        .route(
            "/v1/flows/{flow_id}/restore",
            axum::routing::post(crate::flow_api::post_restore),
        )
        .route(
            "/v1/flows/{flow_id}/members/{user_id}",
            axum::routing::put(http::put_member),
        )
        .route("/v1/nodes", get(http::nodes))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .merge(crate::runs::routes())
        .merge(crate::automerge_repo::routes())
        // The dev endpoints exist only when the operator turned the demo on.
        .merge(crate::demo::routes(&state.config))
        .layer(axum::middleware::map_response(
            crate::error::json_error_bodies,
        ))
        .with_state(state)
}
