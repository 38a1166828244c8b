//! `GET /api/v1/filters`.
use serde::{Deserialize, Serialize};

use crate::window::Window;

/// The `/api/v1/filters` response. Lists are sorted; empty strings are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterValues {
    /// The window queried.
    pub window: Window,
    /// Requests in the window.
    pub count: u64,
    /// Models.
    pub models: Vec<String>,
    /// Nodes.
    pub nodes: Vec<String>,
    /// Engines.
    pub engines: Vec<String>,
    /// HTTP statuses.
    pub statuses: Vec<u16>,
    /// Outcomes.
    pub outcomes: Vec<String>,
    /// Run tags (`key=value`, node-probe `--tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tenant labels (node-probe `--tenant-header`/`--tenant-field`).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// A list was cut at 1000 values.
    pub truncated: bool,
}
