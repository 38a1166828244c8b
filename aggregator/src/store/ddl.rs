//! Rendering schema changes for one ClickHouse server or for a cluster: each change is
//! declared once as a [`Ddl`] (in `schema.rs`'s migrations) and [`Renderer`] turns it into the
//! statements of the target (a cluster: replicated `<table>_local` tables, `Distributed` tables
//! under the tables' names, `ON CLUSTER`).
use super::schema::SchemaOptions;

/// One schema change, rendered for one server or for a cluster by [`Renderer`].
pub(crate) enum Ddl {
    /// A table: columns (`name type …`, one per line), data-skipping indexes (`,\n    INDEX …`,
    /// or empty), engine family (`MergeTree`, `ReplacingMergeTree`), the clauses after the
    /// engine, and the sharding key of its `Distributed` table on a cluster.
    Table {
        name: &'static str,
        columns: String,
        indexes: &'static str,
        engine: &'static str,
        tail: String,
        shard_key: &'static str,
    },
    /// `ALTER TABLE … ADD COLUMN …[, ADD COLUMN …]`.
    AddColumns { table: &'static str, clause: String },
    /// A view over tables of the database (on a cluster it reads the `Distributed` tables,
    /// which keep the tables' names).
    View { name: &'static str, select: String },
    /// Drops a view.
    DropView { name: &'static str },
    /// A materialized view writing `select` (over the rows inserted into table `from`,
    /// `after_from` holding its ` WHERE …` / ` GROUP BY …` clauses) into table `to`. On a cluster it is created on every server over the local tables, so each
    /// insert is rolled up once, where it lands (replicas copy the target's parts).
    MaterializedView {
        name: &'static str,
        to: &'static str,
        from: &'static str,
        select: String,
        after_from: &'static str,
    },
}

/// Renders [`Ddl`] for `o`, remembering each table's columns and sharding key: on a cluster a
/// `Distributed` table is not altered (18.16 refuses `ALTER … ON CLUSTER` on a non-replicated
/// table of a replicated shard, and a new replica could copy the old structure) but created
/// again with the columns the local table has after the change (it holds no data: inserts
/// into it are synchronous).
pub(crate) struct Renderer<'a> {
    o: &'a SchemaOptions,
    tables: std::collections::HashMap<&'static str, (Vec<String>, &'static str)>,
}

impl<'a> Renderer<'a> {
    pub(crate) fn new(o: &'a SchemaOptions) -> Self {
        Self {
            o,
            tables: std::collections::HashMap::new(),
        }
    }

    /// The statements of `d` (one server: one; a cluster: up to three).
    pub(crate) fn render(&mut self, d: &Ddl) -> Vec<String> {
        let db = &self.o.database;
        if let Ddl::Table {
            name,
            columns,
            shard_key,
            ..
        } = d
        {
            let cols = columns.split(",\n").map(|c| c.trim().to_owned()).collect();
            self.tables.insert(name, (cols, shard_key));
        }
        if let Ddl::AddColumns { table, clause } = d {
            let (cols, _) = self
                .tables
                .get_mut(table)
                .expect("table created before it is altered");
            cols.extend(
                clause
                    .split("ADD COLUMN ")
                    .map(|c| c.trim().trim_end_matches(',').trim())
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
        }
        let Some(c) = self.o.cluster.as_deref() else {
            return vec![match d {
                Ddl::Table {
                    name,
                    columns,
                    indexes,
                    engine,
                    tail,
                    ..
                } => format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{name} (\n{columns}{indexes}\n) ENGINE = {engine}()\n{tail}"
                ),
                Ddl::AddColumns { table, clause } => format!("ALTER TABLE {db}.{table} {clause}"),
                Ddl::View { name, select } => {
                    format!("CREATE VIEW IF NOT EXISTS {db}.{name} AS {select}")
                }
                Ddl::DropView { name } => format!("DROP TABLE IF EXISTS {db}.{name}"),
                Ddl::MaterializedView {
                    name,
                    to,
                    from,
                    select,
                    after_from,
                } => format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name} TO {db}.{to} AS {select} FROM {db}.{from}{after_from}"
                ),
            }];
        };
        match d {
            Ddl::Table {
                name,
                columns,
                indexes,
                engine,
                tail,
                ..
            } => vec![
                // One replica path per shard and table; `{shard}`/`{replica}` are the servers'
                // macros.
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{name}_local ON CLUSTER {c} (\n{columns}{indexes}\n) \
                     ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/{db}/{name}', '{{replica}}')\n{tail}"
                ),
                self.distributed(name, c),
            ],
            Ddl::AddColumns { table, clause } => vec![
                format!("ALTER TABLE {db}.{table}_local ON CLUSTER {c} {clause}"),
                format!("DROP TABLE IF EXISTS {db}.{table} ON CLUSTER {c}"),
                self.distributed(table, c),
            ],
            Ddl::View { name, select } => vec![format!(
                "CREATE VIEW IF NOT EXISTS {db}.{name} ON CLUSTER {c} AS {select}"
            )],
            Ddl::DropView { name } => {
                vec![format!("DROP TABLE IF EXISTS {db}.{name} ON CLUSTER {c}")]
            }
            Ddl::MaterializedView {
                name,
                to,
                from,
                select,
                after_from,
            } => vec![format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name} ON CLUSTER {c} TO {db}.{to}_local AS {select} FROM {db}.{from}_local{after_from}"
            )],
        }
    }

    /// The `Distributed` table over `<name>_local`, with its current columns.
    fn distributed(&self, name: &str, cluster: &str) -> String {
        let db = &self.o.database;
        let (cols, key) = &self.tables[name];
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} (\n    {}\n) \
             ENGINE = Distributed({cluster}, {db}, {name}_local, {key})",
            cols.join(",\n    ")
        )
    }
}

