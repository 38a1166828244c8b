//! ClickHouse schema: versioned migrations, written once for Debian's 18.16 server (what tests
//! run on) and current releases (what users run), with newer features switched on by the server
//! version detected at start.
//!
//! Every table uses the new-style `MergeTree() PARTITION BY … ORDER BY …` syntax. Feature
//! switches: `LowCardinality(String)` for repetitive strings (≥ 19.0), `TTL` on the partition
//! date (≥ 19.6), a `bloom_filter` skip index on `requests.trace_id` (≥ 20.1).

pub use super::ddl::create_database;
use super::ddl::{Ddl, Renderer};

/// A server version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl ChVersion {
    /// Parses `SELECT version()` output such as `18.16.1` or `24.8.4.13`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().split('.');
        Some(Self {
            major: it.next()?.parse().ok()?,
            minor: it.next()?.parse().ok()?,
        })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        self >= Self { major, minor }
    }

    /// `LowCardinality(String)` is usable.
    pub fn low_cardinality(self) -> bool {
        self.at_least(19, 0)
    }

    /// Table `TTL` is supported.
    pub fn ttl(self) -> bool {
        self.at_least(19, 6)
    }

    /// `bloom_filter` data-skipping indexes work without experimental settings.
    pub fn bloom_filter_index(self) -> bool {
        self.at_least(20, 1)
    }
}

/// What the DDL is rendered for.
#[derive(Debug, Clone)]
pub struct SchemaOptions {
    /// Database name (validated: `[A-Za-z_][A-Za-z0-9_]*`).
    pub database: String,
    /// Server version.
    pub version: ChVersion,
    /// Days to keep data (0: forever). Applied where TTL is supported.
    pub retention_days: u32,
    /// A ClickHouse cluster (`remote_servers` name, validated like the database): every table
    /// becomes a replicated `<table>_local` on each server plus a `Distributed` table under the
    /// table's own name, all created `ON CLUSTER`. `None`: one server.
    pub cluster: Option<String>,
}

/// Whether `name` is a safe unquoted identifier.
pub fn valid_identifier(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && name.len() <= 64
}

/// One migration: an ordered list of statements.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Version number (applied in increasing order, recorded in `schema_migrations`).
    pub version: u32,
    /// Short name.
    pub name: &'static str,
    /// Statements.
    pub statements: Vec<String>,
}

/// The `requests_ms` view (`first_text` adds time to first visible text, migration 5).
fn requests_ms(db: &str, first_text: bool) -> String {
    let first_text = if first_text {
        " first_text_ns / 1e6 AS first_text_ms,\n   "
    } else {
        ""
    };
    format!(
        "SELECT
    start, trace_id, node, pid, engine, model, method, path, status, outcome, stream,
    e2e_ns / 1e6 AS e2e_ms, ttft_ns / 1e6 AS ttft_ms,{first_text} tpot_ns / 1e6 AS tpot_ms,
    frontend_ns / 1e6 AS frontend_ms, queue_ns / 1e6 AS queue_ms, prefill_ns / 1e6 AS prefill_ms,
    decode_ns / 1e6 AS decode_ms, delivery_ns / 1e6 AS delivery_ms,
    engine_ttft_ns / 1e6 AS engine_ttft_ms, engine_e2e_ns / 1e6 AS engine_e2e_ms,
    read_wait_ns / 1e6 AS read_wait_ms, chunks, engine_steps, req_bytes, resp_bytes,
    client, server, response_id, x_request_id
FROM {db}.requests"
    )
}

/// The nullable metrics kept in the per-minute rollup besides e2e and ttft (each with its count).
pub const ROLLUP_NULLABLE: [&str; 6] =
    ["tpot", "frontend", "queue", "prefill", "decode", "delivery"];

/// How the per-minute rollup groups.
const ROLLUP_GROUP_BY: &str = " GROUP BY minute, model, node, engine";

