//! `GET /api/v1/groups`: latency quantiles per value of one dimension (tenant, model, node,
//! engine, status, outcome), the busiest groups first.
use serde::{Deserialize, Serialize};

use crate::window::Window;

/// The dimensions requests can be grouped by: `requests` columns, and `by=` values.
pub const GROUP_BY: [&str; 6] = ["tenant", "model", "node", "engine", "status", "outcome"];

/// The `/api/v1/groups` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    /// The window queried.
    pub window: Window,
    /// The dimension.
    pub by: String,
    /// The quantile levels of every group's lists.
    pub quantiles: Vec<f64>,
    /// Requests of the window that matched the filters, in every group.
    pub count: u64,
    /// The groups, most requests first (value order on ties).
    pub groups: Vec<Group>,
    /// More groups exist than `limit`.
    pub truncated: bool,
}

/// One value of the dimension. Quantile lists follow [`Groups::quantiles`]; `null` entries
/// where no request of the group has the metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The value (`""`: requests without one, e.g. no tenant label).
    pub value: String,
    /// Requests.
    pub count: u64,
    /// Requests answered 5xx.
    pub errors: u64,
    /// End to end, ms.
    pub e2e_ms: Vec<Option<f64>>,
    /// Time to first token, ms.
    pub ttft_ms: Vec<Option<f64>>,
    /// Time per output token, ms.
    pub tpot_ms: Vec<Option<f64>>,
}
