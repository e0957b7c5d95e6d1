//! The CDC source: start-up checks, the consistent snapshot, binlog streaming and positions.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_core::Stream;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, Row, Value};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use weir_connect::{Position, Record, Source, SourceError, SourceRecord};

use super::config::{MySqlCdcConfig, SnapshotMode};
use super::envelope::{Change, SourceBlock, SourceFields, record_key, write_change};
use super::schema::{SchemaCache, TableFilter, TableSchema, captured_tables};
use super::value::Origin;
use crate::template;

/// Why the source cannot start, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum MySqlCdcError {
    /// A setting is wrong.
    #[error("mysql_cdc source {connector:?}: `{field}` {reason}")]
    Config { connector: String, field: &'static str, reason: String },
}

/// The MariaDB GTID event (type 162), which mysql_common does not decode.
const MARIADB_GTID_EVENT: u8 = 162;

/// Captures changes of one server's tables.
pub struct MySqlCdcSource {
    connector: String,
    config: MySqlCdcConfig,
    opts: Opts,
    filter: TableFilter,
    server_id: u32,
    emit: Emitter,
    /// The start-up checks' connection, handed to the stream reader for schema lookups.
    query: Option<Conn>,
    state: State,
    /// The position of the last record handed to the task (or opened at): a failed poll
    /// restarts the stream there, so rows read but not handed out are read again.
    delivered: Option<(String, u64, u64)>,
    /// The server appends CRC32 checksums to binlog events.
    checksums: bool,
}

enum State {
    Closed,
    Snapshot(Box<Snapshot>),
    Streaming(StreamReading),
}

/// Streaming: a reader task reads and decodes the binlog into batches of records (decoding,
/// envelopes and the transaction bookkeeping), a bounded number ahead, while the source task
/// sends the previous ones; so reading and sending run on two threads.
struct StreamReading {
    /// A reader error ends the channel after it; a channel closed without one means the
    /// reader died.
    batches: mpsc::Receiver<Result<Vec<SourceRecord>, SourceError>>,
    reader: tokio::task::JoinHandle<()>,
    /// Records of the last batch not handed out yet (a batch may exceed a poll's
    /// `records_max`).
    pending: VecDeque<SourceRecord>,
}

impl Drop for StreamReading {
    fn drop(&mut self) {
        // Stop the reader now (its connections close as it drops them); a stream opened after
        // this with the same server id makes the server end any dump thread still left.
        self.reader.abort();
    }
}

/// Batches the stream reader may have read ahead.
const STREAM_BATCHES_AHEAD_MAX: usize = 2;
/// Records the stream reader puts in a batch, about (a rows event is never split).
const STREAM_BATCH_RECORDS_MAX: usize = 1000;
/// How long the stream reader collects a batch before handing over what it has.
const STREAM_BATCH_WAIT: Duration = Duration::from_millis(20);
/// The shortest silence (no event, no heartbeat) after which the stream counts as dead; it
/// is at least three heartbeat intervals.
const STREAM_SILENCE_MIN: Duration = Duration::from_secs(10);

/// What the stream reader task owns: the binlog stream, its position bookkeeping, and what it
/// needs to turn rows into records.
struct StreamReader {
    connector: String,
    config: MySqlCdcConfig,
    filter: TableFilter,
    emit: Emitter,
    schemas: SchemaCache,
    /// For schema lookups.
    query: Conn,
    checksums: bool,
    streaming: Streaming,
}

/// Runs `reader` until the source drops its end of `batches` or reading fails (the error is
/// sent, then the stream closed).
async fn read_stream(mut reader: StreamReader, batches: mpsc::Sender<Result<Vec<SourceRecord>, SourceError>>) {
    loop {
        let read = tokio::select! {
            read = reader.read(STREAM_BATCH_RECORDS_MAX, STREAM_BATCH_WAIT) => read,
            _ = batches.closed() => break, // the source stopped streaming
        };
        let failed = read.is_err();
        if matches!(&read, Ok(records) if records.is_empty()) {
            continue;
        }
        if batches.send(read).await.is_err() || failed {
            break;
        }
    }
    let _ = reader.streaming.stream.close().await;
    let _ = reader.query.disconnect().await;
}

