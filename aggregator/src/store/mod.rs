//! ClickHouse storage: connection, version detection, migrations, and the row types written by
//! the ingest pipeline (see [`crate::ingest`]).
pub use inferscope_rows as rows;
mod ddl;
pub mod schema;

use std::time::Duration;

use clickhouse::Client;
use schema::{
    create_database, migrations, migrations_table, retention_statements, valid_identifier,
    ChVersion, SchemaOptions,
};
use tracing::info;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server answered with an error or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

/// Where and how to store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// HTTP URL of ClickHouse, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database (created if missing).
    pub database: String,
    /// User.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Days to keep data, where the server supports TTL (0: forever).
    pub retention_days: u32,
    /// A ClickHouse cluster (`remote_servers` name): replicated local tables and `Distributed`
    /// tables created `ON CLUSTER`, synchronous distributed inserts. `None`: one server.
    pub cluster: Option<String>,
}

/// A connected store.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// Database name.
    pub database: String,
    /// Server version.
    pub version: ChVersion,
    /// The cluster, when the tables are distributed over one.
    pub cluster: Option<String>,
}

impl Store {
    /// Connects (waiting up to `wait` for the server), detects its version, creates the
    /// database and applies pending migrations.
    pub async fn open(cfg: &StoreConfig, wait: Duration) -> Result<Self, StoreError> {
        if !valid_identifier(&cfg.database) {
            return Err(StoreError::Config(format!(
                "invalid database name {:?}: use letters, digits and _",
                cfg.database
            )));
        }
        if let Some(c) = cfg.cluster.as_deref().filter(|c| !valid_identifier(c)) {
            return Err(StoreError::Config(format!(
                "invalid cluster name {c:?}: use letters, digits and _"
            )));
        }
        let mut client = Client::default().with_url(&cfg.url).with_validation(false);
        if let Some(u) = &cfg.user {
            client = client.with_user(u);
        }
        if let Some(p) = &cfg.password {
            client = client.with_password(p);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let version: String = loop {
            match client.query("SELECT version()").fetch_one::<String>().await {
                Ok(v) => break v,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, url = %cfg.url, "clickhouse not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let version = ChVersion::parse(&version).ok_or_else(|| {
            StoreError::Config(format!("unrecognised clickhouse version {version:?}"))
        })?;
        let store = Self {
            client,
            database: cfg.database.clone(),
            version,
            cluster: cfg.cluster.clone(),
        };
        if let Some(c) = &store.cluster {
            store.check_cluster(c).await?;
        }
        store.migrate(cfg.retention_days).await?;
        Ok(store)
    }

    /// The underlying client (queries bind parameters with `?` and `.bind()`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `db.table`.
    pub fn table(&self, t: &str) -> String {
        format!("{}.{t}", self.database)
    }

    /// The rows of one insert are written before it returns: on a cluster every insert goes
    /// through a `Distributed` table synchronously (`insert_distributed_sync`), so that an
    /// acknowledgement still means stored (on one replica of each shard it touches).
    pub fn insert_client(&self) -> Client {
        let c = self.client.clone().with_database(&self.database);
        match self.cluster {
            Some(_) => c.with_setting("insert_distributed_sync", "1"),
            None => c,
        }
    }

    /// Runs one migration's statements, then records it.
    async fn apply(&self, db: &str, m: &schema::Migration) -> Result<(), StoreError> {
        for s in &m.statements {
            self.client.query(s).execute().await?;
        }
        self.insert_client()
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES (?, ?, now())"
            ))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await?;
        Ok(())
    }

    /// Whether `version` gets recorded within 60 s (by an aggregator migrating at the same time).
    async fn recorded_by_another(&self, db: &str, version: u32) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let n: u64 = self
                .client
                .query(&format!(
                    "SELECT count() FROM {db}.schema_migrations WHERE version = ?"
                ))
                .bind(version)
                .fetch_one()
                .await?;
            if n > 0 {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(false)
    }

    /// Refuses a cluster the server does not define, and says which servers and coordinator
    /// it has (ZooKeeper on 18.16, ClickHouse Keeper or ZooKeeper on current releases: both
    /// answer through `system.zookeeper`).
    async fn check_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        let servers: u64 = self
            .client
            .query("SELECT count() FROM system.clusters WHERE cluster = ?")
            .bind(cluster)
            .fetch_one()
            .await?;
        if servers == 0 {
            return Err(StoreError::Config(format!(
                "cluster {cluster:?} is not defined on this ClickHouse server (remote_servers)"
            )));
        }
        let coordinator = self
            .client
            .query("SELECT count() FROM system.zookeeper WHERE path = '/'")
            .fetch_one::<u64>()
            .await;
        if let Err(e) = coordinator {
            return Err(StoreError::Config(format!(
                "cluster {cluster:?}: no ZooKeeper/Keeper reachable from ClickHouse \
                 (replicated tables need one): {e}"
            )));
        }
        info!(cluster, servers, clickhouse = ?self.version, "clickhouse cluster mode");
        Ok(())
    }

    async fn migrate(&self, retention_days: u32) -> Result<(), StoreError> {
        let db = &self.database;
        let opts = SchemaOptions {
            database: db.clone(),
            version: self.version,
            retention_days,
            cluster: self.cluster.clone(),
        };
        self.client.query(&create_database(&opts)).execute().await?;
        for s in migrations_table(&opts) {
            self.client.query(&s).execute().await?;
        }
        let applied: Vec<u32> = self
            .client
            .query(&format!(
                "SELECT DISTINCT version FROM {db}.schema_migrations"
            ))
            .fetch_all()
            .await?;
        for m in migrations(&opts) {
            if applied.contains(&m.version) {
                continue;
            }
            if let Err(e) = self.apply(db, &m).await {
                tracing::warn!(version = m.version, error = %e, "migration failed: waiting up to 60 s in case another aggregator is applying it");
                // Replicas starting together race on the same migration (an ALTER that the
                // other one ran already fails): wait for whoever got ahead to record it.
                if !self.recorded_by_another(db, m.version).await? {
                    return Err(e);
                }
                info!(
                    version = m.version,
                    "migration applied by another aggregator"
                );
                continue;
            }
            info!(version = m.version, name = m.name, clickhouse = ?self.version, "applied migration");
        }
        for s in retention_statements(&opts) {
            // Not fatal: the data is still served, only kept longer than asked.
            if let Err(e) = self.client.query(&s).execute().await {
                tracing::warn!(statement = %s, error = %e, "could not set the retention TTL");
            }
        }
        Ok(())
    }
}
