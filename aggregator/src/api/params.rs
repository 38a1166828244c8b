//! Query-string parsing and validation shared by the endpoints.
//!
//! Every parameter is checked here (type, range, length) and a failure names the parameter:
//! `invalid "limit": 0 is outside 1..=1000`. Unknown and repeated parameters are rejected, so a
//! typo is an error rather than a silently ignored filter. An empty value (`model=`) means the
//! parameter is absent.

use super::sql::{Arg, Sql};
use super::time::{format_rfc3339, now_ns, parse_instant};
use crate::error::{ApiError, ErrorCode};

/// Longest accepted string filter, in characters.
pub const MAX_STRING_CHARS: usize = 256;
/// Widest accepted time window.
pub const MAX_WINDOW_NS: u64 = 31 * 86_400 * 1_000_000_000;
/// Window used when neither `from` nor `to` is given.
pub const DEFAULT_WINDOW_NS: u64 = 3600 * 1_000_000_000;
/// ClickHouse `DateTime` ends in 2106; later instants cannot be stored.
const MAX_INSTANT_NS: u64 = u32::MAX as u64 * 1_000_000_000;

/// A 400 error naming the parameter.
pub fn invalid(name: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidArgument,
        format!("invalid \"{name}\": {msg}"),
    )
}

/// The decoded query string of one request.
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Checks that every parameter is one of `known` and appears at most once.
    pub fn new(pairs: Vec<(String, String)>, known: &[&str]) -> Result<Self, ApiError> {
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "unknown parameter \"{}\"; this endpoint accepts: {}",
                        k.chars().take(64).collect::<String>(),
                        known.join(", ")
                    ),
                ));
            }
            if pairs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(invalid(k, "given more than once"));
            }
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A string filter (at most [`MAX_STRING_CHARS`] characters, no control characters).
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let n = v.chars().count();
        if n > MAX_STRING_CHARS {
            return Err(invalid(
                name,
                format!("{n} characters, at most {MAX_STRING_CHARS} allowed"),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(invalid(name, "contains control characters"));
        }
        Ok(Some(v.to_string()))
    }

    /// An unsigned integer in `range`.
    pub fn uint(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let n: u64 = v.parse().map_err(|_| {
            invalid(
                name,
                format!("{:?} is not a non-negative integer", short(v)),
            )
        })?;
        if !range.contains(&n) {
            return Err(invalid(
                name,
                format!("{n} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(Some(n))
    }

    /// A finite number in `[min, max]`.
    pub fn float(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let x: f64 = v
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| invalid(name, format!("{:?} is not a number", short(v))))?;
        if !(min..=max).contains(&x) {
            return Err(invalid(name, format!("{x} is outside [{min}, {max}]")));
        }
        Ok(Some(x))
    }

    /// One of `choices`.
    pub fn choice(
        &self,
        name: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        choices
            .iter()
            .find(|c| **c == v)
            .copied()
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    name,
                    format!("{:?} is not one of {}", short(v), choices.join(", ")),
                )
            })
    }

    /// A quantile level in the open interval (0, 1).
    pub fn quantile(&self, name: &str) -> Result<Option<f64>, ApiError> {
        self.get(name).map(|v| parse_quantile(name, v)).transpose()
    }

    /// A comma-separated list of at most `max` quantile levels in (0, 1).
    pub fn quantiles(&self, name: &str, max: usize) -> Result<Option<Vec<f64>>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let qs = v
            .split(',')
            .map(|p| parse_quantile(name, p.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if qs.len() > max {
            return Err(invalid(
                name,
                format!("{} levels given, at most {max} allowed", qs.len()),
            ));
        }
        Ok(Some(qs))
    }
}

fn short(v: &str) -> String {
    if v.chars().count() > 40 {
        format!("{}…", v.chars().take(40).collect::<String>())
    } else {
        v.to_string()
    }
}

fn parse_quantile(name: &str, v: &str) -> Result<f64, ApiError> {
    let q: f64 = v
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite())
        .ok_or_else(|| invalid(name, format!("{:?} is not a number", short(v))))?;
    if q <= 0.0 || q >= 1.0 {
        return Err(invalid(
            name,
            format!("{q} is not in (0, 1); write p99 as 0.99"),
        ));
    }
    Ok(q)
}

