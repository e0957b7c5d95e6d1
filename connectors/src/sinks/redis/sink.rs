//! The Redis sink: start-up checks and pipelined writes.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use serde_json::Value as Json;
use weir_connect::{BatchPreparer, PreparedBatch, Sink, SinkError, SinkRecord};

use super::config::{RedisCommand, RedisSinkConfig};
use super::fields::{FlatObject, FlatValue};
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
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    /// Turns records into commands (also ahead of `write`, on the task's blocking thread).
    commands: Arc<CommandBuilder>,
}

/// Records into pipelined commands, by lane: needs only the config, so the sink task runs it
/// on the next batch while the current one is written.
struct CommandBuilder {
    config: RedisSinkConfig,
    /// Spreads keys over lanes (`concurrency`).
    hasher: std::collections::hash_map::RandomState,
}

/// A batch as commands: each lane's pipelines, and the records refused before sending.
struct Commands {
    lanes: Vec<Vec<Chunk>>,
    refused: BTreeMap<usize, String>,
}

/// Server error codes that blame the server's state or our access, not the record: retried,
/// never dead-lettered.
const TRANSIENT_CODES: &[&str] = &[
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
    "OOM",
    "NOREPLICAS",
    "MISCONF",
    "NOPERM",
    "NOAUTH",
    "WRONGPASS",
];

