//! ClickHouse storage: connection, version detection, migrations, and the row types written by
//! the ingest pipeline (see [`crate::ingest`]).
pub use inferscope_rows as rows;
pub mod schema;

use std::time::Duration;

use clickhouse::Client;
use schema::{
    migrations, migrations_table, retention_statements, valid_identifier, ChVersion, SchemaOptions,
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
}

/// A connected store.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// Database name.
    pub database: String,
    /// Server version.
    pub version: ChVersion,
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
        };
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

    async fn migrate(&self, retention_days: u32) -> Result<(), StoreError> {
        let db = &self.database;
        self.client
            .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .execute()
            .await?;
        self.client.query(&migrations_table(db)).execute().await?;
        let applied: Vec<u32> = self
            .client
            .query(&format!("SELECT version FROM {db}.schema_migrations"))
            .fetch_all()
            .await?;
        let opts = SchemaOptions {
            database: db.clone(),
            version: self.version,
            retention_days,
        };
        for m in migrations(&opts) {
            if applied.contains(&m.version) {
                continue;
            }
            for s in &m.statements {
                self.client.query(s).execute().await?;
            }
            self.client
                .query(&format!(
                    "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES (?, ?, now())"
                ))
                .bind(m.version)
                .bind(m.name)
                .execute()
                .await?;
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
