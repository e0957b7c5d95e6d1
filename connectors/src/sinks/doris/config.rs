//! The Doris sink's settings.

use serde::Deserialize;

/// `type: doris` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DorisSinkConfig {
    /// A frontend's HTTP address: `http://fe-host:8030` (plain HTTP, as Doris serves it).
    pub url: String,
    /// Database of the table.
    pub database: String,
    /// Target table.
    pub table: String,
    /// User for HTTP basic auth.
    pub username: String,
    /// Password (default empty).
    #[serde(default)]
    pub password: String,
    /// Label prefix (default `weir_<connector>`); letters, digits, `_` and `-`.
    #[serde(default)]
    pub label_prefix: Option<String>,
    /// Records are Debezium change envelopes; deletes use the delete sign column.
    #[serde(default)]
    pub cdc: bool,
    /// With `cdc`: the table's unique key columns. An update whose `before` and `after`
    /// differ in them deletes the old row first; without them such an update leaves the old
    /// row (Doris does not order two rows of one key within a load, so the sink never sends
    /// a delete and an upsert of the same key together).
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Pre-commit in `write`, commit in `flush`.
    #[serde(default)]
    pub two_phase_commit: bool,
    /// Queues loading at once per batch (default 2); one queue's loads stay in order.
    #[serde(default = "DorisSinkConfig::concurrency_default")]
    pub concurrency: usize,
    /// Most redirects followed per load (default 3).
    #[serde(default = "DorisSinkConfig::redirects_max_default")]
    pub redirects_max: u32,
    /// How long one request may take (default 60 s).
    #[serde(default = "DorisSinkConfig::timeout_ms_default")]
    pub timeout_ms: u64,
}

impl DorisSinkConfig {
    /// Most `concurrency`.
    pub const CONCURRENCY_MAX: usize = 64;
    /// Most `redirects_max`.
    pub const REDIRECTS_MAX: u32 = 10;
    /// Longest `timeout_ms`.
    pub const TIMEOUT_MS_MAX: u64 = 600_000;
    /// Longest label Doris accepts.
    pub const LABEL_CHARS_MAX: usize = 128;

    fn concurrency_default() -> usize {
        2
    }
    fn redirects_max_default() -> u32 {
        3
    }
    fn timeout_ms_default() -> u64 {
        60_000
    }

    /// Defaults for a table behind a frontend.
    pub fn new(
        url: impl Into<String>,
        database: impl Into<String>,
        table: impl Into<String>,
        username: impl Into<String>,
    ) -> Self {
        DorisSinkConfig {
            url: url.into(),
            database: database.into(),
            table: table.into(),
            username: username.into(),
            password: String::new(),
            label_prefix: None,
            cdc: false,
            key_columns: Vec::new(),
            two_phase_commit: false,
            concurrency: Self::concurrency_default(),
            redirects_max: Self::redirects_max_default(),
            timeout_ms: Self::timeout_ms_default(),
        }
    }

    /// Checks the settings without connecting: `(field, reason)` of the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.key_columns.is_empty() && !self.cdc {
            return Err(("key_columns", "only means something with `cdc`".into()));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if url.scheme() == "http" => {}
            Ok(url) => {
                return Err(("url", format!("has scheme {:?}; Doris's HTTP port speaks plain http://", url.scheme())));
            }
            Err(error) => return Err(("url", format!("is not a URL: {error}"))),
        }
        for (field, name) in [("database", &self.database), ("table", &self.table)] {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err((field, format!("{name:?} must be letters, digits, `_` and `-`")));
            }
        }
        if let Some(prefix) = &self.label_prefix
            && (prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(label_char))
        {
            return Err(("label_prefix", format!("{prefix:?} must be 1 to 64 letters, digits, `_` and `-`")));
        }
        if self.concurrency == 0 || self.concurrency > Self::CONCURRENCY_MAX {
            return Err(("concurrency", format!("must be in 1..={}", Self::CONCURRENCY_MAX)));
        }
        if self.redirects_max > Self::REDIRECTS_MAX {
            return Err(("redirects_max", format!("must be at most {}", Self::REDIRECTS_MAX)));
        }
        if self.timeout_ms == 0 || self.timeout_ms > Self::TIMEOUT_MS_MAX {
            return Err(("timeout_ms", format!("must be in 1..={}", Self::TIMEOUT_MS_MAX)));
        }
        Ok(())
    }
}

/// A character Doris allows in labels.
pub(super) fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}