/// A snapshot in progress: a reader task runs the chunk queries on the snapshot's connection
/// and hands over chunks through a bounded channel, so the next chunk is read while this one
/// is turned into records.
struct Snapshot {
    /// `Ok(None)` marks the end: a channel closed without it means the reader died.
    chunks: mpsc::Receiver<Result<Option<SnapshotChunk>, SourceError>>,
    reader: tokio::task::JoinHandle<()>,
    /// Rows of the last chunk not handed out yet (a chunk may exceed a poll's `records_max`).
    pending: Option<SnapshotChunk>,
    /// The binlog position the snapshot corresponds to.
    file: String,
    pos: u64,
    rows: u64,
    started: Instant,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Rows of one table, in primary-key order.
struct SnapshotChunk {
    schema: Arc<TableSchema>,
    rows: VecDeque<RowValues>,
}

/// Chunks the snapshot reader may have read ahead (each up to `snapshot_chunk_rows` rows).
const SNAPSHOT_CHUNKS_AHEAD_MAX: usize = 2;

/// Reads every table of a snapshot in primary-key chunks on `conn` (inside its consistent
/// snapshot transaction), sending each chunk; an error is sent and ends the reading.
async fn read_snapshot(
    connector: String,
    mut conn: Conn,
    tables: Vec<(String, String)>,
    chunk_rows: usize,
    chunks: mpsc::Sender<Result<Option<SnapshotChunk>, SourceError>>,
) {
    let mut schemas = SchemaCache::default();
    for (database, table) in tables {
        let schema = match schemas.get(&mut conn, &database, &table).await {
            Ok(Some(schema)) => schema,
            Ok(None) => continue, // dropped since it was listed
            Err(e) => {
                let error = format!("mysql_cdc snapshot: columns of {database}.{table}: {e}");
                let _ = chunks.send(Err(SourceError::retryable(error))).await;
                return;
            }
        };
        tracing::info!(%connector, %database, %table, "mysql_cdc snapshot of a table");
        let (mut last_key, mut offset) = (None::<Vec<Value>>, 0u64);
        loop {
            let (sql, params) = chunk_query(&schema, last_key.as_deref(), offset, chunk_rows);
            let rows: Vec<Row> = match conn.exec(sql, params).await {
                Ok(rows) => rows,
                Err(e) => {
                    let error = format!("mysql_cdc snapshot of {database}.{table}: {e}");
                    let _ = chunks.send(Err(SourceError::retryable(error))).await;
                    return;
                }
            };
            let done = rows.len() < chunk_rows;
            let rows: VecDeque<RowValues> = rows.into_iter().map(Row::unwrap).collect();
            if let Some(last) = rows.back() {
                last_key = Some(schema.key.iter().map(|i| last[*i].clone()).collect());
            }
            offset += rows.len() as u64;
            if !rows.is_empty() && chunks.send(Ok(Some(SnapshotChunk { schema: schema.clone(), rows }))).await.is_err()
            {
                return; // the source stopped the snapshot
            }
            if done {
                break;
            }
        }
    }
    let _ = chunks.send(Ok(None)).await; // every table read
    let _ = conn.disconnect().await;
}

struct Streaming {
    stream: BinlogStream,
    /// The binlog file being read.
    file: String,
    /// The last transaction boundary passed (where a resume may start) and the GTID of the
    /// transaction in progress.
    boundary: (String, u64),
    transaction_start: Option<(String, u64)>,
    gtid: Option<String>,
    rows_in_transaction: u64,
    /// Rows of the first transaction already delivered before a restart.
    skip_rows: u64,
    /// The position of the last record the reader emitted (it may still wait in the channel),
    /// and when.
    last_emitted: Option<(String, u64)>,
    last_emitted_at: Instant,
}

/// Builds the records the source emits.
#[derive(Clone)]
struct Emitter {
    /// Topic template over `{{database}}` and `{{table}}`.
    topic: String,
    heartbeat_topic: String,
    server_name: String,
    /// The envelope being written (copied out at its exact size).
    scratch: Vec<u8>,
}

impl Emitter {
    fn topic(&self, database: &str, table: &str) -> String {
        let json = json!({"database": database, "table": table});
        template::render(&self.topic, &json).unwrap_or_else(|| format!("cdc_{database}_{table}"))
    }

    fn heartbeat(&self, file: &str, pos: u64) -> SourceRecord {
        let value = json!({"server": self.server_name, "file": file, "pos": pos, "ts_ms": weir_connect::now_ms()});
        SourceRecord {
            record: Record {
                topic: self.heartbeat_topic.clone(),
                key: Some(self.server_name.clone()),
                value: value.to_string().into_bytes(),
                tag: Some("heartbeat".into()),
                timestamp_ms: weir_connect::now_ms(),
                ..Record::default()
            },
            position: json!({"file": file, "pos": pos, "skip_rows": 0}),
        }
    }

    /// A change record in Debezium's envelope, for `topic`.
    fn change(
        &mut self,
        topic: &str,
        schema: &TableSchema,
        source: &SourceBlock,
        change: &Change<'_>,
        timestamp_ms: i64,
        position: Position,
    ) -> SourceRecord {
        let image = change.after.or(change.before);
        let key = image.and_then(|values| record_key(schema, values, change.origin));
        write_change(&mut self.scratch, schema, source, change);
        SourceRecord {
            record: Record {
                topic: topic.to_string(),
                key,
                value: self.scratch.clone(),
                tag: table_tag(&schema.table),
                timestamp_ms,
                ..Record::default()
            },
            position,
        }
    }
}

impl MySqlCdcSource {
    /// Checks the settings (without connecting; `open` connects and checks the server).
    pub fn new(connector: &str, config: MySqlCdcConfig) -> Result<MySqlCdcSource, MySqlCdcError> {
        let fail = |field, reason| MySqlCdcError::Config { connector: connector.into(), field, reason };
        let opts = Opts::from_url(&config.url).map_err(|e| fail("url", format!("is not a mysql:// URL: {e}")))?;
        let filter =
            TableFilter::new(&config.include, &config.exclude).map_err(|(field, reason)| fail(field, reason))?;
        template::validate(&config.topic).map_err(|reason| fail("topic", reason))?;
        if config.snapshot_chunk_rows == 0 || config.snapshot_chunk_rows > MySqlCdcConfig::SNAPSHOT_CHUNK_ROWS_MAX {
            return Err(fail(
                "snapshot_chunk_rows",
                format!("must be in 1..={}", MySqlCdcConfig::SNAPSHOT_CHUNK_ROWS_MAX),
            ));
        }
        if !MySqlCdcConfig::HEARTBEAT_INTERVAL_MS_RANGE.contains(&config.heartbeat_interval_ms) {
            return Err(fail(
                "heartbeat_interval_ms",
                format!("must be in {:?}", MySqlCdcConfig::HEARTBEAT_INTERVAL_MS_RANGE),
            ));
        }
        let hash =
            connector.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        let server_id = config.server_id.unwrap_or(5400 + (hash % 1000) as u32);
        let emit = Emitter {
            topic: config.topic.clone(),
            heartbeat_topic: config.heartbeat_topic.clone(),
            server_name: config.server_name.clone().unwrap_or_else(|| connector.to_string()),
            scratch: Vec::new(),
        };
        Ok(MySqlCdcSource {
            connector: connector.into(),
            config,
            opts,
            filter,
            server_id,
            emit,
            query: None,
            state: State::Closed,
            delivered: None,
            checksums: true,
        })
    }

