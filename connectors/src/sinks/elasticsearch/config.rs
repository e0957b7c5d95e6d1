//! The Elasticsearch sink's settings.

use serde::Deserialize;

/// The bulk action for records with a value.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ElasticsearchAction {
    /// Create or replace the document.
    #[default]
    Index,
    /// Create only; an existing `_id` counts as already written.
    Create,
}

/// `type: elasticsearch` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// Base URL of a node: `http://127.0.0.1:9200`.
    pub url: String,
    /// Index name template: fields (`{{service}}`) and strftime dates (`logs-%Y.%m.%d`).
    pub index: String,
    /// `_id` template (default: the record's key, else `<topic>-<queue_id>-<queue_offset>`).
    #[serde(default)]
    pub id: Option<String>,
    /// Field holding the event time for the index date (epoch ms or RFC 3339); default: the
    /// record's timestamp.
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// Records are Debezium change envelopes (from `mysql_cdc`): creates and updates index the
    /// `after` row (templates read its fields), deletes delete the document.
    #[serde(default)]
    pub cdc: bool,
    /// `index` (default) or `create`.
    #[serde(default)]
    pub action: ElasticsearchAction,
    /// Basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// Sends of an item refused with 429/5xx before the batch fails (default 5).
    #[serde(default = "ElasticsearchSinkConfig::item_retries_max_default")]
    pub item_retries_max: u32,
    /// First wait before re-sending refused items; doubles per retry (default 100 ms).
    #[serde(default = "ElasticsearchSinkConfig::item_backoff_initial_ms_default")]
    pub item_backoff_initial_ms: u64,
    /// Most actions per `_bulk` request (default 1000).
    #[serde(default = "ElasticsearchSinkConfig::bulk_actions_max_default")]
    pub bulk_actions_max: usize,
    /// `_bulk` requests in flight at once per batch, documents spread by `_index`/`_id` so
    /// one document's actions stay in order (default 2).
    #[serde(default = "ElasticsearchSinkConfig::concurrency_default")]
    pub concurrency: usize,
    /// How long one request may take (default 30 s).
    #[serde(default = "ElasticsearchSinkConfig::timeout_ms_default")]
    pub timeout_ms: u64,
}

impl ElasticsearchSinkConfig {
    /// Most `item_retries_max`.
    pub const ITEM_RETRIES_MAX: u32 = 20;
    /// Longest `item_backoff_initial_ms`.
    pub const ITEM_BACKOFF_INITIAL_MS_MAX: u64 = 2_000;
    /// Most `bulk_actions_max`.
    pub const BULK_ACTIONS_MAX: usize = 100_000;
    /// Most `concurrency`.
    pub const CONCURRENCY_MAX: usize = 64;
    /// Longest `timeout_ms`.
    pub const TIMEOUT_MS_MAX: u64 = 600_000;

    fn item_retries_max_default() -> u32 {
        5
    }
    fn item_backoff_initial_ms_default() -> u64 {
        100
    }
    fn bulk_actions_max_default() -> usize {
        1000
    }
    fn timeout_ms_default() -> u64 {
        30_000
    }
    fn concurrency_default() -> usize {
        2
    }

    /// Defaults for an index template at a URL.
    pub fn new(url: impl Into<String>, index: impl Into<String>) -> Self {
        ElasticsearchSinkConfig {
            url: url.into(),
            index: index.into(),
            id: None,
            timestamp_field: None,
            cdc: false,
            action: ElasticsearchAction::default(),
            username: None,
            password: None,
            item_retries_max: Self::item_retries_max_default(),
            item_backoff_initial_ms: Self::item_backoff_initial_ms_default(),
            bulk_actions_max: Self::bulk_actions_max_default(),
            concurrency: Self::concurrency_default(),
            timeout_ms: Self::timeout_ms_default(),
        }
    }

    /// Checks the settings without connecting: `(field, reason)` of the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match elasticsearch::http::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => return Err(("url", format!("has scheme {:?}; use http or https", url.scheme()))),
            Err(error) => return Err(("url", format!("is not a URL: {error}"))),
        }
        crate::template::validate(&self.index).map_err(|reason| ("index", reason))?;
        date_pattern_valid(&self.index).map_err(|reason| ("index", reason))?;
        if self.cdc && self.id.is_none() {
            // The record's key is the row's new key: an update that changes it must find the
            // old document from the `before` row.
            return Err((
                "id",
                "is required with `cdc`: a template of the row's primary key (\"{{id}}\"), so an update that changes the key deletes the old document".into(),
            ));
        }
        if self.cdc && self.timestamp_field.is_none() && has_date_pattern(&self.index) {
            // A change's record time is when the change happened: a row's update would land
            // in a new dated index beside its first version, and its delete would miss both.
            return Err((
                "timestamp_field",
                format!(
                    "is required with `cdc` and the dated index {:?}: name a field of the row that never changes (a creation time)",
                    self.index
                ),
            ));
        }
        if let Some(id) = &self.id {
            crate::template::validate(id).map_err(|reason| ("id", reason))?;
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(("password", "username and password go together".into()));
        }
        if self.item_retries_max > Self::ITEM_RETRIES_MAX {
            return Err(("item_retries_max", format!("must be at most {}", Self::ITEM_RETRIES_MAX)));
        }
        if self.item_backoff_initial_ms == 0 || self.item_backoff_initial_ms > Self::ITEM_BACKOFF_INITIAL_MS_MAX {
            return Err(("item_backoff_initial_ms", format!("must be in 1..={}", Self::ITEM_BACKOFF_INITIAL_MS_MAX)));
        }
        if self.bulk_actions_max == 0 || self.bulk_actions_max > Self::BULK_ACTIONS_MAX {
            return Err(("bulk_actions_max", format!("must be in 1..={}", Self::BULK_ACTIONS_MAX)));
        }
        if self.concurrency == 0 || self.concurrency > Self::CONCURRENCY_MAX {
            return Err(("concurrency", format!("must be in 1..={}", Self::CONCURRENCY_MAX)));
        }
        if self.timeout_ms == 0 || self.timeout_ms > Self::TIMEOUT_MS_MAX {
            return Err(("timeout_ms", format!("must be in 1..={}", Self::TIMEOUT_MS_MAX)));
        }
        Ok(())
    }
}

/// Whether a template names a date (`%Y`…; `%%` is a literal percent sign).
pub(crate) fn has_date_pattern(template: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    StrftimeItems::new(template).any(|item| matches!(item, Item::Numeric(..) | Item::Fixed(_)))
}

/// Checks the strftime patterns of a template (chrono fails at format time otherwise).
pub(crate) fn date_pattern_valid(template: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(template).any(|item| matches!(item, Item::Error)) {
        return Err(format!("template {template:?} has an invalid % date pattern (use %Y, %m, %d, %H; %% for %)"));
    }
    Ok(())
}