/// The rollup's aggregate columns: request count, t-digest states of e2e and ttft, and of each
/// nullable metric with the count of requests that have it.
fn rollup_columns(lc: &str) -> String {
    let mut v = vec![
        "minute DateTime".to_string(),
        format!("model {lc}"),
        format!("node {lc}"),
        format!("engine {lc}"),
        "requests AggregateFunction(count)".into(),
        "e2e AggregateFunction(quantilesTDigest(0.5), UInt64)".into(),
        "ttft AggregateFunction(quantilesTDigest(0.5), UInt64)".into(),
    ];
    for m in ROLLUP_NULLABLE {
        v.push(format!(
            "{m} AggregateFunction(quantilesTDigestIf(0.5), UInt64, UInt8)"
        ));
        v.push(format!("{m}_n AggregateFunction(countIf, UInt8)"));
    }
    v.iter()
        .map(|c| format!("    {c}"))
        .collect::<Vec<_>>()
        .join(",\n")
}

/// The materialized view's SELECT list (its FROM and GROUP BY are added by the renderer).
fn rollup_select() -> String {
    let mut s = String::from(
        "SELECT toStartOfMinute(start) AS minute, model, node, engine, countState() AS requests, \
         quantilesTDigestState(0.5)(e2e_ns) AS e2e, quantilesTDigestState(0.5)(ttft_ns) AS ttft",
    );
    for m in ROLLUP_NULLABLE {
        s.push_str(&format!(
            ", quantilesTDigestIfState(0.5)(ifNull({m}_ns, 0), isNotNull({m}_ns)) AS {m}, \
             countIfState(isNotNull({m}_ns)) AS {m}_n"
        ));
    }
    s
}

/// The columns of `hops`: one row per half of a hop, written by two views as each half is
/// inserted (the caller's `http.client` span; the server's request row) and merged at read by
/// `hop_id` (`anyIf(…, side = 'client')`, …). `start` is the minute the half started in: a
/// coarse filter before merging. No aggregate states: a view only projects (measured by
/// `hop-bench`: an `AggregatingMergeTree` of `-If` states cost 9.6 µs of ClickHouse CPU per
/// hop at insert).
fn hop_columns(lc: &str) -> String {
    [
        "start DateTime".to_string(),
        "hop_id String".into(),
        format!("side {lc}"),
        format!("node {lc}"),
        "pid UInt32".into(),
        "trace_id String".into(),
        "parent_span_id String".into(),
        format!("link {lc}"),
        "start_ns UInt64".into(),
        "end_ns UInt64".into(),
        "status UInt16".into(),
    ]
    .iter()
    .map(|c| format!("    {c}"))
    .collect::<Vec<_>>()
    .join(",\n")
}

/// The view's projection of one half: `side` `client` from `spans`, `server` from `requests`.
fn hop_select(side: &str) -> String {
    let (id, parent, link, status) = match side {
        "client" => (
            "span_id",
            "parent_span_id",
            "attr_values[indexOf(attr_keys, 'inferscope.hop.link')]",
            "toUInt16(0)",
        ),
        _ => ("hop_id", "''", "''", "toUInt16(status)"),
    };
    format!(
        "SELECT toStartOfMinute(start) AS start, {id} AS hop_id, '{side}' AS side, node, \
         toUInt32(pid) AS pid, trace_id, {parent} AS parent_span_id, {link} AS link, \
         start_unix_ns AS start_ns, end_unix_ns AS end_ns, {status} AS status"
    )
}

