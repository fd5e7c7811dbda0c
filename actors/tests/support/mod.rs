//! A sync-protocol peer of a real `FlowActor`, as a session (or the automerge-repo
//! bridge) would be: it joins, then exchanges Automerge sync messages through the
//! actor's real outbound queue. Shared by the tests that need one.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc};
use flowhub_actors::flow::{FlowMsg, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::outbound::{NativeFrame, Outbound, OutboundRx};
use flowhub_actors::store::{
    ActorBinding, ChangeRecord, FlowVersions, MemberAccess, MemoryStore, Snapshot, Store,
    StoreError, StoredFlow,
};
use flowhub_crdt::{FlowDoc, SyncState};
use flowhub_protocol::{ErrorCode, Role, ServerMessage, SyncFrame};
use ractor::ActorRef;

pub struct SyncPeer {
    pub id: String,
    pub doc: FlowDoc,
    pub sync: SyncState,
    pub rx: OutboundRx,
    pub actor: ActorRef<FlowMsg>,
    /// Every control message the actor queued for this peer.
    pub messages: Vec<ServerMessage>,
}

impl SyncPeer {
    /// Joins `actor` as session `id` (also its user id and name) and syncs.
    pub async fn join(
        actor: &ActorRef<FlowMsg>,
        id: &str,
        role: Role,
        on_invalid: OnInvalid,
    ) -> SyncPeer {
        let (out, rx) = Outbound::new(256, Arc::new(Metrics::default()));
        ractor::call!(actor, |reply| FlowMsg::Join {
            session_id: id.into(),
            user_id: id.into(),
            name: id.into(),
            token_role: Some(role),
            role,
            out,
            request_id: None,
            pending: Vec::new(),
            stream: false,
            on_invalid,
            greet: true,
            reply
        })
        .unwrap();
        let mut peer = SyncPeer {
            id: id.into(),
            doc: FlowDoc::new(),
            sync: SyncState::new(),
            rx,
            actor: actor.clone(),
            messages: Vec::new(),
        };
        peer.exchange().await;
        peer
    }

    /// Sends what the sync protocol has to say and applies what comes back, until
    /// neither side has anything more; returns how many sync frames arrived.
    pub async fn exchange(&mut self) -> usize {
        let mut received = 0;
        for _ in 0..20 {
            if let Some(msg) = self.doc.generate_sync_message(&mut self.sync) {
                let ok = ractor::call!(self.actor, |reply| FlowMsg::Sync {
                    session_id: self.id.clone(),
                    payload: msg,
                    reply,
                })
                .unwrap();
                assert!(ok, "{} is still a peer", self.id);
            }
            let mut got = 0;
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(100), self.rx.frames.recv()).await
            {
                match frame.into_native() {
                    NativeFrame::Binary(bytes) => {
                        let frame = SyncFrame::decode(&bytes).unwrap();
                        self.doc
                            .receive_sync_message(&mut self.sync, &frame.payload)
                            .unwrap();
                        got += 1;
                    }
                    NativeFrame::Text(text) => {
                        self.messages.push(serde_json::from_str(&text).unwrap());
                    }
                    NativeFrame::SharedBinary(_) => panic!("no change frames without stream"),
                }
            }
            received += got;
            if got == 0 && self.doc.generate_sync_message(&mut self.sync).is_none() {
                break;
            }
        }
        received
    }

    /// What stock automerge-repo code does with `d.nodes[id].label = "..."`:
    /// Automerge 3 writes a JS string as a text object, which the schema refuses.
    pub fn write_text_label(&mut self, node: &str, label: &str) {
        let raw = self.doc.doc_mut();
        let nodes = match raw.get(automerge::ROOT, "nodes").unwrap() {
            Some((_, id)) => id,
            None => panic!("nodes map"),
        };
        let node = raw.get(&nodes, node).unwrap().expect("node").1;
        let text = raw.put_object(&node, "label", ObjType::Text).unwrap();
        raw.splice_text(&text, 0, 0, label).unwrap();
        raw.commit();
    }

    pub fn errors(&self) -> Vec<ErrorCode> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// `(change, problems)` of every `repaired` message.
    pub fn repairs(&self) -> Vec<(String, Vec<String>)> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Repaired {
                    change, problems, ..
                } => Some((change.clone(), problems.clone())),
                _ => None,
            })
            .collect()
    }
}

/// What a test store does around the [`MemoryStore`] it wraps (see [`HookedStore`]).
#[async_trait::async_trait]
pub trait StoreHooks: Send + Sync + 'static {
    /// Before every call; an error fails the call.
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Before every append, after `check`: wait, count, or fail it.
    async fn before_append(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// After every successful `load_flow`: may alter what it returns.
    fn after_load(&self, _flow: &mut StoredFlow) {}
    /// Before every compaction, after `check`: wait, count, or fail it.
    async fn before_compact(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Hooks for a store that can be switched off: every call fails while `down` is set.
#[derive(Default)]
pub struct Outage {
    pub down: std::sync::atomic::AtomicBool,
}

impl StoreHooks for Outage {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Unavailable("test: store down".into()))
        } else {
            Ok(())
        }
    }
}

/// A `MemoryStore` with test behaviour around it (a store that is down, slow, or
/// held at a gate). Derefs to its hooks, so a test reaches their switches directly.
pub struct HookedStore<H> {
    pub inner: Arc<MemoryStore>,
    pub hooks: H,
}

impl<H> HookedStore<H> {
    pub fn new(hooks: H) -> Self {
        HookedStore {
            inner: Arc::new(MemoryStore::new()),
            hooks,
        }
    }
}

impl<H> std::ops::Deref for HookedStore<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hooks
    }
}

#[async_trait::async_trait]
impl<H: StoreHooks> Store for HookedStore<H> {
    async fn load_flow(&self, flow_id: &str) -> Result<StoredFlow, StoreError> {
        self.hooks.check()?;
        let mut flow = self.inner.load_flow(flow_id).await?;
        self.hooks.after_load(&mut flow);
        Ok(flow)
    }
    async fn append_changes(&self, flow_id: &str, c: &[ChangeRecord]) -> Result<(), StoreError> {
        self.hooks.check()?;
        self.hooks.before_append().await?;
        self.inner.append_changes(flow_id, c).await
    }
    async fn compact(&self, f: &str, s: Snapshot, c: &[String]) -> Result<(), StoreError> {
        self.hooks.check()?;
        self.hooks.before_compact().await?;
        self.inner.compact(f, s, c).await
    }
    async fn member_access(&self, f: &str, u: &str) -> Result<Option<MemberAccess>, StoreError> {
        self.hooks.check()?;
        self.inner.member_access(f, u).await
    }
    async fn set_member_access(
        &self,
        f: &str,
        u: &str,
        a: Option<MemberAccess>,
    ) -> Result<(), StoreError> {
        self.hooks.check()?;
        self.inner.set_member_access(f, u, a).await
    }
    async fn flow_versions(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, FlowVersions)>, StoreError> {
        self.hooks.check()?;
        self.inner.flow_versions(ids).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.hooks.check()
    }
    async fn flow_actors(&self, flow_id: &str) -> Result<Vec<ActorBinding>, StoreError> {
        self.hooks.check()?;
        self.inner.flow_actors(flow_id).await
    }
    async fn bind_actors(&self, f: &str, b: &[ActorBinding]) -> Result<(), StoreError> {
        self.hooks.check()?;
        self.inner.bind_actors(f, b).await
    }
}