    fn address(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }

    async fn connect(&self) -> Result<Conn, SourceError> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let address = self.address();
        match tokio::time::timeout(timeout, Conn::new(self.opts.clone())).await {
            Err(_) => Err(SourceError::retryable(format!("mysql_cdc: no connection to {address} within {timeout:?}"))),
            Ok(Err(mysql_async::Error::Server(error))) if matches!(error.code, 1045 | 1044 | 1698) => {
                Err(SourceError::permanent(format!(
                    "mysql_cdc: {address} refused user {:?}: {} (check the URL's user and password)",
                    self.opts.user().unwrap_or_default(),
                    error.message
                )))
            }
            Ok(Err(error)) => Err(SourceError::retryable(format!("mysql_cdc: cannot reach {address}: {error}"))),
            Ok(Ok(conn)) => Ok(conn),
        }
    }

    /// Refuses servers that do not log full row images.
    async fn check_server(&self, conn: &mut Conn) -> Result<(), SourceError> {
        let settings: Option<(i64, String, String)> = conn
            .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")
            .await
            .map_err(|e| SourceError::retryable(format!("mysql_cdc: cannot read the server's binlog settings: {e}")))?;
        let (log_bin, format, image) = settings.unwrap_or_default();
        let address = self.address();
        if log_bin != 1 {
            return Err(SourceError::permanent(format!(
                "mysql_cdc: binary logging is off on {address}; start the server with log_bin (e.g. `--log-bin`, or `log_bin = ON` in its config), binlog_format=ROW and binlog_row_image=FULL"
            )));
        }
        if !format.eq_ignore_ascii_case("ROW") {
            return Err(SourceError::permanent(format!(
                "mysql_cdc: binlog_format is {format} on {address}; CDC needs ROW (`SET GLOBAL binlog_format = 'ROW'` and binlog_format=ROW in the server's config)"
            )));
        }
        // MySQL 8.0.20+ can wrap a transaction's events in one compressed payload event,
        // which this reader does not decode.
        if let Ok(Some(1i64)) = conn.query_first::<i64, _>("SELECT @@binlog_transaction_compression").await {
            return Err(SourceError::permanent(format!(
                "mysql_cdc: binlog_transaction_compression is ON on {address}; turn it off for CDC (`SET GLOBAL binlog_transaction_compression = OFF`)"
            )));
        }
        if !image.eq_ignore_ascii_case("FULL") {
            return Err(SourceError::permanent(format!(
                "mysql_cdc: binlog_row_image is {image} on {address}; CDC needs FULL (`SET GLOBAL binlog_row_image = 'FULL'` and in the server's config)"
            )));
        }
        Ok(())
    }

    /// The binlog files the server still has.
    async fn binlog_files(conn: &mut Conn) -> Result<Vec<String>, SourceError> {
        let rows: Vec<Row> = conn
            .query("SHOW BINARY LOGS")
            .await
            .map_err(|e| SourceError::retryable(format!("mysql_cdc: SHOW BINARY LOGS: {e}")))?;
        Ok(rows.into_iter().filter_map(|row| row.get::<String, _>(0)).collect())
    }