/// All migrations, rendered for `o`.
pub fn migrations(o: &SchemaOptions) -> Vec<Migration> {
    let db = &o.database;
    let lc = if o.version.low_cardinality() {
        "LowCardinality(String)"
    } else {
        "String"
    };
    let ttl = if o.version.ttl() && o.retention_days > 0 {
        format!("TTL start + INTERVAL {} DAY\n", o.retention_days)
    } else {
        String::new()
    };
    let trace_index = if o.version.bloom_filter_index() {
        ",\n    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4"
    } else {
        ""
    };
    let daily = |order: &str| {
        format!("PARTITION BY toYYYYMMDD(start)\nORDER BY ({order})\n{ttl}SETTINGS index_granularity = 8192")
    };
    let alter = |table, clause: String| Ddl::AddColumns { table, clause };
    let steps: Vec<(u32, &'static str, Vec<Ddl>)> = vec![
        (
            1,
            "requests, spans, engine steps, batches, views",
            vec![
                Ddl::Table {
                    name: "requests",
                    columns: format!(
                        "    start DateTime,
    start_unix_ns UInt64,
    end_unix_ns UInt64,
    trace_id String,
    node {lc},
    pid UInt32,
    engine {lc},
    model {lc},
    method {lc},
    path {lc},
    status UInt16,
    outcome {lc},
    stream UInt8,
    e2e_ns UInt64,
    ttft_ns UInt64,
    tpot_ns Nullable(UInt64),
    frontend_ns Nullable(UInt64),
    queue_ns Nullable(UInt64),
    prefill_ns Nullable(UInt64),
    decode_ns Nullable(UInt64),
    delivery_ns Nullable(UInt64),
    engine_ttft_ns Nullable(UInt64),
    engine_e2e_ns Nullable(UInt64),
    read_wait_ns UInt64,
    req_bytes UInt64,
    resp_bytes UInt64,
    chunks UInt32,
    engine_steps UInt32,
    max_gap_ns UInt64,
    client String,
    server String,
    response_id String,
    x_request_id String,
    engine_request_id String,
    gave_up String,
    step_ids Array(UInt64),
    chunk_offsets_ns Array(UInt64),
    batch_id String"
                    ),
                    indexes: trace_index,
                    engine: "MergeTree",
                    tail: daily("model, node, start, trace_id"),
                    // A request and its spans on one shard.
                    shard_key: "cityHash64(trace_id)",
                },
                Ddl::Table {
                    name: "spans",
                    columns: format!(
                        "    start DateTime,
    trace_id String,
    span_id String,
    parent_span_id String,
    name {lc},
    start_unix_ns UInt64,
    end_unix_ns UInt64,
    node {lc},
    pid UInt32,
    attr_keys Array(String),
    attr_values Array(String),
    link_trace_ids Array(String),
    link_span_ids Array(String),
    batch_id String"
                    ),
                    indexes: "",
                    engine: "MergeTree",
                    tail: daily("trace_id, start_unix_ns"),
                    shard_key: "cityHash64(trace_id)",
                },
                Ddl::Table {
                    name: "engine_steps",
                    columns: format!(
                        "    start DateTime,
    node {lc},
    engine_instance String,
    step_id UInt64,
    start_unix_ns UInt64,
    end_unix_ns UInt64,
    batch_size UInt32"
                    ),
                    // Replacing: the same step stored twice collapses; on a cluster the key
                    // keeps a step's copies on one shard.
                    indexes: "",
                    engine: "ReplacingMergeTree",
                    tail: daily("node, engine_instance, step_id"),
                    shard_key: "cityHash64(node, engine_instance)",
                },
                Ddl::Table {
                    name: "ingested_batches",
                    columns: "    received DateTime,
    node_id String,
    boot_id String,
    sequence UInt64,
    requests UInt32,
    spans UInt32"
                        .into(),
                    indexes: "",
                    engine: "MergeTree",
                    tail: "PARTITION BY toYYYYMM(received)\nORDER BY (node_id, boot_id, sequence)"
                        .into(),
                    shard_key: "cityHash64(node_id)",
                },
                Ddl::View {
                    name: "requests_ms",
                    select: requests_ms(db, false),
                },
                Ddl::View {
                    name: "engine_steps_ms",
                    select: format!(
                        "SELECT
    start, node, engine_instance, step_id, (end_unix_ns - start_unix_ns) / 1e6 AS duration_ms,
    batch_size
FROM {db}.engine_steps"
                    ),
                },
            ],
        ),
        (
            2,
            "requests: engine_instance and netns",
            // One statement, so that a failure leaves the table as it was. Rows stored before
            // have '' and 0: their steps' instance is the boot id in their batch_id (docs/schema.md).
            vec![alter(
                "requests",
                "ADD COLUMN engine_instance String DEFAULT '', ADD COLUMN netns UInt32 DEFAULT 0"
                    .into(),
            )],
        ),
        (
            3,
            "requests: structured endpoints and TCP sequence numbers",
            // One statement per migration (a failure leaves the table as it was). Rows stored
            // before: '' / 0 / NULL; `client`/`server` (addr:port text) are still written for
            // one release (docs/schema.md).
            vec![alter(
                "requests",
                "ADD COLUMN client_ip String DEFAULT '', \
             ADD COLUMN client_port UInt16 DEFAULT 0, ADD COLUMN server_ip String DEFAULT '', \
             ADD COLUMN server_port UInt16 DEFAULT 0, \
             ADD COLUMN req_tcp_seq Nullable(UInt32), ADD COLUMN resp_tcp_seq Nullable(UInt32)"
                    .into(),
            )],
        ),
        (
            4,
            "engine_steps: span context and batch unit",
            // Steps stored before have '': the trace API derives their span ids
            // (inferscope_api::step_context over the node name).
            vec![alter(
                "engine_steps",
                "ADD COLUMN trace_id String DEFAULT '', \
             ADD COLUMN span_id String DEFAULT '', ADD COLUMN batch_unit String DEFAULT ''"
                    .into(),
            )],
        ),
        (
            5,
            "requests: time to first visible text",
            // NULL for requests stored before, and for non-streamed ones.
            vec![
                alter(
                    "requests",
                    "ADD COLUMN first_text_ns Nullable(UInt64)".into(),
                ),
                Ddl::DropView {
                    name: "requests_ms",
                },
                Ddl::View {
                    name: "requests_ms",
                    select: requests_ms(db, true),
                },
            ],
        ),
        (
            6,
            "requests: engine output times",
            vec![alter(
                "requests",
                "ADD COLUMN engine_output_offsets_ns Array(UInt64)".into(),
            )],
        ),
        (
            7,
            "requests: run tags",
            // `key=value` per resource attribute (node-probe --tag); [] for rows stored before.
            vec![alter("requests", "ADD COLUMN tags Array(String)".into())],
        ),
        (
            8,
            "requests: tenant label",
            // node-probe --tenant-header/--tenant-field (bounded cardinality); '' when not
            // extracted and for rows stored before.
            vec![alter(
                "requests",
                format!("ADD COLUMN tenant {lc} DEFAULT ''"),
            )],
        ),
        (
            9,
            "requests: token usage",
            // The response's `usage` counts; NULL when the server sent none (streams without
            // stream_options.include_usage), when its end was not captured, and before.
            vec![alter(
                "requests",
                "ADD COLUMN prompt_tokens Nullable(UInt32), \
             ADD COLUMN completion_tokens Nullable(UInt32)"
                    .into(),
            )],
        ),
        (
            10,
            "engine_steps: tokens and the GPU side",
            // From the CUDA hooks; gpu_ns NULL (and the rest 0, gpu_class '') for steps the
            // hooks did not see and for rows stored before.
            vec![alter(
                "engine_steps",
                format!(
                    "ADD COLUMN tokens UInt32 DEFAULT 0, \
             ADD COLUMN gpu_class {lc} DEFAULT '', ADD COLUMN gpu_ns Nullable(UInt64), \
             ADD COLUMN gpu_launch_ns UInt64 DEFAULT 0, ADD COLUMN graph_launches UInt32 DEFAULT 0, \
             ADD COLUMN kernel_launches UInt64 DEFAULT 0, ADD COLUMN dtoh_bytes UInt64 DEFAULT 0, \
             ADD COLUMN htod_bytes UInt64 DEFAULT 0, ADD COLUMN sync_wait_ns UInt64 DEFAULT 0, \
             ADD COLUMN host_bound UInt8 DEFAULT 0, ADD COLUMN gpu_ranks UInt32 DEFAULT 0, \
             ADD COLUMN gpu_upper_bound UInt8 DEFAULT 0"
                ),
            )],
        ),
        (
            11,
            "requests: GPU time",
            // Latency and cost views of the request's GPU time and the weights of the cost
            // view (its tokens per step, beside step_ids); NULL / [] without GPU steps.
            vec![alter(
                "requests",
                "ADD COLUMN gpu_ns Nullable(UInt64), \
             ADD COLUMN gpu_cost_ns Nullable(UInt64), ADD COLUMN gpu_host_bound_ns Nullable(UInt64), \
             ADD COLUMN gpu_upper_bound_steps Nullable(UInt32), ADD COLUMN step_tokens Array(UInt32)"
                    .into(),
            )],
        ),
        (
            12,
            "engine_steps and requests: NCCL collectives and stragglers",
            // From the NCCL hooks; NULL (and 0) where none were seen and for rows stored before.
            vec![
                alter(
                    "engine_steps",
                    "ADD COLUMN collectives Nullable(UInt32), \
             ADD COLUMN collective_wait_ns UInt64 DEFAULT 0, \
             ADD COLUMN straggler_rank Nullable(UInt32), ADD COLUMN straggler_lag_ns UInt64 DEFAULT 0"
                        .into(),
                ),
                alter(
                    "requests",
                    "ADD COLUMN collectives Nullable(UInt32), \
             ADD COLUMN collective_wait_ns Nullable(UInt64), \
             ADD COLUMN straggler_rank Nullable(UInt32), ADD COLUMN straggler_lag_ns Nullable(UInt64)"
                        .into(),
                ),
            ],
        ),
        (
            13,
            "requests_1m: per-minute rollups (t-digest states) of the request metrics",
            // Kept by a materialized view from every insert into requests from now on (rows
            // stored before are not rolled up: the breakdown API answers from raw rows unless
            // asked for source=rollup). Small: one row per minute, model, node and engine.
            vec![
                Ddl::Table {
                    name: "requests_1m",
                    columns: rollup_columns(lc),
                    indexes: "",
                    engine: "AggregatingMergeTree",
                    tail: "PARTITION BY toYYYYMM(minute)\nORDER BY (minute, model, node, engine)"
                        .into(),
                    shard_key: "cityHash64(model, node)",
                },
                Ddl::MaterializedView {
                    name: "requests_1m_mv",
                    to: "requests_1m",
                    from: "requests",
                    select: rollup_select(),
                    after_from: ROLLUP_GROUP_BY,
                },
            ],
        ),
        (
            14,
            "requests: the engine's token gaps",
            // From engine_output_offsets_ns at ingest: the engine-side TPOT and longest gap,
            // beside the wire's tpot_ns and max_gap_ns; NULL with fewer than two engine
            // outputs and for rows stored before.
            vec![alter(
                "requests",
                "ADD COLUMN engine_tpot_ns Nullable(UInt64), \
             ADD COLUMN engine_max_gap_ns Nullable(UInt64)"
                    .into(),
            )],
        ),
        (
            15,
            "hops: both halves of each cross-process HTTP exchange, joined by hop id",
            // requests.hop_id: the server half's id (from its TCP sequence numbers, at ingest;
            // '' for rows stored before). The caller's half is its `http.client` span, whose
            // span id is the same hop id. Both stay where they are stored; `hops` is derived:
            // two views copy each half as it arrives (one row per half, ordered by hop id), and
            // reads merge by hop id, so a half stored late (a spool replay, a restarted node) is
            // joined when it lands.
            vec![
                alter("requests", "ADD COLUMN hop_id String DEFAULT ''".into()),
                Ddl::Table {
                    name: "hops",
                    columns: hop_columns(lc),
                    indexes: "",
                    engine: "MergeTree",
                    tail: "PARTITION BY toYYYYMM(start)\nORDER BY hop_id".into(),
                    shard_key: "cityHash64(hop_id)",
                },
                Ddl::MaterializedView {
                    name: "hops_client_mv",
                    to: "hops",
                    from: "spans",
                    select: hop_select("client"),
                    after_from: " WHERE name = 'http.client'",
                },
                Ddl::MaterializedView {
                    name: "hops_server_mv",
                    to: "hops",
                    from: "requests",
                    select: hop_select("server"),
                    after_from: " WHERE hop_id != ''",
                },
            ],
        ),
    ];
    let mut r = Renderer::new(o);
    steps
        .into_iter()
        .map(|(version, name, ddl)| Migration {
            version,
            name,
            statements: ddl.iter().flat_map(|d| r.render(d)).collect(),
        })
        .collect()
}

