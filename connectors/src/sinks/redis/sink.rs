//! The Redis sink: start-up checks and pipelined writes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use serde_json::Value as Json;
use weir_connect::{Sink, SinkError, SinkRecord};

use super::config::{RedisCommand, RedisSinkConfig};
use crate::template;

/// Why the sink cannot start, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// A setting is wrong.
    #[error("redis sink {connector:?}: `{field}` {reason}")]
    Config { connector: String, field: &'static str, reason: String },
    /// The server cannot be reached.
    #[error(
        "redis sink {connector:?}: cannot reach Redis at {address}: {reason} (is it running, and is the URL's host and port right?)"
    )]
    Unreachable { connector: String, address: String, reason: String },
    /// The server refused the credentials.
    #[error(
        "redis sink {connector:?}: Redis at {address} refused the credentials: {reason} (check the URL's user and password)"
    )]
    Auth { connector: String, address: String, reason: String },
}

/// Writes records as Redis commands.
pub struct RedisSink {
    connector: String,
    config: RedisSinkConfig,
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
}

/// Server error codes that say "later", not "never".
const TRANSIENT_CODES: &[&str] =
    &["BUSY", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "OOM", "NOREPLICAS"];

impl RedisSink {
    /// Connects and pings; fails with an actionable error when the server or the credentials
    /// are wrong.
    pub async fn connect(connector: &str, config: RedisSinkConfig) -> Result<RedisSink, RedisSinkError> {
        config.validate().map_err(|(field, reason)| RedisSinkError::Config {
            connector: connector.into(),
            field,
            reason,
        })?;
        let client = redis::Client::open(config.url.as_str()).map_err(|error| RedisSinkError::Config {
            connector: connector.into(),
            field: "url",
            reason: error.to_string(),
        })?;
        let address = client.get_connection_info().addr().to_string();
        let timeout = Duration::from_millis(config.timeout_ms);
        let attempt = async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        let connection = match tokio::time::timeout(timeout, attempt).await {
            Err(_) => {
                let reason = format!("no answer within {timeout:?}");
                return Err(RedisSinkError::Unreachable { connector: connector.into(), address, reason });
            }
            Ok(Err(error)) if is_auth_error(&error) => {
                return Err(RedisSinkError::Auth { connector: connector.into(), address, reason: error.to_string() });
            }
            Ok(Err(error)) => {
                return Err(RedisSinkError::Unreachable {
                    connector: connector.into(),
                    address,
                    reason: error.to_string(),
                });
            }
            Ok(Ok(connection)) => connection,
        };
        tracing::info!(connector, %address, command = ?config.command, "redis sink connected");
        Ok(RedisSink { connector: connector.into(), config, client, connection: Some(connection) })
    }

    /// The commands a record becomes; `Err` is why it is poison.
    fn commands(&self, record: &SinkRecord) -> Result<Vec<Cmd>, String> {
        let value = &record.record.value;
        if value.is_empty() && self.config.delete_on_tombstone {
            let key = template::render_record(&self.config.key, record, None).ok_or_else(|| {
                format!("a tombstone has no fields to render key {:?}; use $key or other $ names", self.config.key)
            })?;
            return Ok(vec![redis::cmd("DEL").arg(key).to_owned()]);
        }
        let json: Option<Json> = serde_json::from_slice(value).ok();
        let key = template::render_record(&self.config.key, record, json.as_ref())
            .ok_or_else(|| format!("the record lacks a field key template {:?} names", self.config.key))?;
        let fields = || -> Vec<(String, Vec<u8>)> {
            match &json {
                Some(Json::Object(object)) => object
                    .iter()
                    .map(|(name, value)| {
                        let bytes = match value {
                            Json::String(text) => text.as_bytes().to_vec(),
                            other => other.to_string().into_bytes(),
                        };
                        (name.clone(), bytes)
                    })
                    .collect(),
                _ => vec![("value".to_string(), value.clone())],
            }
        };
        let mut commands = Vec::with_capacity(2);
        match self.config.command {
            RedisCommand::Set => {
                let mut command = redis::cmd("SET");
                command.arg(&key).arg(value.as_slice());
                if let Some(ttl) = self.config.ttl_seconds {
                    command.arg("EX").arg(ttl);
                }
                commands.push(command);
            }
            RedisCommand::Hset => {
                let fields = fields();
                if fields.is_empty() {
                    return Err("the record is an empty JSON object; HSET needs a field".into());
                }
                let mut command = redis::cmd("HSET");
                command.arg(&key);
                for (name, value) in fields {
                    command.arg(name).arg(value);
                }
                commands.push(command);
                if let Some(ttl) = self.config.ttl_seconds {
                    commands.push(redis::cmd("EXPIRE").arg(&key).arg(ttl).to_owned());
                }
            }
            RedisCommand::Xadd => {
                let fields = fields();
                if fields.is_empty() {
                    return Err("the record is an empty JSON object; XADD needs a field".into());
                }
                let mut command = redis::cmd("XADD");
                command.arg(&key);
                if let Some(length) = self.config.stream_length_max {
                    command.arg("MAXLEN").arg("~").arg(length);
                }
                command.arg("*");
                for (name, value) in fields {
                    command.arg(name).arg(value);
                }
                commands.push(command);
            }
            RedisCommand::Lpush => commands.push(redis::cmd("LPUSH").arg(&key).arg(value.as_slice()).to_owned()),
            RedisCommand::Rpush => commands.push(redis::cmd("RPUSH").arg(&key).arg(value.as_slice()).to_owned()),
            RedisCommand::Publish => commands.push(redis::cmd("PUBLISH").arg(&key).arg(value.as_slice()).to_owned()),
        }
        Ok(commands)
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, SinkError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let connection = tokio::time::timeout(timeout, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| SinkError::retryable(format!("redis: no connection within {timeout:?}")))?
            .map_err(|error| SinkError::retryable(format!("redis: {error}")))?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }
}