    async fn start_snapshot(&mut self) -> Result<(), SourceError> {
        let mut conn = self.connect().await?;
        let failed =
            |what: &str, e: mysql_async::Error| SourceError::retryable(format!("mysql_cdc snapshot: {what}: {e}"));
        conn.query_drop("SET SESSION time_zone = '+00:00'").await.map_err(|e| failed("set time zone", e))?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| failed("isolation", e))?;
        let version: String =
            conn.query_first("SELECT VERSION()").await.map_err(|e| failed("version", e))?.unwrap_or_default();
        let (file, pos) = if version.contains("MariaDB") {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(|e| failed("start", e))?;
            let rows: Vec<(String, String)> = conn
                .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                .await
                .map_err(|e| failed("binlog_snapshot_file/position", e))?;
            let get = |name: &str| rows.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            let file = get("binlog_snapshot_file").unwrap_or_default();
            let pos = get("binlog_snapshot_position").and_then(|p| p.parse().ok()).unwrap_or(4);
            (file, pos)
        } else {
            // MySQL: hold the global read lock only around reading the position.
            conn.query_drop("FLUSH TABLES WITH READ LOCK")
                .await
                .map_err(|e| failed("FLUSH TABLES WITH READ LOCK", e))?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(|e| failed("start", e))?;
            let status = binlog_status(&mut conn).await;
            conn.query_drop("UNLOCK TABLES").await.map_err(|e| failed("UNLOCK TABLES", e))?;
            status?
        };
        let tables = captured_tables(&mut conn, &self.filter).await.map_err(|e| failed("list tables", e))?;
        tracing::info!(connector = %self.connector, tables = tables.len(), %file, pos, "mysql_cdc snapshot started");
        metrics::gauge!("weir_mysql_cdc_snapshot_running", "connector" => self.connector.clone()).set(1.0);
        let (sender, chunks) = mpsc::channel(SNAPSHOT_CHUNKS_AHEAD_MAX);
        let chunk_rows = self.config.snapshot_chunk_rows;
        let reader = tokio::spawn(read_snapshot(self.connector.clone(), conn, tables, chunk_rows, sender));
        self.state = State::Snapshot(Box::new(Snapshot {
            chunks,
            reader,
            pending: None,
            file,
            pos,
            rows: 0,
            started: Instant::now(),
        }));
        Ok(())
    }

    async fn start_streaming(&mut self, file: String, pos: u64, skip_rows: u64) -> Result<(), SourceError> {
        let mut conn = self.connect().await?;
        let failed =
            |e: mysql_async::Error| SourceError::retryable(format!("mysql_cdc: cannot start the binlog stream: {e}"));
        // MariaDB: send GTID events (not fake BEGINs) and heartbeats while idle, at half our
        // heartbeat interval, so one always arrives in time for our own heartbeat record.
        conn.query_drop("SET @mariadb_slave_capability = 4").await.map_err(failed)?;
        let heartbeat_ns = self.config.heartbeat_interval_ms * 1_000_000 / 2;
        conn.query_drop(format!("SET @master_heartbeat_period = {heartbeat_ns}")).await.map_err(failed)?;
        let request = BinlogStreamRequest::new(self.server_id).with_filename(file.as_bytes()).with_pos(pos);
        let stream = conn.get_binlog_stream(request).await.map_err(failed)?;
        let query = match self.query.take() {
            Some(query) => query,
            None => self.connect().await?,
        };
        tracing::info!(connector = %self.connector, %file, pos, skip_rows, server_id = self.server_id, "mysql_cdc streaming");
        self.delivered = Some((file.clone(), pos, skip_rows));
        let reader = StreamReader {
            connector: self.connector.clone(),
            config: self.config.clone(),
            filter: self.filter.clone(),
            emit: self.emit.clone(),
            schemas: SchemaCache::default(),
            query,
            checksums: self.checksums,
            streaming: Streaming {
                stream,
                file: file.clone(),
                boundary: (file.clone(), pos),
                transaction_start: None,
                gtid: None,
                rows_in_transaction: 0,
                skip_rows,
                last_emitted: Some((file.clone(), pos)),
                last_emitted_at: Instant::now(),
            },
        };
        let (batches_tx, batches) = mpsc::channel(STREAM_BATCHES_AHEAD_MAX);
        let reader = tokio::spawn(read_stream(reader, batches_tx));
        self.state = State::Streaming(StreamReading { batches, reader, pending: VecDeque::new() });
        Ok(())
    }

    /// Up to `records_max` records the stream reader has ready, or none after `wait`.
    /// (Dropping the state stops the reader.)
    async fn poll_stream(&mut self, records_max: usize, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        let State::Streaming(reading) = &mut self.state else { unreachable!("called in the streaming state") };
        if reading.pending.is_empty() {
            match tokio::time::timeout(wait, reading.batches.recv()).await {
                Err(_) => return Ok(Vec::new()), // nothing within `wait`
                Ok(Some(batch)) => reading.pending = batch?.into(),
                Ok(None) => return Err(SourceError::retryable("mysql_cdc: the binlog reader stopped")),
            }
        }
        let count = reading.pending.len().min(records_max.max(1));
        Ok(reading.pending.drain(..count).collect())
    }

    async fn poll_snapshot(&mut self, records_max: usize) -> Result<Vec<SourceRecord>, SourceError> {
        let State::Snapshot(snapshot) = &mut self.state else { unreachable!("called in the snapshot state") };
        let mut out = Vec::new();
        let mut finished = false;
        while out.len() < records_max {
            let chunk = match &mut snapshot.pending {
                Some(chunk) if !chunk.rows.is_empty() => chunk,
                _ => {
                    // Wait for the next chunk only while nothing is ready to hand out.
                    let next = if out.is_empty() {
                        snapshot.chunks.recv().await
                    } else {
                        match snapshot.chunks.try_recv() {
                            Ok(next) => Some(next),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        }
                    };
                    let error = match next {
                        Some(Ok(Some(chunk))) => {
                            snapshot.pending = Some(chunk);
                            continue;
                        }
                        Some(Ok(None)) => {
                            finished = true; // every chunk is read and handed out
                            break;
                        }
                        Some(Err(error)) => error,
                        None => SourceError::retryable("mysql_cdc snapshot: the reader stopped before the end"),
                    };
                    // The reader stopped: the next poll starts a new snapshot (its records are
                    // idempotent upserts of the rows read again).
                    self.state = State::Closed;
                    return Err(error);
                }
            };
            let schema = chunk.schema.clone();
            let topic = self.emit.topic(&schema.database, &schema.table);
            let fields = SourceFields {
                server_name: &self.emit.server_name,
                snapshot: true,
                gtid: None,
                file: &snapshot.file,
                pos: snapshot.pos,
                server_id: 0,
                ts_ms: 0,
            };
            let source = SourceBlock::new(&schema, &fields);
            let now = weir_connect::now_ms();
            let take = chunk.rows.len().min(records_max - out.len());
            for values in chunk.rows.drain(..take) {
                let change =
                    Change { op: "r", before: None, after: Some(&values), origin: Origin::Query, row: 0, now_ms: now };
                let position = json!({"snapshot": "running"});
                out.push(self.emit.change(&topic, &schema, &source, &change, now, position));
            }
            snapshot.rows += take as u64;
            metrics::counter!("weir_mysql_cdc_snapshot_rows_total", "connector" => self.connector.clone())
                .increment(take as u64);
        }
        if finished {
            // Done: a heartbeat carries the binlog position the snapshot corresponds to.
            let (file, pos) = (snapshot.file.clone(), snapshot.pos);
            tracing::info!(connector = %self.connector, rows = snapshot.rows, seconds = snapshot.started.elapsed().as_secs_f64(), "mysql_cdc snapshot done");
            metrics::gauge!("weir_mysql_cdc_snapshot_running", "connector" => self.connector.clone()).set(0.0);
            out.push(self.emit.heartbeat(&file, pos));
            self.state = State::Closed;
            if let Err(error) = self.start_streaming(file.clone(), pos, 0).await {
                // The records stand; the next poll opens the stream at the snapshot's position.
                tracing::warn!(connector = %self.connector, error = %error.message, "mysql_cdc: the stream after the snapshot did not open; retrying");
                self.delivered = Some((file, pos, 0));
            }
        }
        Ok(out)
    }
}

