//! Presence: who is in a flow, where their cursor is, what they have selected.

use serde::{Deserialize, Serialize};

/// A point on the flow canvas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub x: f64,
    pub y: f64,
}

/// One session's presence in one flow. `user_id` and `name` come from the session's
/// verified token, never from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub session_id: String,
    pub user_id: String,
    pub name: String,
    /// CSS colour chosen by the client, or derived from the user id.
    pub color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    #[serde(default)]
    pub selection: Vec<String>,
    /// The hub node the session is connected to.
    pub node_id: String,
    /// Milliseconds since the Unix epoch of the last update.
    pub updated_at: u64,
}

/// Longest accepted colour string and selection.
pub const MAX_COLOR_LEN: usize = 32;
pub const MAX_SELECTION: usize = 1000;