/// `CREATE DATABASE` (on every server of a cluster).
pub fn create_database(o: &SchemaOptions) -> String {
    match &o.cluster {
        Some(c) => format!(
            "CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {c}",
            o.database
        ),
        None => format!("CREATE DATABASE IF NOT EXISTS {}", o.database),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::schema::{full_schema, ChVersion, SchemaOptions};

    #[test]
    fn cluster_ddl_is_the_single_server_ddl_on_replicated_local_and_distributed_tables() {
        let v24 = ChVersion::parse("24.8").unwrap();
        let o = |cluster: Option<&str>| SchemaOptions {
            database: "inferscope".into(),
            version: v24,
            retention_days: 0,
            cluster: cluster.map(str::to_owned),
        };
        let (one, many) = (full_schema(&o(None)), full_schema(&o(Some("c1"))));
        assert_eq!(one[0], "CREATE DATABASE IF NOT EXISTS inferscope");
        assert_eq!(
            many[0],
            "CREATE DATABASE IF NOT EXISTS inferscope ON CLUSTER c1"
        );
        let find = |prefix: &str| {
            many.iter()
                .position(|m| m.starts_with(prefix))
                .unwrap_or_else(|| panic!("no statement starting {prefix:?}"))
        };
        // The last Distributed table of each table has every column its local table has.
        let mut columns: std::collections::HashMap<String, Vec<String>> = Default::default();
        for s in &one[1..] {
            if let Some(rest) = s.strip_prefix("CREATE TABLE IF NOT EXISTS inferscope.") {
                let (name, body) = rest.split_once(" (").unwrap();
                let (cols, tail) = body.split_once("\n) ENGINE = ").unwrap();
                let local = &many[find(&format!(
                    "CREATE TABLE IF NOT EXISTS inferscope.{name}_local ON CLUSTER c1 ("
                ))];
                assert!(local.contains(cols), "{name}: columns differ");
                let (engine, after) = tail.split_once("()").unwrap();
                assert!(
                    local.contains(&format!(
                        "ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/inferscope/{name}', '{{replica}}'){after}"
                    )),
                    "{local}"
                );
                let names = cols
                    .split(",\n")
                    .map(|c| c.split_whitespace().next().unwrap().to_owned())
                    .filter(|c| c != "INDEX")
                    .collect();
                columns.insert(name.to_owned(), names);
            } else if let Some((table, ttl)) = s
                .strip_prefix("ALTER TABLE inferscope.")
                .and_then(|r| r.split_once(" MODIFY TTL "))
            {
                find(&format!(
                    "ALTER TABLE inferscope.{table}_local ON CLUSTER c1 MODIFY TTL {ttl}"
                ));
            } else if let Some(rest) = s.strip_prefix("ALTER TABLE inferscope.") {
                let (table, clause) = rest.split_once(' ').unwrap();
                let i = find(&format!(
                    "ALTER TABLE inferscope.{table}_local ON CLUSTER c1 {clause}"
                ));
                assert_eq!(
                    many[i + 1],
                    format!("DROP TABLE IF EXISTS inferscope.{table} ON CLUSTER c1")
                );
                assert!(many[i + 2].starts_with(&format!(
                    "CREATE TABLE IF NOT EXISTS inferscope.{table} ON CLUSTER c1 ("
                )));
                let added = clause
                    .split("ADD COLUMN ")
                    .filter_map(|c| c.split_whitespace().next())
                    .map(str::to_owned);
                columns.get_mut(table).unwrap().extend(added);
            } else if let Some(rest) =
                s.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS inferscope.")
            {
                // Over the local tables, into the local target: each insert rolled up once.
                let (name, rest) = rest.split_once(" TO inferscope.").unwrap();
                let (to, select) = rest.split_once(" AS ").unwrap();
                let (select, from) = select.split_once(" FROM inferscope.").unwrap();
                let (from, group) = from.split_once(' ').unwrap();
                find(&format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS inferscope.{name} ON CLUSTER c1 TO inferscope.{to}_local AS {select} FROM inferscope.{from}_local {group}"
                ));
            } else if let Some(rest) = s.strip_prefix("CREATE VIEW IF NOT EXISTS inferscope.") {
                let (name, select) = rest.split_once(" AS ").unwrap();
                find(&format!(
                    "CREATE VIEW IF NOT EXISTS inferscope.{name} ON CLUSTER c1 AS {select}"
                ));
            } else {
                assert!(s.starts_with("DROP TABLE IF EXISTS"), "{s}");
            }
        }
        for (table, cols) in &columns {
            let last = many
                .iter()
                .rev()
                .find(|m| {
                    m.starts_with(&format!(
                        "CREATE TABLE IF NOT EXISTS inferscope.{table} ON CLUSTER c1 ("
                    ))
                })
                .unwrap();
            assert!(last.contains(&format!(
                "ENGINE = Distributed(c1, inferscope, {table}_local, "
            )));
            assert!(!last.contains("INDEX"), "{last}");
            let body = last
                .split_once(" (\n")
                .unwrap()
                .1
                .split_once("\n) ENGINE")
                .unwrap()
                .0;
            let got: Vec<&str> = body
                .split(",\n")
                .map(|c| c.split_whitespace().next().unwrap())
                .collect();
            assert_eq!(&got, cols, "{table}");
        }
        let tables = one.iter().filter(|s| s.starts_with("CREATE TABLE")).count();
        let alters = one
            .iter()
            .filter(|s| s.starts_with("ALTER") && s.contains("ADD COLUMN"))
            .count();
        assert_eq!(many.len(), one.len() + tables + 2 * alters);
    }
}