impl StreamReader {
    /// Reads records until `records_max` (a rows event is not split) or until `wait` passed
    /// since the first one.
    ///
    /// Cancel safety: not cancel safe (events read are lost); `read_stream` cancels it only
    /// when the stream is being given up.
    async fn read(&mut self, records_max: usize, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        // The wait starts with the first record: an idle stream waits for events (the server
        // sends heartbeats) without waking.
        let mut deadline = None;
        let mut out = Vec::new();
        loop {
            if out.len() >= records_max {
                break;
            }
            if deadline.is_none() && !out.is_empty() {
                deadline = Some(tokio::time::Instant::now() + wait);
            }
            let streaming = &mut self.streaming;
            let next = std::future::poll_fn(|cx| Pin::new(&mut streaming.stream).poll_next(cx));
            let silence_max = Duration::from_millis(3 * self.config.heartbeat_interval_ms).max(STREAM_SILENCE_MIN);
            let next = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, next).await.map_err(|_| false),
                    // The server sends heartbeats while idle: silence means a dead connection.
                    None => tokio::time::timeout(silence_max, next).await.map_err(|_| true),
                }
            };
            let event = match next.await {
                Err(true) => {
                    return Err(SourceError::retryable(format!(
                        "mysql_cdc: no binlog event, not even a heartbeat, for {silence_max:?}; reconnecting"
                    )));
                }
                Err(false) => break, // waited long enough
                Ok(None) => return Err(SourceError::retryable("mysql_cdc: the server closed the binlog stream")),
                Ok(Some(Err(error))) => {
                    return Err(classify_stream_error(&error, &streaming.boundary.0));
                }
                Ok(Some(Ok(event))) => event,
            };
            let header = event.header();
            let end = u64::from(header.log_pos());
            let start = end.saturating_sub(u64::from(header.event_size()));
            let timestamp_ms = i64::from(header.timestamp()) * 1000;
            let event_server_id = header.server_id();
            if event.header().event_type_raw() == MARIADB_GTID_EVENT {
                streaming.transaction_start = Some((streaming.file.clone(), start));
                streaming.gtid = mariadb_gtid(event.data(), header.server_id());
                streaming.rows_in_transaction = 0;
                continue;
            }
            let data = event
                .read_data()
                .map_err(|e| SourceError::retryable(format!("mysql_cdc: undecodable binlog event: {e}")))?;
            match data {
                Some(EventData::RotateEvent(rotate)) => {
                    streaming.file = rotate_file_name(header.event_size(), rotate.name_raw(), self.checksums);
                    if streaming.transaction_start.is_none() {
                        streaming.boundary = (streaming.file.clone(), rotate.position());
                    }
                }
                Some(EventData::GtidEvent(gtid)) => {
                    streaming.transaction_start = Some((streaming.file.clone(), start));
                    let sid = gtid.sid();
                    let uuid = sid.iter().map(|b| format!("{b:02x}")).collect::<String>();
                    streaming.gtid = Some(format!(
                        "{}-{}-{}-{}-{}:{}",
                        &uuid[..8],
                        &uuid[8..12],
                        &uuid[12..16],
                        &uuid[16..20],
                        &uuid[20..],
                        gtid.gno()
                    ));
                    streaming.rows_in_transaction = 0;
                }
                Some(EventData::QueryEvent(query)) => {
                    let text = query.query().trim().to_string();
                    if text.eq_ignore_ascii_case("BEGIN") {
                        if streaming.transaction_start.is_none() {
                            streaming.transaction_start = Some((streaming.file.clone(), start));
                            streaming.rows_in_transaction = 0;
                        }
                    } else if text.eq_ignore_ascii_case("COMMIT") || text.eq_ignore_ascii_case("ROLLBACK") {
                        end_transaction(streaming, end);
                    } else if !is_ddl(&text) {
                        let upper = text.to_ascii_uppercase();
                        if !(upper.starts_with("SAVEPOINT")
                            || upper.starts_with("ROLLBACK TO")
                            || upper.starts_with("XA "))
                        {
                            // A statement logged on its own (GRANT, ANALYZE, …): its own
                            // transaction, not a schema change.
                            end_transaction(streaming, end);
                        }
                    } else {
                        // DDL: its own transaction. Every schema is reloaded on next use (the
                        // statement may name another database than the session's).
                        let database = query.schema().into_owned();
                        self.schemas = SchemaCache::default();
                        let streaming = &mut self.streaming;
                        end_transaction(streaming, end);
                        let (file, pos) = streaming.boundary.clone();
                        let value = json!({"database": database, "ddl": text, "ts_ms": timestamp_ms,
                            "source": {"name": self.emit.server_name, "file": file, "pos": pos, "gtid": streaming.gtid}});
                        streaming.last_emitted = Some((file.clone(), pos));
                        streaming.last_emitted_at = Instant::now();
                        out.push(SourceRecord {
                            record: Record {
                                topic: self.config.schema_topic.clone(),
                                // A statement run outside any database (CREATE USER) has none.
                                key: (!database.is_empty()).then(|| database.clone()),
                                value: value.to_string().into_bytes(),
                                tag: Some("ddl".into()),
                                timestamp_ms,
                                ..Record::default()
                            },
                            position: json!({"file": file, "pos": pos, "skip_rows": 0}),
                        });
                        metrics::counter!("weir_mysql_cdc_schema_changes_total", "connector" => self.connector.clone())
                            .increment(1);
                    }
                }
                Some(EventData::XidEvent(_)) => end_transaction(streaming, end),
                Some(EventData::RowsEvent(rows_event)) => {
                    let Some(tme) = streaming.stream.get_tme(rows_event.table_id()) else {
                        return Err(SourceError::retryable("mysql_cdc: a rows event without its table map"));
                    };
                    let (database, table) = (tme.database_name().into_owned(), tme.table_name().into_owned());
                    let op = match &rows_event {
                        RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => "c",
                        RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => "u",
                        RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => "d",
                        _ => continue, // partial updates need binlog_row_image=FULL, checked at start
                    };
                    let mut changes: Vec<(Option<RowValues>, Option<RowValues>)> = Vec::new();
                    for row in rows_event.rows(tme) {
                        let (before, after) = row.map_err(|e| {
                            SourceError::retryable(format!("mysql_cdc: undecodable row of {database}.{table}: {e}"))
                        })?;
                        let plain = |row: Option<mysql_async::binlog::row::BinlogRow>| {
                            row.map(|row| row.unwrap().into_iter().map(binlog_value).collect::<Vec<Value>>())
                        };
                        changes.push((plain(before), plain(after)));
                    }
                    let captured = self.filter.captures(&database, &table);
                    let transaction = streaming.transaction_start.clone().unwrap_or_else(|| streaming.boundary.clone());
                    let gtid = streaming.gtid.clone();
                    let schema = if captured {
                        self.schemas.get(&mut self.query, &database, &table).await.map_err(|e| {
                            SourceError::retryable(format!("mysql_cdc: columns of {database}.{table}: {e}"))
                        })?
                    } else {
                        None
                    };
                    let streaming = &mut self.streaming;
                    let block = schema.as_ref().map(|schema| {
                        let fields = SourceFields {
                            server_name: &self.emit.server_name,
                            snapshot: false,
                            gtid: gtid.as_deref(),
                            file: &transaction.0,
                            pos: transaction.1,
                            server_id: event_server_id,
                            ts_ms: timestamp_ms,
                        };
                        (self.emit.topic(&database, &table), SourceBlock::new(schema, &fields))
                    });
                    let (now, mut emitted) = (weir_connect::now_ms(), 0);
                    for (row_index, (before, after)) in changes.iter().enumerate() {
                        streaming.rows_in_transaction += 1;
                        if streaming.rows_in_transaction <= streaming.skip_rows {
                            continue; // delivered before the restart
                        }
                        let (Some(schema), Some((topic, block))) = (&schema, &block) else { continue };
                        let position = json!({"file": transaction.0, "pos": transaction.1,
                            "skip_rows": streaming.rows_in_transaction, "gtid": gtid});
                        let change = Change {
                            op,
                            before: before.as_deref(),
                            after: after.as_deref(),
                            origin: Origin::Binlog,
                            row: row_index,
                            now_ms: now,
                        };
                        streaming.last_emitted = Some(transaction.clone());
                        streaming.last_emitted_at = Instant::now();
                        out.push(self.emit.change(topic, schema, block, &change, timestamp_ms, position));
                        emitted += 1;
                    }
                    metrics::counter!("weir_mysql_cdc_changes_total", "connector" => self.connector.clone(), "op" => op)
                        .increment(emitted);
                }
                _ => {}
            }
            // Idle (or only uncaptured tables): a heartbeat moves the position on.
            let streaming = &mut self.streaming;
            let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
            if streaming.transaction_start.is_none()
                && out.is_empty()
                && streaming.last_emitted.as_ref() != Some(&streaming.boundary)
                && streaming.last_emitted_at.elapsed() >= interval
            {
                let (file, pos) = streaming.boundary.clone();
                streaming.last_emitted = Some((file.clone(), pos));
                streaming.last_emitted_at = Instant::now();
                out.push(self.emit.heartbeat(&file, pos));
                break;
            }
        }
        Ok(out)
    }
}