fn is_auth_error(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || error.code().is_some_and(|code| ["NOAUTH", "WRONGPASS", "NOPERM"].contains(&code))
}

/// One pipeline: its commands and, per command, the batch index of its record.
struct Chunk {
    pipeline: redis::Pipeline,
    records: Vec<usize>,
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut refused = BTreeMap::new();
        let mut chunks: Vec<Chunk> = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let commands = match self.commands(record) {
                Ok(commands) => commands,
                Err(reason) => {
                    refused.insert(index, reason);
                    continue;
                }
            };
            let fits =
                chunks.last().is_some_and(|c| c.records.len() + commands.len() <= self.config.pipeline_commands_max);
            if !fits {
                let mut pipeline = redis::pipe();
                pipeline.ignore_errors();
                chunks.push(Chunk { pipeline, records: Vec::new() });
            }
            let chunk = chunks.last_mut().expect("pushed above");
            for command in commands {
                chunk.pipeline.add_command(command);
                chunk.records.push(index);
            }
        }
        let connection = self.connection().await?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let mut transient = None;
        let mut commands_ok = 0u64;
        let mut pending = chunks.into_iter();
        loop {
            let mut in_flight = tokio::task::JoinSet::new();
            for chunk in pending.by_ref().take(self.config.concurrency) {
                let mut connection = connection.clone();
                in_flight.spawn(async move {
                    let replies =
                        tokio::time::timeout(timeout, chunk.pipeline.query_async::<Vec<Value>>(&mut connection)).await;
                    (chunk.records, replies)
                });
            }
            if in_flight.is_empty() {
                break;
            }
            while let Some(joined) = in_flight.join_next().await {
                let (records, replies) =
                    joined.map_err(|e| SinkError::retryable(format!("redis sink writer failed: {e}")))?;
                let replies = match replies {
                    Err(_) => {
                        transient = Some(format!("redis: no reply within {timeout:?}"));
                        continue;
                    }
                    Ok(Err(error)) => {
                        transient = Some(format!("redis: {error}"));
                        continue;
                    }
                    Ok(Ok(replies)) => replies,
                };
                for (reply, index) in replies.iter().zip(&records) {
                    match reply {
                        Value::ServerError(error) if TRANSIENT_CODES.contains(&error.code()) => {
                            transient = Some(format!("redis refused a command for now: {error}"));
                        }
                        Value::ServerError(error) => {
                            refused.entry(*index).or_insert_with(|| format!("redis refused the record: {error}"));
                        }
                        _ => commands_ok += 1,
                    }
                }
            }
        }
        metrics::counter!("weir_redis_sink_commands_total", "connector" => self.connector.clone())
            .increment(commands_ok);
        if let Some(message) = transient {
            self.connection = None; // reconnect: the connection may be broken
            return Err(SinkError::retryable(message));
        }
        if refused.is_empty() {
            return Ok(());
        }
        metrics::counter!("weir_redis_sink_records_refused_total", "connector" => self.connector.clone())
            .increment(refused.len() as u64);
        let message = format!("redis sink {:?}: {} record(s) of the batch refused", self.connector, refused.len());
        Err(SinkError::poison_each(message, refused))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(()) // every write waits for its replies
    }
}