/// Days the batch markers are kept where the server supports TTL: the dedup reload at start
/// reads only the last day.
pub const BATCH_MARKER_DAYS: u32 = 7;

/// Statements that bring existing tables' TTL in line with the options, run at every start
/// after the migrations (a `--retention-days` changed later takes effect): data tables get
/// `retention_days` when it is set, batch markers [`BATCH_MARKER_DAYS`]. Empty where the
/// server has no TTL. On a cluster they change the local tables (TTL is a storage setting).
pub fn retention_statements(o: &SchemaOptions) -> Vec<String> {
    if !o.version.ttl() {
        return Vec::new();
    }
    let db = &o.database;
    let (suffix, on) = match &o.cluster {
        Some(c) => ("_local", format!(" ON CLUSTER {c}")),
        None => ("", String::new()),
    };
    let mut v = Vec::new();
    if o.retention_days > 0 {
        for t in ["requests", "spans", "engine_steps", "hops"] {
            v.push(format!(
                "ALTER TABLE {db}.{t}{suffix}{on} MODIFY TTL start + INTERVAL {} DAY",
                o.retention_days
            ));
        }
    }
    v.push(format!(
        "ALTER TABLE {db}.ingested_batches{suffix}{on} MODIFY TTL received + INTERVAL {BATCH_MARKER_DAYS} DAY"
    ));
    v
}

