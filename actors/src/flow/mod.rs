//! One [`FlowActor`] per open flow, and the [`FlowRegistry`] that finds or spawns it.

mod actor;
pub mod presence;
mod registry;

pub use actor::{
    EditRequest, EditSource, EditsApplied, EditsRefused, FlowActor, FlowArgs, FlowConfig, FlowDeps,
    FlowMsg, FlowState, OnInvalid,
};
pub use registry::FlowRegistry;
