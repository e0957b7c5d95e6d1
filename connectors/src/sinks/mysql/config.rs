//! The MySQL sink's settings.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How records change the table.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MySqlMode {
    /// `INSERT`: at-least-once.
    #[default]
    Insert,
    /// `INSERT … ON DUPLICATE KEY UPDATE` on `key_columns`: retries are idempotent.
    Upsert,
    /// Debezium-style change envelopes applied by primary key.
    Cdc,
}

/// `type: mysql` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MySqlSinkConfig {
    /// `mysql://user:password@host:port/database`.
    pub url: String,
    /// Target table (in the URL's database).
    pub table: String,
    /// `insert` (default), `upsert` or `cdc`.
    #[serde(default)]
    pub mode: MySqlMode,
    /// Columns that identify a row (needed by `upsert` and `cdc`; the primary key when the
    /// sink creates the table).
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Create the table when it is missing: from `columns` at start, else from the first
    /// record's fields.
    #[serde(default)]
    pub auto_create: bool,
    /// Declared schema for `auto_create`: column name → SQL type (`BIGINT`, `VARCHAR(64)`).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Fields that are not columns: `error` (default; the record is poison) or `ignore`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Transactions written in parallel per batch, on as many connections (default 1).
    #[serde(default = "MySqlSinkConfig::concurrency_default")]
    pub concurrency: usize,
    /// Connections the pool may open (default 4).
    #[serde(default = "MySqlSinkConfig::connections_max_default")]
    pub connections_max: usize,
    /// How long connecting may take (default 10 s).
    #[serde(default = "MySqlSinkConfig::connect_timeout_ms_default")]
    pub connect_timeout_ms: u64,
}

/// What a record field with no column does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    #[default]
    Error,
    Ignore,
}

impl MySqlSinkConfig {
    /// Most `concurrency`.
    pub const CONCURRENCY_MAX: usize = 64;
    /// Most `connections_max`.
    pub const CONNECTIONS_MAX: usize = 256;
    /// Longest `connect_timeout_ms`.
    pub const CONNECT_TIMEOUT_MS_MAX: u64 = 600_000;

    fn concurrency_default() -> usize {
        1
    }
    fn connections_max_default() -> usize {
        4
    }
    fn connect_timeout_ms_default() -> u64 {
        10_000
    }

    /// Defaults for a table at a URL.
    pub fn new(url: impl Into<String>, table: impl Into<String>) -> Self {
        MySqlSinkConfig {
            url: url.into(),
            table: table.into(),
            mode: MySqlMode::default(),
            key_columns: Vec::new(),
            auto_create: false,
            columns: BTreeMap::new(),
            unknown_fields: UnknownFields::default(),
            concurrency: Self::concurrency_default(),
            connections_max: Self::connections_max_default(),
            connect_timeout_ms: Self::connect_timeout_ms_default(),
        }
    }

    /// Checks the settings without connecting: `(field, reason)` of the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(error) = mysql_async::Opts::from_url(&self.url) {
            return Err(("url", format!("is not a mysql:// URL: {error}")));
        }
        check_identifier(&self.table).map_err(|reason| ("table", reason))?;
        for column in self.key_columns.iter().chain(self.columns.keys()) {
            check_identifier(column).map_err(|reason| ("key_columns", reason))?;
        }
        if self.mode != MySqlMode::Insert && self.key_columns.is_empty() {
            return Err(("key_columns", "must name the row's key columns in upsert and cdc modes".into()));
        }
        for (column, sql_type) in &self.columns {
            let allowed = |c: char| c.is_ascii_alphanumeric() || " _(),".contains(c);
            if !sql_type.starts_with(|c: char| c.is_ascii_alphabetic()) || !sql_type.chars().all(allowed) {
                return Err((
                    "columns",
                    format!(
                        "type {sql_type:?} of {column:?} must be a plain SQL type (`BIGINT`, `VARCHAR(64)`, `DECIMAL(10,2)`)"
                    ),
                ));
            }
        }
        if !self.columns.is_empty() {
            if !self.auto_create {
                return Err(("columns", "is only used with auto_create: true".into()));
            }
            if let Some(missing) = self.key_columns.iter().find(|key| !self.columns.contains_key(*key)) {
                return Err(("columns", format!("lacks the key column {missing:?}")));
            }
        }
        if self.concurrency == 0 || self.concurrency > Self::CONCURRENCY_MAX {
            return Err(("concurrency", format!("must be in 1..={}", Self::CONCURRENCY_MAX)));
        }
        if self.connections_max < self.concurrency || self.connections_max > Self::CONNECTIONS_MAX {
            return Err((
                "connections_max",
                format!("must be in concurrency ({})..={}", self.concurrency, Self::CONNECTIONS_MAX),
            ));
        }
        if self.connect_timeout_ms == 0 || self.connect_timeout_ms > Self::CONNECT_TIMEOUT_MS_MAX {
            return Err(("connect_timeout_ms", format!("must be in 1..={}", Self::CONNECT_TIMEOUT_MS_MAX)));
        }
        Ok(())
    }
}

/// Longest identifier MySQL accepts.
const IDENTIFIER_CHARS_MAX: usize = 64;

/// A table or column name we can backquote safely.
pub(super) fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > IDENTIFIER_CHARS_MAX {
        return Err(format!("{name:?} must be 1 to {IDENTIFIER_CHARS_MAX} characters"));
    }
    if name.contains('`') || name.contains('\0') {
        return Err(format!("{name:?} may not contain a backquote or NUL"));
    }
    Ok(())
}