pub use inferscope_api::Window;

/// The aggregator's side of a [`Window`]: parsing it from parameters, bounding a query by it.
pub trait WindowExt: Sized {
    /// From the `from`/`to` parameters: both optional (default: the hour before `to`, `to`
    /// defaults to now), `from < to`, at most 31 days wide.
    fn from_params(p: &Params) -> Result<Self, ApiError>;
    /// Appends `start`/`start_unix_ns` bounds: the `start` (DateTime) bound lets ClickHouse
    /// skip partitions and granules, the nanosecond bound makes the window exact.
    fn push_where(&self, sql: &mut Sql);
}

impl WindowExt for Window {
    fn from_params(p: &Params) -> Result<Self, ApiError> {
        let instant = |name: &str| -> Result<Option<u64>, ApiError> {
            p.get(name)
                .map(|v| {
                    let ns = parse_instant(v).map_err(|e| invalid(name, e))?;
                    if ns >= MAX_INSTANT_NS {
                        return Err(invalid(name, "after 2106 (the end of ClickHouse DateTime)"));
                    }
                    Ok(ns)
                })
                .transpose()
        };
        let from = instant("from")?;
        let to = instant("to")?;
        let (from, to) = match (from, to) {
            (Some(f), Some(t)) => (f, t),
            (Some(f), None) => (f, now_ns().max(f.saturating_add(1))),
            (None, Some(t)) => (t.saturating_sub(DEFAULT_WINDOW_NS), t),
            (None, None) => {
                let t = now_ns();
                (t.saturating_sub(DEFAULT_WINDOW_NS), t)
            }
        };
        if from >= to {
            return Err(invalid(
                "from",
                format!(
                    "{} is not before \"to\" ({})",
                    format_rfc3339(from),
                    format_rfc3339(to)
                ),
            ));
        }
        if to - from > MAX_WINDOW_NS {
            return Err(invalid(
                if p.get("to").is_some() { "to" } else { "from" },
                format!(
                    "the window {} .. {} is {:.1} days wide; at most 31 days are allowed",
                    format_rfc3339(from),
                    format_rfc3339(to),
                    (to - from) as f64 / 86_400e9
                ),
            ));
        }
        Ok(Self::new(from, to))
    }

    fn push_where(&self, sql: &mut Sql) {
        let from_s = self.from_unix_ns / 1_000_000_000;
        let to_s = self.to_unix_ns.div_ceil(1_000_000_000);
        sql.push("start >= toDateTime(")
            .arg(Arg::U64(from_s))
            .push(") AND start <= toDateTime(")
            .arg(Arg::U64(to_s))
            .push(") AND start_unix_ns >= ")
            .arg(Arg::U64(self.from_unix_ns))
            .push(" AND start_unix_ns < ")
            .arg(Arg::U64(self.to_unix_ns));
    }
}

/// A `status` filter: an exact code (`503`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// One code (0: no response).
    Code(u16),
    /// `Nxx`: codes `N*100 ..= N*100+99`.
    Class(u16),
}

impl StatusFilter {
    fn parse(v: &str) -> Result<Self, ApiError> {
        let b = v.as_bytes();
        if b.len() == 3
            && b[0].is_ascii_digit()
            && b[0] != b'0'
            && b[1..].eq_ignore_ascii_case(b"xx")
        {
            return Ok(Self::Class(u16::from(b[0] - b'0')));
        }
        match v.parse::<u16>() {
            Ok(n) if n <= 999 => Ok(Self::Code(n)),
            _ => Err(invalid(
                "status",
                format!(
                    "{:?} is not an HTTP status (0..=999) or a class like 5xx",
                    short(v)
                ),
            )),
        }
    }
}