/// A table's name as its records' tag, unless RocketMQ cannot take it as one (a quoted name
/// with whitespace or `||`, or `*`): such records go untagged.
fn table_tag(table: &str) -> Option<String> {
    let valid = !table.is_empty() && table != "*" && !table.contains(char::is_whitespace) && !table.contains("||");
    valid.then(|| table.to_string())
}

/// Whether a statement changes a schema (and gets a schema-change event).
fn is_ddl(statement: &str) -> bool {
    let first = statement.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
    matches!(first.as_str(), "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE")
}

/// The server's current binlog file and position: `SHOW MASTER STATUS`, or `SHOW BINARY LOG
/// STATUS` where the former was removed (MySQL 8.4).
async fn binlog_status(conn: &mut Conn) -> Result<(String, u64), SourceError> {
    let row: Option<Row> = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(row) => row,
        Err(_) => conn
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .map_err(|e| SourceError::retryable(format!("mysql_cdc: cannot read the binlog position: {e}")))?,
    };
    let row = row.ok_or_else(|| SourceError::permanent("mysql_cdc: the binlog status is empty: is log_bin on?"))?;
    Ok((row.get::<String, _>(0).unwrap_or_default(), row.get::<u64, _>(1).unwrap_or(4)))
}

/// A row image's values, in column order.
type RowValues = Vec<Value>;

