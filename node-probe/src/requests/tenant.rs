//! Tenant (application, user) labels of requests: taken from a configured header or body field
//! ([`TenantFrom`]), cleaned, and bounded in cardinality, so that a label set stays small enough
//! to group by in ClickHouse and in Prometheus-style tooling.
//!
//! The first [`TenantConfig::max_values`] distinct values seen are kept as they are; later new
//! values become [`OTHER`] (counted). A value may be personal data (an OpenAI `user` field often
//! is an end user's id): extraction is off unless configured.
use std::collections::HashSet;

pub use crate::http::TenantFrom;

/// The label of values beyond the cap.
pub const OTHER: &str = "_other";

/// Tenant extraction settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantConfig {
    /// Where the value comes from.
    pub from: TenantFrom,
    /// Distinct values kept; beyond, [`OTHER`].
    pub max_values: usize,
    /// Characters kept of a value.
    pub max_len: usize,
}

impl TenantConfig {
    /// From `from` with the default bounds (256 values of up to 64 characters).
    pub fn new(from: TenantFrom) -> Self {
        Self {
            from,
            max_values: 256,
            max_len: 64,
        }
    }
}

/// The bounded set of labels handed out so far.
#[derive(Debug)]
pub struct Tenants {
    cfg: TenantConfig,
    seen: HashSet<String>,
    /// Requests labelled [`OTHER`] because the cap was reached.
    pub overflow: u64,
}

impl Tenants {
    /// An empty set.
    pub fn new(cfg: TenantConfig) -> Self {
        Self {
            cfg,
            seen: HashSet::new(),
            overflow: 0,
        }
    }

    /// The label of a request whose raw value was `raw` (none when it had none).
    pub fn label(&mut self, raw: Option<&str>) -> Option<String> {
        let v: String = raw?
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(self.cfg.max_len)
            .collect();
        if v.is_empty() {
            return None;
        }
        if self.seen.contains(&v) {
            return Some(v);
        }
        if self.seen.len() < self.cfg.max_values {
            self.seen.insert(v.clone());
            return Some(v);
        }
        self.overflow += 1;
        Some(OTHER.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cleaned_and_counted() {
        let mut c = TenantConfig::new(TenantFrom::Header("x-tenant-id"));
        c.max_values = 2;
        c.max_len = 5;
        let mut t = Tenants::new(c);
        assert_eq!(t.label(None), None);
        assert_eq!(t.label(Some("  ")), None);
        assert_eq!(t.label(Some(" acme ")).as_deref(), Some("acme"));
        assert_eq!(t.label(Some("b\u{7}eta-long")).as_deref(), Some("beta-"));
        assert_eq!(t.label(Some("gamma")).as_deref(), Some(OTHER));
        assert_eq!(t.label(Some("acme")).as_deref(), Some("acme"));
        assert_eq!(t.overflow, 1);
    }
}
