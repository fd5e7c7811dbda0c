//! Arbitrary bytes and arbitrary JSON thrown at a live session never panic it: every
//! frame is answered with well-formed messages, refusals are typed errors, and the
//! session keeps serving.

use std::sync::Arc;
use std::time::Duration;

use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowRegistry};
use flowhub_actors::identity::{Identity, TokenVerifier};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{
    Inbound, NativeFrame, Outbound, SessionActor, SessionArgs, SessionLimits, SessionMsg,
    TransportProfile,
};
use flowhub_actors::store::MemoryStore;
use flowhub_protocol::{Role, ServerMessage};
use proptest::prelude::*;
use ractor::Actor;

struct RefuseAll;

#[async_trait::async_trait]
impl TokenVerifier for RefuseAll {
    async fn verify(&self, _token: &str) -> Result<Identity, String> {
        Err("no".into())
    }
}

#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let json_ish = prop_oneof![
        Just(r#"{"type":"subscribe_flow","id":1,"flow_id":"f"}"#.to_string()),
        Just(r#"{"type":"presence","flow_id":"f","cursor":{"x":1e308,"y":-1}}"#.to_string()),
        Just(r#"{"type":"reauth","id":"r","token":"x.y.z"}"#.to_string()),
        Just(r#"{"type":"unsubscribe_flow","flow_id":"zz"}"#.to_string()),
        Just(r#"{"type":"subscribe_run","run_id":"r1","since_seq":18446744073709551615}"#.to_string()),
        "\\{\"type\":\"[a-z_]{0,16}\"(,\"[a-z_]{1,8}\":(null|[0-9]{1,5}|\"[^\"]{0,8}\"|\\[\\]|\\{\\}))*\\}",
        ".{0,64}",
    ];
    prop_oneof![
        json_ish.prop_map(Frame::Text),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Binary),
        // Well-formed headers for the subscribed flow, with garbage payloads.
        prop::collection::vec(any::<u8>(), 1..64)
            .prop_map(|p| Frame::Binary(flowhub_protocol::frame::encode_flow_sync("f", &p))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sessions_survive_arbitrary_frames(frames in prop::collection::vec(arb_frame(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let metrics = Arc::new(Metrics::default());
            let registry = FlowRegistry::new(Arc::new(FlowDeps {
                store: Arc::new(MemoryStore::new()),
                bus: Arc::new(MemoryBus::new()),
                node_id: "fuzz".into(),
                metrics: metrics.clone(),
                config: FlowConfig::default(),
            }));
            let (out, mut rx) = Outbound::new(100_000, metrics.clone());
            let args = SessionArgs {
                session_id: "s".into(),
                identity: Identity { user_id: "u".into(), name: "U".into(), flows: [("*".to_string(), Role::Editor)].into(), expires_at: None, service: false },
                out,
                registry: registry.clone(),
                limits: SessionLimits { max_bad_frames: u32::MAX, ..SessionLimits::default() },
                metrics,
                verifier: Arc::new(RefuseAll),
                runs: flowhub_actors::run::RunRegistry::new(Arc::new(flowhub_actors::run::RunDeps {
                    store: Arc::new(flowhub_actors::run::MemoryRunStore::default()),
                    flows: registry.clone(),
                    metrics: Arc::new(Metrics::default()),
                    config: flowhub_actors::run::RunConfig::default(),
                })),
                span: tracing::Span::none(),
                profile: TransportProfile::NATIVE,
            };
            let (session, _) = Actor::spawn(None, SessionActor, args).await.unwrap();
            for f in frames {
                let handled = match f {
                    Frame::Text(t) => session.call(|r| SessionMsg::Frame(Inbound::from_native_text(&t), r), Some(Duration::from_secs(10))).await,
                    Frame::Binary(b) => session.call(|r| SessionMsg::Frame(Inbound::from_native_binary(&b), r), Some(Duration::from_secs(10))).await,
                };
                assert!(matches!(handled, Ok(ractor::rpc::CallResult::Success(()))), "session stopped answering: {handled:?}");
            }
            // Still alive and serving.
            session.call(|r| SessionMsg::Frame(Inbound::from_native_text(r#"{"type":"ping","id":"last"}"#), r), None).await.unwrap();
            let mut saw_pong = false;
            while let Ok(frame) = rx.frames.try_recv() {
                if let NativeFrame::Text(t) = frame.into_native() {
                    let msg: ServerMessage = serde_json::from_str(&t).expect("every frame the hub sends is a valid message");
                    saw_pong |= matches!(msg, ServerMessage::Pong { .. });
                }
            }
            assert!(saw_pong);
            session.stop(None);
            registry.stop_all().await;
        });
    }
}
