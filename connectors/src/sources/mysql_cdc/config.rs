//! The MySQL CDC source's settings.

use serde::Deserialize;

/// When the source reads the tables' current rows before streaming changes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot when there is no committed position, then stream.
    #[default]
    Initial,
    /// Never snapshot: stream from the server's current binlog end (or the committed position).
    Never,
    /// Snapshot when there is no committed position or the committed binlog file was purged.
    WhenNeeded,
}

/// `type: mysql_cdc` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MySqlCdcConfig {
    /// `mysql://user:password@host:port` (the user needs REPLICATION SLAVE, REPLICATION
    /// CLIENT and SELECT).
    pub url: String,
    /// Replica id; unique among the server's replicas (default 5400 + a hash of the name).
    #[serde(default)]
    pub server_id: Option<u32>,
    /// Tables captured: regexes over `database.table` (default: every table outside the
    /// system databases).
    #[serde(default)]
    pub include: Vec<String>,
    /// Tables left out: regexes over `database.table`, applied after `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Topic template over `{{database}}` and `{{table}}` (default `cdc_{{database}}_{{table}}`).
    #[serde(default = "MySqlCdcConfig::topic_default")]
    pub topic: String,
    /// Topic for schema-change events (DDL) (default `cdc_schema_changes`).
    #[serde(default = "MySqlCdcConfig::schema_topic_default")]
    pub schema_topic: String,
    /// Topic for heartbeat records, which carry the position while captured tables are idle
    /// (default `cdc_heartbeats`).
    #[serde(default = "MySqlCdcConfig::heartbeat_topic_default")]
    pub heartbeat_topic: String,
    /// `initial` (default), `never` or `when_needed`.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows read per primary-key chunk while snapshotting (default 10000). Up to four chunks
    /// are in memory at once: two read ahead, one being read, one being handed out.
    #[serde(default = "MySqlCdcConfig::snapshot_chunk_rows_default")]
    pub snapshot_chunk_rows: usize,
    /// Server name in the envelope's `source.name` (default: the connector name).
    #[serde(default)]
    pub server_name: Option<String>,
    /// How often an idle server is asked for a heartbeat, so positions advance (default 10 s).
    #[serde(default = "MySqlCdcConfig::heartbeat_interval_ms_default")]
    pub heartbeat_interval_ms: u64,
    /// How long connecting may take (default 10 s).
    #[serde(default = "MySqlCdcConfig::connect_timeout_ms_default")]
    pub connect_timeout_ms: u64,
}

impl MySqlCdcConfig {
    /// Most `snapshot_chunk_rows` (four chunks of rows in memory at most).
    pub const SNAPSHOT_CHUNK_ROWS_MAX: usize = 100_000;
    /// Shortest and longest `heartbeat_interval_ms`.
    pub const HEARTBEAT_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=600_000;
    /// Longest `connect_timeout_ms`.
    pub const CONNECT_TIMEOUT_MS_MAX: u64 = 600_000;

    fn topic_default() -> String {
        "cdc_{{database}}_{{table}}".into()
    }
    fn schema_topic_default() -> String {
        "cdc_schema_changes".into()
    }
    fn heartbeat_topic_default() -> String {
        "cdc_heartbeats".into()
    }
    fn snapshot_chunk_rows_default() -> usize {
        10_000
    }
    fn heartbeat_interval_ms_default() -> u64 {
        10_000
    }
    fn connect_timeout_ms_default() -> u64 {
        10_000
    }

    /// Defaults for a server.
    pub fn new(url: impl Into<String>) -> Self {
        MySqlCdcConfig {
            url: url.into(),
            server_id: None,
            include: Vec::new(),
            exclude: Vec::new(),
            topic: Self::topic_default(),
            schema_topic: Self::schema_topic_default(),
            heartbeat_topic: Self::heartbeat_topic_default(),
            snapshot: SnapshotMode::default(),
            snapshot_chunk_rows: Self::snapshot_chunk_rows_default(),
            server_name: None,
            heartbeat_interval_ms: Self::heartbeat_interval_ms_default(),
            connect_timeout_ms: Self::connect_timeout_ms_default(),
        }
    }
}
