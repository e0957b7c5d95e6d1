//! The Redis sink's settings.

use serde::Deserialize;

/// The command each record becomes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisCommand {
    Set,
    Hset,
    Xadd,
    Lpush,
    Rpush,
    Publish,
}

/// `type: redis` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// `set`, `hset`, `xadd`, `lpush`, `rpush` or `publish`.
    pub command: RedisCommand,
    /// Key template: `"user:{{id}}"`; `$key`, `$topic`, `$tag`, `$queue_id`, `$queue_offset`
    /// name the record's place.
    pub key: String,
    /// Records are Debezium change envelopes (from `mysql_cdc`): creates and updates write
    /// the `after` row (templates read its fields), deletes DEL the key rendered from `before`.
    #[serde(default)]
    pub cdc: bool,
    /// Expiry for SET (`EX`) and HSET (`EXPIRE`), in seconds.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// XADD with `MAXLEN ~ n`: keep the stream about this long.
    #[serde(default)]
    pub stream_length_max: Option<u64>,
    /// Delete the key when the record's value is empty (default: on for `set` and `hset`,
    /// off for the rest, where one empty record would delete a whole stream or list).
    #[serde(default)]
    pub delete_on_tombstone: Option<bool>,
    /// Most commands per pipeline (default 1000).
    #[serde(default = "RedisSinkConfig::pipeline_commands_max_default")]
    pub pipeline_commands_max: usize,
    /// Pipelines in flight at once per batch (default 2).
    #[serde(default = "RedisSinkConfig::concurrency_default")]
    pub concurrency: usize,
    /// How long connecting and each pipeline may take (default 10 s).
    #[serde(default = "RedisSinkConfig::timeout_ms_default")]
    pub timeout_ms: u64,
}

impl RedisSinkConfig {
    /// Most `pipeline_commands_max`.
    pub const PIPELINE_COMMANDS_MAX: usize = 100_000;
    /// Most `concurrency`.
    pub const CONCURRENCY_MAX: usize = 64;
    /// Longest `timeout_ms`.
    pub const TIMEOUT_MS_MAX: u64 = 600_000;

    fn pipeline_commands_max_default() -> usize {
        1000
    }
    fn concurrency_default() -> usize {
        2
    }
    fn timeout_ms_default() -> u64 {
        10_000
    }

    /// Defaults for a command and key template at a URL.
    pub fn new(url: impl Into<String>, command: RedisCommand, key: impl Into<String>) -> Self {
        RedisSinkConfig {
            url: url.into(),
            command,
            key: key.into(),
            cdc: false,
            ttl_seconds: None,
            stream_length_max: None,
            delete_on_tombstone: None,
            pipeline_commands_max: Self::pipeline_commands_max_default(),
            concurrency: Self::concurrency_default(),
            timeout_ms: Self::timeout_ms_default(),
        }
    }

    /// Whether a tombstone deletes the key.
    pub fn deletes_on_tombstone(&self) -> bool {
        self.delete_on_tombstone.unwrap_or(matches!(self.command, RedisCommand::Set | RedisCommand::Hset))
    }

    /// Checks the settings without connecting: `(field, reason)` of the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(error) = redis::Client::open(self.url.as_str()) {
            return Err(("url", format!("is not a redis:// URL: {error}")));
        }
        crate::template::validate(&self.key).map_err(|reason| ("key", reason))?;
        if self.ttl_seconds == Some(0) {
            return Err(("ttl_seconds", "must be at least 1 (leave it out for no expiry)".into()));
        }
        if self.cdc && !matches!(self.command, RedisCommand::Set | RedisCommand::Hset) {
            // A row's delete would DEL the one stream, list or channel-named key every row
            // goes to.
            return Err((
                "cdc",
                "keeps one key per row, so it takes command set or hset (xadd, lpush, rpush and publish append change events: leave cdc off and write the envelopes as they are)".into(),
            ));
        }
        if self.ttl_seconds.is_some() && !matches!(self.command, RedisCommand::Set | RedisCommand::Hset) {
            return Err(("ttl_seconds", "applies to set and hset only".into()));
        }
        if self.stream_length_max.is_some() && self.command != RedisCommand::Xadd {
            return Err(("stream_length_max", "applies to xadd only".into()));
        }
        if self.pipeline_commands_max == 0 || self.pipeline_commands_max > Self::PIPELINE_COMMANDS_MAX {
            return Err(("pipeline_commands_max", format!("must be in 1..={}", Self::PIPELINE_COMMANDS_MAX)));
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