/// The file a rotate event names. The server's first (fake) rotate comes before the format
/// description, so the client cannot know it carries a checksum and reads the 4 checksum
/// bytes as part of the name: when the server writes checksums (`binlog_checksum` is not
/// NONE) and the name fills the whole event after its 19-byte header and 8-byte position,
/// its last 4 bytes are that checksum.
pub fn rotate_file_name(event_size: u32, name: &[u8], checksums: bool) -> String {
    const HEADER_AND_POSITION_BYTES: usize = 19 + 8;
    const CHECKSUM_BYTES: usize = 4;
    let with_checksum = checksums && name.len() + HEADER_AND_POSITION_BYTES == event_size as usize;
    let name = if with_checksum && name.len() > CHECKSUM_BYTES { &name[..name.len() - CHECKSUM_BYTES] } else { name };
    String::from_utf8_lossy(name).into_owned()
}

/// A transaction ended at `end`: the next boundary.
fn end_transaction(streaming: &mut Streaming, end: u64) {
    streaming.boundary = (streaming.file.clone(), end);
    streaming.transaction_start = None;
    streaming.rows_in_transaction = 0;
    streaming.skip_rows = 0;
}

/// `domain-server-sequence` from a MariaDB GTID event's body (sequence u64, domain u32).
fn mariadb_gtid(data: &[u8], server_id: u32) -> Option<String> {
    let sequence = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    Some(format!("{domain}-{server_id}-{sequence}"))
}

/// A binlog value as a plain value (MySQL's binary JSON as its JSON text).
fn binlog_value(value: mysql_async::binlog::value::BinlogValue<'static>) -> Value {
    use mysql_async::binlog::value::BinlogValue;
    match value {
        BinlogValue::Value(value) => value,
        BinlogValue::Jsonb(jsonb) => match serde_json::Value::try_from(jsonb) {
            Ok(json) => Value::Bytes(json.to_string().into_bytes()),
            Err(_) => Value::NULL,
        },
        BinlogValue::JsonDiff(_) => Value::NULL, // not produced with binlog_row_image=FULL
    }
}

fn classify_stream_error(error: &mysql_async::Error, file: &str) -> SourceError {
    match error {
        // ER_MASTER_FATAL_ERROR_READING_BINLOG: the file is gone (purged) or unreadable.
        mysql_async::Error::Server(e) if e.code == 1236 => SourceError::permanent(format!(
            "mysql_cdc: the server cannot send binlog {file:?} any more ({}); the changes since the committed position are lost to this source: \
             reset its offsets (DELETE /connectors/<name>/offsets) to snapshot again, or set `snapshot: when_needed`",
            e.message
        )),
        other => SourceError::retryable(format!("mysql_cdc: binlog stream: {other}")),
    }
}

