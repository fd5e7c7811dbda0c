//! One [`FlowActor`] per open flow, and the [`FlowRegistry`] that finds or spawns it.

mod actor;
pub mod presence;
mod registry;

pub use actor::{
    EditRequest, EditSource, EditsApplied, EditsRefused, FlowActor, FlowArgs, FlowConfig, FlowDeps,
    FlowMsg, FlowState, OnInvalid, EDITS_MESSAGE_PREFIX, HUB_USER,
};
pub use registry::FlowRegistry;