/// HSET then EXPIRE as one script, so a refused HSET (WRONGTYPE) does not touch the key's TTL.
/// KEYS[1] = key, ARGV[1] = TTL in seconds, ARGV[2..] = field, value, ….
const HSET_EXPIRE_SCRIPT: &str =
    "redis.call('HSET', KEYS[1], unpack(ARGV, 2)); return redis.call('EXPIRE', KEYS[1], ARGV[1])";

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
        Ok(RedisSink {
            connector: connector.into(),
            client,
            connection: Some(connection),
            commands: Arc::new(CommandBuilder { config, hasher: Default::default() }),
        })
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, SinkError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let timeout = Duration::from_millis(self.commands.config.timeout_ms);
        let connection = tokio::time::timeout(timeout, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| SinkError::retryable(format!("redis: no connection within {timeout:?}")))?
            .map_err(|error| SinkError::retryable(format!("redis: {error}")))?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Sends a batch's commands, lanes in parallel, and sorts the replies into done, refused
    /// (poison) and transient.
    async fn send(&mut self, commands: Commands) -> Result<(), SinkError> {
        let Commands { lanes, mut refused } = commands;
        let connection = self.connection().await?;
        let timeout = Duration::from_millis(self.commands.config.timeout_ms);
        let mut in_flight = tokio::task::JoinSet::new();
        for lane in lanes.into_iter().filter(|lane| !lane.is_empty()) {
            in_flight.spawn(send_lane(connection.clone(), lane, timeout));
        }
        let mut transient = None;
        let mut commands_ok = 0u64;
        while let Some(joined) = in_flight.join_next().await {
            let replies = match joined {
                Ok(Ok(replies)) => replies,
                Ok(Err(message)) => {
                    transient = Some(message);
                    continue;
                }
                Err(error) => {
                    transient = Some(format!("redis sink writer failed: {error}"));
                    continue;
                }
            };
            for (index, reply) in replies {
                match reply {
                    Value::ServerError(error) if TRANSIENT_CODES.contains(&error.code()) => {
                        transient = Some(format!("redis refused a command for now: {error}"));
                    }
                    Value::ServerError(error) => {
                        refused.insert(index, format!("redis refused the record: {error}"));
                    }
                    _ => commands_ok += 1,
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
}

impl CommandBuilder {
    /// A batch's commands in lanes by a hash of their key; a lane's pipelines are sent in
    /// order, so one key's commands keep the batch's order while lanes run in parallel.
    fn build(&self, batch: &[SinkRecord]) -> Commands {
        let lanes_count = self.config.concurrency;
        let mut refused = BTreeMap::new();
        let mut lanes: Vec<Vec<Chunk>> = (0..lanes_count).map(|_| Vec::new()).collect();
        for (index, record) in batch.iter().enumerate() {
            let built = match self.commands(record) {
                Ok(built) => built,
                Err(reason) => {
                    refused.insert(index, reason);
                    continue;
                }
            };
            for (key, command) in built {
                let lane = &mut lanes[self.hasher.hash_one(&key) as usize % lanes_count];
                if lane.last().is_none_or(|chunk| chunk.records.len() >= self.config.pipeline_commands_max) {
                    let mut pipeline = redis::pipe();
                    pipeline.ignore_errors();
                    lane.push(Chunk { pipeline, records: Vec::new() });
                }
                let chunk = lane.last_mut().expect("pushed above");
                chunk.pipeline.add_command(command);
                chunk.records.push(index);
            }
        }
        Commands { lanes, refused }
    }

    /// The keys and commands a record becomes, in order (none: nothing to do); `Err` is why
    /// it is poison.
    fn commands(&self, record: &SinkRecord) -> Result<Vec<(String, Cmd)>, String> {
        let raw = &record.record.value;
        let delete = |key: String| (key.clone(), redis::cmd("DEL").arg(key).to_owned());
        if self.config.cdc {
            if raw.is_empty() {
                return Ok(Vec::new()); // a tombstone after a delete: the delete already removed the key
            }
            let envelope: Json =
                serde_json::from_slice(raw).map_err(|e| format!("the record's value is not JSON: {e}"))?;
            let (deleted, image) = crate::sinks::change_image(&envelope)?;
            let render = |row: &Json| {
                template::render_record(&self.config.key, record, Some(row))
                    .ok_or_else(|| format!("the row lacks a field key template {:?} names", self.config.key))
            };
            let key = render(&image)?;
            if deleted {
                return Ok(vec![delete(key)]);
            }
            let mut commands = Vec::with_capacity(2);
            // An update that changed the row's key: the old key goes (its own lane keeps it
            // in order with later changes of that key).
            if let Some(before) = crate::sinks::previous_image(&envelope) {
                let old_key = render(before)?;
                if old_key != key {
                    commands.push(delete(old_key));
                }
            }
            let value = image.to_string().into_bytes();
            let object = image.as_object().map(FlatObject::from_map);
            commands.push(self.write_command(key, &value, object.as_ref())?);
            return Ok(commands);
        }
        if raw.is_empty() && self.config.deletes_on_tombstone() {
            let key = template::render_record(&self.config.key, record, None).ok_or_else(|| {
                format!("a tombstone has no fields to render key {:?}; use $key or other $ names", self.config.key)
            })?;
            return Ok(vec![delete(key)]);
        }
        let object = FlatObject::parse(raw);
        let key = template::render_record_with(&self.config.key, record, |name| object.as_ref()?.lookup(name))
            .ok_or_else(|| format!("the record lacks a field key template {:?} names", self.config.key))?;
        Ok(vec![self.write_command(key, raw, object.as_ref())?])
    }

    /// The configured command writing `value` (and `object`'s fields, when it is a JSON
    /// object) at `key`.
    fn write_command(
        &self,
        key: String,
        value: &[u8],
        object: Option<&FlatObject<'_>>,
    ) -> Result<(String, Cmd), String> {
        // Fields go straight into the command's buffer (no per-field copies on the way).
        let with_fields = |mut command: Cmd, what: &str| -> Result<Cmd, String> {
            let Some(object) = object else {
                return Ok(command.arg("value").arg(value).to_owned());
            };
            if object.fields.is_empty() {
                return Err(format!("the record is an empty JSON object; {what} needs a field"));
            }
            let mut text = Vec::new();
            for (name, field) in &object.fields {
                command.arg(name.as_ref());
                match field {
                    FlatValue::Text(string) => command.arg(string.as_ref()),
                    FlatValue::Json(other) => {
                        text.clear();
                        serde_json::to_writer(&mut text, other).expect("serialising to a Vec cannot fail");
                        command.arg(text.as_slice())
                    }
                };
            }
            Ok(command)
        };
        let command = match self.config.command {
            RedisCommand::Set => {
                let mut command = redis::cmd("SET");
                command.arg(&key).arg(value);
                if let Some(ttl) = self.config.ttl_seconds {
                    command.arg("EX").arg(ttl);
                }
                command
            }
            RedisCommand::Hset => match self.config.ttl_seconds {
                Some(ttl) => with_fields(
                    redis::cmd("EVAL").arg(HSET_EXPIRE_SCRIPT).arg(1).arg(&key).arg(ttl).to_owned(),
                    "HSET",
                )?,
                None => with_fields(redis::cmd("HSET").arg(&key).to_owned(), "HSET")?,
            },
            RedisCommand::Xadd => {
                let mut command = redis::cmd("XADD");
                command.arg(&key);
                if let Some(length) = self.config.stream_length_max {
                    command.arg("MAXLEN").arg("~").arg(length);
                }
                with_fields(command.arg("*").to_owned(), "XADD")?
            }
            RedisCommand::Lpush => redis::cmd("LPUSH").arg(&key).arg(value).to_owned(),
            RedisCommand::Rpush => redis::cmd("RPUSH").arg(&key).arg(value).to_owned(),
            RedisCommand::Publish => redis::cmd("PUBLISH").arg(&key).arg(value).to_owned(),
        };
        Ok((key, command))
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

/// Sends a lane's pipelines one after another; returns (record, reply) pairs, or the
/// transient failure that stopped the lane.
async fn send_lane(
    mut connection: MultiplexedConnection,
    chunks: Vec<Chunk>,
    timeout: Duration,
) -> Result<Vec<(usize, Value)>, String> {
    let mut replies = Vec::new();
    for chunk in chunks {
        let answered = tokio::time::timeout(timeout, chunk.pipeline.query_async::<Vec<Value>>(&mut connection))
            .await
            .map_err(|_| format!("redis: no reply within {timeout:?}"))?
            .map_err(|error| format!("redis: {error}"))?;
        if answered.len() != chunk.records.len() {
            return Err(format!("redis answered {} replies to {} commands", answered.len(), chunk.records.len()));
        }
        replies.extend(chunk.records.into_iter().zip(answered));
    }
    Ok(replies)
}

impl BatchPreparer for CommandBuilder {
    fn prepare(&self, batch: &[SinkRecord]) -> PreparedBatch {
        Box::new(self.build(batch))
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let commands = self.commands.build(batch);
        self.send(commands).await
    }

    fn preparer(&self) -> Option<Arc<dyn BatchPreparer>> {
        Some(self.commands.clone())
    }

    async fn write_prepared(&mut self, batch: &[SinkRecord], prepared: PreparedBatch) -> Result<(), SinkError> {
        match prepared.downcast::<Commands>() {
            Ok(commands) => self.send(*commands).await,
            Err(_) => self.write(batch).await, // not ours: build the commands here
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(()) // every write waits for its replies
    }
}
