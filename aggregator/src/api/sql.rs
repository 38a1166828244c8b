//! A small SQL builder: text with `?` placeholders plus the values bound to them, in order.
//!
//! User values only ever reach ClickHouse through [`clickhouse::query::Query::bind`] (escaped
//! literals); the text itself is built from constants, validated identifiers (the database name,
//! see [`crate::store::schema::valid_identifier`]) and whitelisted column names.
use std::time::Instant;

use clickhouse::{Client, RowOwned, RowRead};
use tracing::{debug, warn};

use crate::error::{ApiError, ErrorCode};

/// Seconds a query may run before ClickHouse cancels it.
pub const MAX_EXECUTION_SECS: u32 = 30;
/// Memory one query may use on the server (bytes) before ClickHouse stops it.
pub const MAX_QUERY_MEMORY: u64 = 2 << 30;
/// ClickHouse `priority` of queries (lower is more urgent; ingest runs at
/// [`crate::ingest::writer::INGEST_PRIORITY`]): while an insert runs, queries wait.
pub const QUERY_PRIORITY: u32 = 10;

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// Unsigned integer.
    U64(u64),
    /// Float (finite: validated by the caller).
    F64(f64),
    /// String, bound as an escaped literal.
    Str(String),
    /// Array of unsigned integers.
    U64s(Vec<u64>),
}

/// Query text and its bound values.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// Starts with `text`, which must not contain `?`.
    pub fn new(text: &str) -> Self {
        let mut s = Self::default();
        s.push(text);
        s
    }

    /// Appends trusted text (constants, validated identifiers); never user input.
    pub fn push(&mut self, text: &str) -> &mut Self {
        debug_assert!(
            !text.contains('?'),
            "placeholders only through arg(): {text}"
        );
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `a`.
    pub fn arg(&mut self, a: Arg) -> &mut Self {
        self.text.push('?');
        self.args.push(a);
        self
    }

    /// Appends `?, ?, …` bound to `values`.
    pub fn arg_list(&mut self, values: &[f64]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.arg(Arg::F64(*v));
        }
        self
    }

    /// The text, with placeholders.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of bound values.
    pub fn arg_count(&self) -> usize {
        self.args.len()
    }

    fn query(&self, client: &Client) -> clickhouse::query::Query {
        let mut q = client.query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::U64(v) => q.bind(v),
                Arg::F64(v) => q.bind(v),
                Arg::Str(v) => q.bind(v.as_str()),
                Arg::U64s(v) => q.bind(v.as_slice()),
            };
        }
        // Each setting exists on 18.16 and current servers.
        q.with_setting("max_execution_time", MAX_EXECUTION_SECS.to_string())
            .with_setting("max_memory_usage", MAX_QUERY_MEMORY.to_string())
            .with_setting("priority", QUERY_PRIORITY.to_string())
    }

    /// Runs the query and decodes every row. `what` names it in logs and errors.
    pub async fn fetch_all<T>(&self, client: &Client, what: &str) -> Result<Vec<T>, ApiError>
    where
        T: RowOwned + RowRead,
    {
        let t0 = Instant::now();
        let r = self.query(client).fetch_all::<T>().await;
        finish(r, what, t0)
    }

    /// Runs the query and decodes its single row.
    pub async fn fetch_one<T>(&self, client: &Client, what: &str) -> Result<T, ApiError>
    where
        T: RowOwned + RowRead,
    {
        let t0 = Instant::now();
        let r = self.query(client).fetch_one::<T>().await;
        finish(r, what, t0)
    }
}

fn finish<T>(r: clickhouse::error::Result<T>, what: &str, t0: Instant) -> Result<T, ApiError> {
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(v) => {
            debug!(query = what, ms, "clickhouse query");
            Ok(v)
        }
        Err(e) => {
            warn!(query = what, ms, error = %e, "clickhouse query failed");
            Err(storage_error(&e))
        }
    }
}

/// Maps a ClickHouse client error to an API error: unreachable or timed out → 503, anything
/// else → 500 with the server's message (shortened).
pub fn storage_error(e: &clickhouse::error::Error) -> ApiError {
    use clickhouse::error::Error as E;
    let mut msg = e.to_string();
    if msg.len() > 600 {
        let cut = (0..=600)
            .rev()
            .find(|i| msg.is_char_boundary(*i))
            .unwrap_or(0);
        msg.truncate(cut);
        msg.push('…');
    }
    match e {
        E::Network(_) | E::TimedOut => ApiError::new(
            ErrorCode::Unavailable,
            format!("ClickHouse is unreachable ({msg}); retry later"),
        ),
        // Code 159: TIMEOUT_EXCEEDED (max_execution_time); 160: TOO_SLOW (the same limit,
        // applied to the estimated run time before the query finishes).
        E::BadResponse(m) if m.contains("Code: 159") || m.contains("Code: 160") => ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "the query ran longer than {MAX_EXECUTION_SECS} s; narrow the time window or add filters"
            ),
        ),
        // Code 241: MEMORY_LIMIT_EXCEEDED (exact quantiles hold every value of the window).
        E::BadResponse(m) if m.contains("Code: 241") => ApiError::new(
            ErrorCode::ResourceExhausted,
            "the query needs more memory than ClickHouse allows; narrow the time window or add filters",
        ),
        _ => ApiError::new(ErrorCode::Internal, format!("storage query failed: {msg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_match_args() {
        let mut s = Sql::new("SELECT 1 FROM t WHERE a = ");
        s.arg(Arg::Str("x'?".into()))
            .push(" AND q IN (")
            .arg_list(&[0.5, 0.9])
            .push(")");
        assert_eq!(s.text(), "SELECT 1 FROM t WHERE a = ? AND q IN (?, ?)");
        assert_eq!(s.arg_count(), 3);
    }

    #[test]
    fn storage_errors_map_to_codes() {
        use clickhouse::error::Error as E;
        let down = storage_error(&E::Network(Box::new(std::io::Error::other("refused"))));
        assert_eq!(down.code, ErrorCode::Unavailable);
        assert!(down.message.contains("unreachable"));
        let slow = storage_error(&E::BadResponse(
            "Code: 159, e.displayText() = DB::Exception: Timeout exceeded".into(),
        ));
        assert_eq!(slow.code, ErrorCode::Unavailable);
        assert!(slow.message.contains("narrow the time window"));
        let other = storage_error(&E::BadResponse("Code: 47, x".repeat(200)));
        assert_eq!(other.code, ErrorCode::Internal);
        assert!(other.message.len() < 700);
    }
}