/// Filters shared by the request endpoints.
#[derive(Debug, Clone)]
pub struct Filters {
    /// Time window on the request start.
    pub window: Window,
    /// Model name, exact.
    pub model: Option<String>,
    /// Node name, exact.
    pub node: Option<String>,
    /// Engine kind, exact.
    pub engine: Option<String>,
    /// HTTP status.
    pub status: Option<StatusFilter>,
    /// Outcome (`complete`, `client_abort`, ...).
    pub outcome: Option<String>,
    /// A run tag `key=value` the request must carry (node-probe `--tag`).
    pub tag: Option<String>,
    /// Tenant label, exact (node-probe `--tenant-header`/`--tenant-field`).
    pub tenant: Option<String>,
}

/// Parameter names of [`Filters`]: the window and [`inferscope_api::FILTER_KEYS`].
pub const FILTER_PARAMS: &[&str] = &[
    "from", "to", "model", "node", "engine", "status", "outcome", "tag", "tenant",
];

/// A `tag` filter: `key=value` with a non-empty key.
fn parse_tag(v: String) -> Result<String, ApiError> {
    match v.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(v),
        _ => Err(invalid(
            "tag",
            format!("{:?} is not key=value (e.g. run=42)", short(&v)),
        )),
    }
}

impl Filters {
    /// Validates the filter parameters.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            window: Window::from_params(p)?,
            model: p.string("model")?,
            node: p.string("node")?,
            engine: p.string("engine")?,
            status: p.get("status").map(StatusFilter::parse).transpose()?,
            outcome: p.string("outcome")?,
            tag: p.string("tag")?.map(parse_tag).transpose()?,
            tenant: p.string("tenant")?,
        })
    }

    /// Appends the conditions (without a leading `WHERE`/`AND`).
    pub fn push_where(&self, sql: &mut Sql) {
        self.window.push_where(sql);
        for (col, v) in [
            ("model", &self.model),
            ("node", &self.node),
            ("engine", &self.engine),
            ("outcome", &self.outcome),
            ("tenant", &self.tenant),
        ] {
            if let Some(v) = v {
                sql.push(" AND ")
                    .push(col)
                    .push(" = ")
                    .arg(Arg::Str(v.clone()));
            }
        }
        match self.status {
            Some(StatusFilter::Code(c)) => {
                sql.push(" AND status = ").arg(Arg::U64(u64::from(c)));
            }
            Some(StatusFilter::Class(c)) => {
                sql.push(" AND status >= ")
                    .arg(Arg::U64(u64::from(c) * 100))
                    .push(" AND status <= ")
                    .arg(Arg::U64(u64::from(c) * 100 + 99));
            }
            None => {}
        }
        if let Some(t) = &self.tag {
            sql.push(" AND has(tags, ")
                .arg(Arg::Str(t.clone()))
                .push(")");
        }
    }

    /// The filters given, as `key=value` pairs (window excluded), in parameter order.
    pub fn describe(&self) -> Vec<String> {
        let status = self.status.map(|s| match s {
            StatusFilter::Code(c) => c.to_string(),
            StatusFilter::Class(c) => format!("{c}xx"),
        });
        [
            ("model", self.model.clone()),
            ("node", self.node.clone()),
            ("engine", self.engine.clone()),
            ("status", status),
            ("outcome", self.outcome.clone()),
            ("tag", self.tag.clone()),
            ("tenant", self.tenant.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_params_are_the_window_and_the_shared_keys() {
        assert_eq!(FILTER_PARAMS[..2], ["from", "to"]);
        assert_eq!(FILTER_PARAMS[2..], inferscope_api::FILTER_KEYS);
    }

    fn params(q: &[(&str, &str)]) -> Params {
        Params::new(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            &[
                "from",
                "to",
                "model",
                "quantiles",
                "limit",
                "status",
                "q",
                "sort",
            ],
        )
        .unwrap()
    }

    #[test]
    fn unknown_and_repeated() {
        let e = Params::new(vec![("modle".into(), "x".into())], &["model"])
            .err()
            .unwrap();
        assert!(e.message.contains("modle"), "{}", e.message);
        let e = Params::new(
            vec![("model".into(), "a".into()), ("model".into(), "b".into())],
            &["model"],
        )
        .err()
        .unwrap();
        assert!(e.message.contains("\"model\""), "{}", e.message);
    }

    #[test]
    fn values() {
        let p = params(&[("quantiles", "0.5, 0.99"), ("limit", "10"), ("model", "")]);
        assert_eq!(p.quantiles("quantiles", 8).unwrap(), Some(vec![0.5, 0.99]));
        assert_eq!(p.uint("limit", 1..=1000).unwrap(), Some(10));
        assert_eq!(p.string("model").unwrap(), None);
        let p = params(&[("quantiles", "0.5,1"), ("limit", "0")]);
        assert!(p.quantiles("quantiles", 8).is_err());
        assert!(p
            .uint("limit", 1..=1000)
            .err()
            .unwrap()
            .message
            .contains("\"limit\""));
        let p = params(&[("quantiles", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")]);
        assert!(p.quantiles("quantiles", 8).is_err());
        let long = "x".repeat(257);
        let p = params(&[("model", &long)]);
        assert!(p.string("model").is_err());
        let p = params(&[("sort", "e2e")]);
        assert_eq!(p.choice("sort", &["e2e", "ttft"]).unwrap(), Some("e2e"));
        let p = params(&[("sort", "nope")]);
        assert!(p.choice("sort", &["e2e", "ttft"]).is_err());
    }

    #[test]
    fn windows() {
        let w = Window::from_params(&params(&[])).unwrap();
        assert_eq!(w.to_unix_ns - w.from_unix_ns, DEFAULT_WINDOW_NS);
        let w = Window::from_params(&params(&[
            ("from", "1700000000"),
            ("to", "2023-11-14T23:13:20Z"),
        ]))
        .unwrap();
        assert_eq!(w.to_unix_ns - w.from_unix_ns, 3600 * 1_000_000_000);
        assert!(
            Window::from_params(&params(&[("from", "1700000000"), ("to", "1700000000")])).is_err()
        );
        let e = Window::from_params(&params(&[("from", "1600000000"), ("to", "1700000000")]))
            .err()
            .unwrap();
        assert!(e.message.contains("31 days"), "{}", e.message);
        assert!(Window::from_params(&params(&[("from", "soon")])).is_err());
    }

    #[test]
    fn status() {
        assert_eq!(StatusFilter::parse("503").unwrap(), StatusFilter::Code(503));
        assert_eq!(StatusFilter::parse("5xx").unwrap(), StatusFilter::Class(5));
        assert_eq!(StatusFilter::parse("0").unwrap(), StatusFilter::Code(0));
        assert!(StatusFilter::parse("1000").is_err());
        assert!(StatusFilter::parse("0xx").is_err());
        assert!(StatusFilter::parse("abc").is_err());
    }

    #[test]
    fn where_clause_binds_everything() {
        let p = params(&[
            ("from", "1700000000.5"),
            ("to", "1700000010"),
            ("model", "a'b?"),
            ("status", "5xx"),
        ]);
        let f = Filters {
            model: p.string("model").unwrap(),
            node: None,
            engine: None,
            status: p
                .get("status")
                .map(StatusFilter::parse)
                .transpose()
                .unwrap(),
            outcome: None,
            tag: Some("run=1'x".into()),
            tenant: Some("t'1".into()),
            window: Window::from_params(&p).unwrap(),
        };
        let mut sql = Sql::new("");
        f.push_where(&mut sql);
        assert!(!sql.text().contains("a'b") && !sql.text().contains("t'1"));
        assert_eq!(sql.text().matches('?').count(), sql.arg_count());
    }
}
