//! The time window every query answers for.
use serde::{Deserialize, Serialize};

use crate::time::format_rfc3339;

/// A validated time window `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start, RFC 3339 UTC.
    pub from: String,
    /// End (exclusive), RFC 3339 UTC.
    pub to: String,
    /// Start, Unix ns.
    pub from_unix_ns: u64,
    /// End (exclusive), Unix ns.
    pub to_unix_ns: u64,
}

impl Window {
    /// A window from Unix nanoseconds.
    pub fn new(from_unix_ns: u64, to_unix_ns: u64) -> Self {
        Self {
            from: format_rfc3339(from_unix_ns),
            to: format_rfc3339(to_unix_ns),
            from_unix_ns,
            to_unix_ns,
        }
    }
}