/// The bookkeeping table of applied migrations (on a cluster: replicated per shard, read and
/// written through its `Distributed` table like the data).
pub fn migrations_table(o: &SchemaOptions) -> Vec<String> {
    Renderer::new(o).render(&Ddl::Table {
        name: "schema_migrations",
        columns: "    version UInt32,\n    name String,\n    applied_at DateTime".into(),
        indexes: "",
        engine: "MergeTree",
        tail: "ORDER BY version".into(),
        shard_key: "version",
    })
}

/// Every statement that creates the schema from nothing for `o`, in order (the database, the
/// bookkeeping table, each migration, the TTLs): what `aggregator --print-schema` prints.
pub fn full_schema(o: &SchemaOptions) -> Vec<String> {
    let mut v = vec![create_database(o)];
    v.extend(migrations_table(o));
    for m in migrations(o) {
        v.extend(m.statements);
    }
    v.extend(retention_statements(o));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_features() {
        let v18 = ChVersion::parse("18.16.1").unwrap();
        let v24 = ChVersion::parse("24.8.4.13").unwrap();
        assert!(!v18.low_cardinality() && !v18.ttl() && !v18.bloom_filter_index());
        let opts = |version, retention_days| SchemaOptions {
            database: "db".into(),
            version,
            retention_days,
            cluster: None,
        };
        assert!(retention_statements(&opts(v18, 30)).is_empty());
        assert_eq!(
            retention_statements(&opts(v24, 30)),
            [
                "ALTER TABLE db.requests MODIFY TTL start + INTERVAL 30 DAY",
                "ALTER TABLE db.spans MODIFY TTL start + INTERVAL 30 DAY",
                "ALTER TABLE db.engine_steps MODIFY TTL start + INTERVAL 30 DAY",
                "ALTER TABLE db.hops MODIFY TTL start + INTERVAL 30 DAY",
                "ALTER TABLE db.ingested_batches MODIFY TTL received + INTERVAL 7 DAY",
            ]
        );
        assert_eq!(retention_statements(&opts(v24, 0)).len(), 1);
        assert!(v24.low_cardinality() && v24.ttl() && v24.bloom_filter_index());
        assert!(ChVersion::parse("x").is_none());
        let sql = |v| {
            migrations(&SchemaOptions {
                database: "inferscope".into(),
                version: v,
                retention_days: 30,
                cluster: None,
            })[0]
                .statements
                .join("\n")
        };
        let old = sql(v18);
        assert!(
            !old.contains("LowCardinality")
                && !old.contains("TTL")
                && !old.contains("bloom_filter")
        );
        let new = sql(v24);
        assert!(
            new.contains("LowCardinality(String)") && new.contains("TTL start + INTERVAL 30 DAY")
        );
        assert!(new.contains("bloom_filter"));
    }

    #[test]
    fn identifiers() {
        assert!(valid_identifier("inferscope") && valid_identifier("_x1"));
        assert!(!valid_identifier("1x") && !valid_identifier("a;drop") && !valid_identifier(""));
    }
}