/// The next chunk of a snapshot: by primary key after `last_key`, or by offset for tables
/// without one.
fn chunk_query(schema: &TableSchema, last_key: Option<&[Value]>, offset: u64, limit: usize) -> (String, Vec<Value>) {
    let quote = |name: &str| format!("`{}`", name.replace('`', "``"));
    let columns: Vec<String> = schema.columns.iter().map(|c| quote(&c.name)).collect();
    let table = format!("{}.{}", quote(&schema.database), quote(&schema.table));
    if schema.key.is_empty() {
        return (format!("SELECT {} FROM {table} LIMIT {limit} OFFSET {offset}", columns.join(",")), Vec::new());
    }
    let key: Vec<String> = schema.key.iter().map(|i| quote(&schema.columns[*i].name)).collect();
    let order = key.join(",");
    match last_key {
        None => (format!("SELECT {} FROM {table} ORDER BY {order} LIMIT {limit}", columns.join(",")), Vec::new()),
        Some(values) => (
            format!(
                "SELECT {} FROM {table} WHERE ({order}) > ({}) ORDER BY {order} LIMIT {limit}",
                columns.join(","),
                vec!["?"; key.len()].join(",")
            ),
            values.to_vec(),
        ),
    }
}

#[async_trait]
impl Source for MySqlCdcSource {
    async fn open(&mut self, position: Option<Position>) -> Result<(), SourceError> {
        self.state = State::Closed;
        self.query = None;
        self.delivered = None;
        let mut conn = self.connect().await?;
        self.check_server(&mut conn).await?;
        let files = Self::binlog_files(&mut conn).await?;
        let checksum: Option<String> = conn.query_first("SELECT @@global.binlog_checksum").await.unwrap_or(None);
        self.checksums = checksum.is_none_or(|alg| !alg.eq_ignore_ascii_case("NONE"));
        let committed = position.as_ref().and_then(|p| {
            let file = p.get("file")?.as_str()?.to_string();
            let pos = p.get("pos")?.as_u64()?;
            Some((file, pos, p.get("skip_rows").and_then(Json::as_u64).unwrap_or(0)))
        });
        self.query = Some(conn);
        match committed {
            Some((file, pos, skip_rows)) if files.contains(&file) => self.start_streaming(file, pos, skip_rows).await,
            Some((file, _, _)) if self.config.snapshot == SnapshotMode::WhenNeeded => {
                tracing::warn!(connector = %self.connector, %file, "the committed binlog file was purged; snapshotting again");
                self.start_snapshot().await
            }
            Some((file, _, _)) => Err(SourceError::permanent(format!(
                "mysql_cdc: the committed binlog file {file:?} was purged from {} (it has {}); reset the connector's offsets \
                 (DELETE /connectors/{}/offsets) to snapshot again, or set `snapshot: when_needed`",
                self.address(),
                files.join(", "),
                self.connector
            ))),
            None if self.config.snapshot == SnapshotMode::Never => {
                let (file, pos) = binlog_status(self.query.as_mut().expect("set above")).await?;
                self.start_streaming(file, pos, 0).await
            }
            // No position, or a snapshot that did not finish: snapshot (again).
            None => self.start_snapshot().await,
        }
    }

    async fn poll(&mut self, records_max: usize, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        match &self.state {
            State::Closed => match self.delivered.clone() {
                Some((file, pos, skip_rows)) => {
                    self.start_streaming(file, pos, skip_rows).await?;
                    Ok(Vec::new())
                }
                // A snapshot failed part way (or never started): snapshot again.
                None => {
                    self.start_snapshot().await?;
                    Ok(Vec::new())
                }
            },
            State::Snapshot(_) => self.poll_snapshot(records_max).await,
            State::Streaming(_) => match self.poll_stream(records_max, wait).await {
                Ok(records) => {
                    if let Some(position) = records.last().map(|r| &r.position) {
                        let file = position.get("file").and_then(Json::as_str).map(str::to_string);
                        let pos = position.get("pos").and_then(Json::as_u64);
                        if let (Some(file), Some(pos)) = (file, pos) {
                            let skip = position.get("skip_rows").and_then(Json::as_u64).unwrap_or(0);
                            self.delivered = Some((file, pos, skip));
                        }
                    }
                    Ok(records)
                }
                Err(error) => {
                    // The reader consumed events whose records were not handed out: the next
                    // poll reads again from the last record handed out.
                    self.state = State::Closed;
                    Err(error)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_whose_names_cannot_be_tags_go_untagged() {
        for (table, tag) in [("orders", Some("orders")), ("my orders", None), ("a||b", None), ("*", None)] {
            assert_eq!(table_tag(table).as_deref(), tag, "{table:?}");
        }
    }

    #[test]
    fn rotate_names_lose_a_checksum_read_as_part_of_the_name() {
        // A fake rotate before the format description: 19 + 8 + name + 4 checksum bytes, all
        // read as the name.
        assert_eq!(rotate_file_name(19 + 8 + 13 + 4, b"binlog.000001\x57\x4b\x01\x02", true), "binlog.000001");
        assert_eq!(rotate_file_name(19 + 8 + 13, b"binlog.000003", false), "binlog.000003", "no checksums");
        // A real rotate: the client already stripped the checksum.
        assert_eq!(rotate_file_name(19 + 8 + 13 + 4, b"binlog.000002", true), "binlog.000002");
        for (statement, ddl) in [
            ("ALTER TABLE t ADD c INT", true),
            ("  create table x (a int)", true),
            ("SAVEPOINT s1", false),
            ("XA START 'x'", false),
        ] {
            assert_eq!(is_ddl(statement), ddl, "{statement}");
        }
    }
}
