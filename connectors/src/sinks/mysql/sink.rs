//! The MySQL sink: connection pool, start-up checks, and the transactional write path.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, TxOpts};
use weir_connect::{BatchPreparer, PreparedBatch, Sink, SinkError, SinkRecord};

use super::config::{MySqlMode, MySqlSinkConfig};
use super::statement::{self, ColumnKind, RowChange, Statement, TableShape};

/// Why the sink cannot start, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum MySqlSinkError {
    /// A setting is wrong.
    #[error("mysql sink {connector:?}: `{field}` {reason}")]
    Config { connector: String, field: &'static str, reason: String },
    /// The server cannot be reached.
    #[error(
        "mysql sink {connector:?}: cannot reach MySQL at {address}: {reason} (is it running, and is the URL's host and port right?)"
    )]
    Unreachable { connector: String, address: String, reason: String },
    /// The server refused the user.
    #[error(
        "mysql sink {connector:?}: MySQL at {address} refused user {user:?}: {reason} (check the URL's user and password)"
    )]
    Auth { connector: String, address: String, user: String, reason: String },
    /// The table is missing and the sink may not create it.
    #[error(
        "mysql sink {connector:?}: table `{database}`.`{table}` does not exist; create it or set `auto_create: true`"
    )]
    MissingTable { connector: String, database: String, table: String },
    /// The server answered a start-up query with an error.
    #[error("mysql sink {connector:?}: {what}: {reason}")]
    Server { connector: String, what: &'static str, reason: String },
}

/// Writes records into one table.
pub struct MySqlSink {
    connector: String,
    config: MySqlSinkConfig,
    pool: Pool,
    /// The table as last read; replaced (never changed in place) when its columns are read
    /// again, so a batch decoded ahead can tell whether it was decoded against this shape.
    table: Arc<TableShape>,
    /// Spreads keys over partitions (`concurrency`).
    hasher: std::collections::hash_map::RandomState,
    /// The server reported an unknown column: reread the table's columns before writing.
    columns_stale: bool,
    /// When a record's unknown field last made the sink read the columns and they had not
    /// changed: it reads them again for such a field only `COLUMNS_RECHECK_INTERVAL` later.
    fruitless_recheck_at: Option<std::time::Instant>,
    /// Partitions deadlocked on each other: the next write runs as one transaction.
    serial_next: bool,
}

/// How often at most a record's field that is not a known column reads the columns again.
const COLUMNS_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a pooled connection may sit idle before it is closed.
const POOL_IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// The session settings every connection gets: strict mode, so a value that does not fit its
/// column is an error (poison) rather than silently truncated; a zero written to an
/// AUTO_INCREMENT key is stored as zero (a replicated row 0 is not given a new id); times
/// are UTC, as the CDC source writes TIMESTAMP values (so they are not shifted by the
/// target's zone); and autocommit, which a batch of one statement relies on (a server
/// configured with `autocommit=0` would otherwise leave it in an open transaction that
/// nothing commits).
const SESSION_INIT: &str = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO', \
     time_zone = '+00:00', autocommit = 1";

impl MySqlSink {
    /// Connects, checks the table (creating it from declared `columns` when allowed), and
    /// fails with an actionable error when the server, the credentials or the table are wrong.
    pub async fn connect(connector: &str, config: MySqlSinkConfig) -> Result<MySqlSink, MySqlSinkError> {
        let fail_config = |(field, reason): (&'static str, String)| MySqlSinkError::Config {
            connector: connector.into(),
            field,
            reason,
        };
        config.validate().map_err(fail_config)?;
        let opts = Opts::from_url(&config.url).map_err(|e| fail_config(("url", e.to_string())))?;
        let address = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let user = opts.user().unwrap_or_default().to_string();
        let Some(database) = opts.db_name().map(str::to_string) else {
            return Err(fail_config(("url", "names no database (mysql://user:password@host:port/DATABASE)".into())));
        };
        let constraints = PoolConstraints::new(0, config.connections_max).expect("validated: 0 <= connections_max");
        let builder = OptsBuilder::from_opts(opts)
            // Connections stay open between batches (with no inactive TTL the pool keeps at most
            // `min` = 0 idle ones: a new connection, session setup and statement preparation
            // every batch), up to `connections_max`, closed after a minute idle. No reset when
            // one goes back to the pool: a reset drops the server's prepared statements, and
            // re-preparing a 1000-row statement costs more than executing it. The sink keeps no
            // session state but `setup`'s; an unfinished transaction is rolled back on return.
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    .with_inactive_connection_ttl(POOL_IDLE_CONNECTION_TTL)
                    .with_reset_connection(false),
            )
            .setup(vec![SESSION_INIT]);
        let pool = Pool::new(builder);
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let mut conn = match tokio::time::timeout(timeout, pool.get_conn()).await {
            Err(_) => {
                let reason = format!("no connection within {timeout:?}");
                return Err(MySqlSinkError::Unreachable { connector: connector.into(), address, reason });
            }
            Ok(Err(mysql_async::Error::Server(error))) if matches!(error.code, 1045 | 1044 | 1698) => {
                return Err(MySqlSinkError::Auth { connector: connector.into(), address, user, reason: error.message });
            }
            Ok(Err(mysql_async::Error::Server(error))) if error.code == 1049 => {
                return Err(fail_config(("url", format!("names database {database:?}, which does not exist"))));
            }
            Ok(Err(error @ (mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)))) => {
                return Err(MySqlSinkError::Unreachable {
                    connector: connector.into(),
                    address,
                    reason: error.to_string(),
                });
            }
            Ok(Err(error)) => {
                return Err(MySqlSinkError::Server {
                    connector: connector.into(),
                    what: "connect",
                    reason: error.to_string(),
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let server = |what| {
            move |error: mysql_async::Error| MySqlSinkError::Server {
                connector: connector.into(),
                what,
                reason: error.to_string(),
            }
        };
        let mut columns = table_columns(&mut conn, &config.table).await.map_err(server("read the table's columns"))?;
        if columns.is_none() && !config.columns.is_empty() {
            let declared = config.columns.iter().map(|(name, sql_type)| (name.as_str(), sql_type.clone()));
            let sql = statement::create_table_sql(&config.table, declared, &config.key_columns);
            conn.query_drop(&sql).await.map_err(server("create the table from `columns`"))?;
            tracing::info!(connector, table = %config.table, "mysql sink created its table from the declared columns");
            columns = table_columns(&mut conn, &config.table).await.map_err(server("read the table's columns"))?;
        }
        match &columns {
            None if !config.auto_create => {
                return Err(MySqlSinkError::MissingTable {
                    connector: connector.into(),
                    database,
                    table: config.table,
                });
            }
            Some(known) => {
                if let Some(missing) = config.key_columns.iter().find(|key| !known.contains_key(*key)) {
                    return Err(fail_config((
                        "key_columns",
                        format!("names {missing:?}, which is not a column of `{}`", config.table),
                    )));
                }
            }
            None => {}
        }
        drop(conn);
        let table = Arc::new(TableShape {
            name: config.table.clone(),
            key_columns: config.key_columns.clone(),
            columns,
            unknown_fields: config.unknown_fields,
            cdc_images: config.mode == MySqlMode::Cdc,
        });
        tracing::info!(connector, %address, %database, table = %config.table, mode = ?config.mode, "mysql sink connected");
        Ok(MySqlSink {
            connector: connector.into(),
            config,
            pool,
            table,
            hasher: Default::default(),
            columns_stale: false,
            fruitless_recheck_at: None,
            serial_next: false,
        })
    }

    /// Splits a batch's changes over `concurrency` partitions by a hash of the row key (in
    /// `key_columns` order), all of one record's changes in one partition, so one key's
    /// changes stay in order on one connection. A batch where a record changes a row's key
    /// (a delete and a write of two keys) stays in one partition.
    fn partition(&self, changes: Vec<(usize, RowChange)>) -> Vec<Vec<(usize, RowChange)>> {
        let partitions = self.config.concurrency;
        let changes_key = changes.windows(2).any(|pair| pair[0].0 == pair[1].0);
        // Insert mode is one transaction per batch: a retry after some partitions committed
        // would find their rows as duplicates (1062) and take them for poison.
        let inserts = self.config.mode == MySqlMode::Insert;
        if partitions == 1 || changes_key || inserts || self.serial_next {
            return vec![changes];
        }
        let mut parts: Vec<Vec<(usize, RowChange)>> = vec![Vec::new(); partitions];
        for (index, change) in changes {
            let key: Vec<&mysql_async::Value> = match &change {
                RowChange::Delete { key } => key.iter().collect(),
                RowChange::Write { columns, values, .. } => self
                    .table
                    .key_columns
                    .iter()
                    .filter_map(|key| columns.iter().position(|c| c == key).map(|at| &values[at]))
                    .collect(),
            };
            let part = if key.is_empty() { index } else { self.hasher.hash_one(format!("{key:?}")) as usize };
            parts[part % partitions].push((index, change));
        }
        parts
    }

    /// Creates the table from the first record that writes a row (auto-create).
    async fn create_table_from(&mut self, row: &RowChange) -> Result<(), SinkError> {
        let RowChange::Write { columns, types, .. } = row else { return Ok(()) };
        let declared = columns.iter().zip(types).map(|(name, sql_type)| {
            let sql_type =
                if self.config.key_columns.contains(name) && *sql_type == "TEXT" { "VARCHAR(255)" } else { sql_type };
            (name.as_str(), sql_type.to_string())
        });
        let sql = statement::create_table_sql(&self.table.name, declared, &self.config.key_columns);
        let mut conn = self.pool.get_conn().await.map_err(transient)?;
        conn.query_drop(&sql).await.map_err(transient)?;
        let columns = table_columns(&mut conn, &self.table.name).await.map_err(transient)?;
        self.table = Arc::new(TableShape { columns, ..TableShape::clone(&self.table) });
        tracing::info!(connector = %self.connector, table = %self.table.name, %sql, "mysql sink created its table from the first record");
        Ok(())
    }
}

/// The table's columns and what they hold, or `None` when it does not exist.
async fn table_columns(
    conn: &mut mysql_async::Conn,
    table: &str,
) -> Result<Option<BTreeMap<String, ColumnKind>>, mysql_async::Error> {
    let columns: Vec<(String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        .await?;
    Ok(if columns.is_empty() {
        None
    } else {
        Some(columns.into_iter().map(|(name, data_type)| (name, ColumnKind::from_data_type(&data_type))).collect())
    })
}

fn transient(error: mysql_async::Error) -> SinkError {
    SinkError::retryable(format!("mysql: {error}"))
}

/// Whether the server refused the *data* (the record is at fault), not the connection, the
/// schema or the load. Size errors count: a multi-row statement that is too large falls back
/// to one statement per record, and a record too large alone is poison.
fn is_data_error(error: &mysql_async::Error) -> bool {
    match error {
        mysql_async::Error::Driver(mysql_async::DriverError::PacketTooLarge) => true,
        mysql_async::Error::Server(error) => matches!(
            error.code,
            1048 // column cannot be null
                | 1062 // duplicate entry (insert mode)
                | 1118 // row size too large
                | 1136 // column count
                | 1153 // packet larger than max_allowed_packet
                | 1264 // out of range
                | 1265 // data truncated
                | 1292 // incorrect value (dates, numbers)
                | 1366 // incorrect value for column
                | 1367 // illegal value
                | 1390 // too many placeholders
                | 1406 // data too long
                | 1411 // incorrect value for function
                | 1416 // cannot get geometry
                | 1451 | 1452 // foreign keys
                | 1690 // value out of range
                | 3140 // invalid JSON (MySQL)
                | 4025 // CHECK constraint (MariaDB, JSON columns too)
                | 3819 // CHECK constraint (MySQL)
        ),
        _ => false,
    }
}

/// A partition's transient failure and what it says about the next attempt.
struct Failed {
    error: SinkError,
    /// The server did not know a column the sink wrote (1054): the table changed since the
    /// sink read its columns; they are read again before the retry.
    unknown_column: bool,
    /// A deadlock or lock wait timeout (1213, 1205), which parallel partitions can cause
    /// (gap locks): the retry runs as one transaction.
    lock_conflict: bool,
}

fn failed(error: mysql_async::Error) -> Failed {
    let code = match &error {
        mysql_async::Error::Server(e) => e.code,
        _ => 0,
    };
    Failed { error: transient(error), unknown_column: code == 1054, lock_conflict: matches!(code, 1205 | 1213) }
}

/// Records the server refused, with its reason.
type Refused = Vec<(usize, String)>;

/// Writes one partition's changes (as `statements`, when they were built ahead).
async fn write_partition(
    pool: Pool,
    table: Arc<TableShape>,
    mode: MySqlMode,
    changes: Vec<(usize, RowChange)>,
    statements: Option<Vec<Statement>>,
) -> Result<(u64, Refused), Failed> {
    let mut statements = statements.unwrap_or_else(|| statement::statements(&changes, &table, mode));
    let mut conn = pool.get_conn().await.map_err(failed)?;
    let error = if statements.len() == 1 {
        // One statement is atomic on its own: no transaction, two round trips fewer.
        let Statement { sql, params } = statements.pop().expect("one statement");
        match conn.exec_drop(sql, Params::Positional(params)).await {
            Ok(()) => return Ok((changes.len() as u64, Vec::new())),
            Err(error) if is_data_error(&error) => error,
            Err(error) => return Err(failed(error)),
        }
    } else {
        let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(failed)?;
        let mut data_error = None;
        for Statement { sql, params } in statements {
            if let Err(error) = tx.exec_drop(sql, Params::Positional(params)).await {
                if !is_data_error(&error) {
                    return Err(failed(error)); // dropping the transaction rolls it back
                }
                data_error = Some(error);
                break;
            }
        }
        let Some(error) = data_error else {
            tx.commit().await.map_err(failed)?;
            return Ok((changes.len() as u64, Vec::new()));
        };
        tx.rollback().await.map_err(failed)?;
        error
    };
    tracing::debug!(%error, "mysql sink batch refused; writing its records one by one");
    // One record at a time, each behind a savepoint, so a refused record takes back only its
    // own changes.
    let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(failed)?;
    let mut refused = Vec::new();
    let mut rows = 0u64;
    let mut start = 0;
    while start < changes.len() {
        let index = changes[start].0;
        let end = start + changes[start..].iter().take_while(|(i, _)| *i == index).count();
        tx.query_drop("SAVEPOINT weir_record").await.map_err(failed)?;
        let mut refusal = None;
        for Statement { sql, params } in statement::statements(&changes[start..end], &table, mode) {
            if let Err(error) = tx.exec_drop(sql, Params::Positional(params)).await {
                if !is_data_error(&error) {
                    return Err(failed(error));
                }
                refusal = Some(error);
                break;
            }
        }
        match refusal {
            Some(error) => {
                tx.query_drop("ROLLBACK TO SAVEPOINT weir_record").await.map_err(failed)?;
                refused.push((index, format!("mysql refused the record: {error}")));
            }
            None => rows += (end - start) as u64,
        }
        start = end;
    }
    tx.commit().await.map_err(failed)?;
    Ok((rows, refused))
}

/// Decodes records into row changes against the table's shape at the time: needs nothing
/// else of the sink, so the sink task runs it on the next batch while the current one is
/// written.
struct RowDecoder {
    table: Arc<TableShape>,
    mode: MySqlMode,
    /// One partition: the statements can be built here too.
    single_partition: bool,
}

/// A batch as row changes, with the records refused while decoding and the shape it was
/// decoded against; with one partition, also its statements.
struct Decoded {
    table: Arc<TableShape>,
    changes: Vec<(usize, RowChange)>,
    refused: Refused,
    statements: Option<Vec<Statement>>,
    /// Some record had a field that is not a known column.
    unknown_seen: bool,
}

impl RowDecoder {
    fn decode(&self, batch: &[SinkRecord]) -> Decoded {
        let mut refused: Refused = Vec::new();
        let mut changes = Vec::with_capacity(batch.len());
        let mut unknown_seen = false;
        for (index, record) in batch.iter().enumerate() {
            match statement::changes_noting_unknown(record, self.mode, &self.table, &mut unknown_seen) {
                Ok(record_changes) => changes.extend(record_changes.into_iter().map(|change| (index, change))),
                Err(reason) => refused.push((index, reason)),
            }
        }
        // Without a table yet, the batch is decoded again once it exists.
        let statements = (self.single_partition && self.table.columns.is_some())
            .then(|| statement::statements(&changes, &self.table, self.mode));
        Decoded { table: self.table.clone(), changes, refused, statements, unknown_seen }
    }
}

impl BatchPreparer for RowDecoder {
    fn prepare(&self, batch: &[SinkRecord]) -> PreparedBatch {
        Box::new(self.decode(batch))
    }
}

impl MySqlSink {
    fn decoder(&self) -> RowDecoder {
        RowDecoder { table: self.table.clone(), mode: self.config.mode, single_partition: self.config.concurrency == 1 }
    }

    /// Writes a decoded batch: creates the table first when it is missing (auto-create), then
    /// writes the changes by partition, each in one transaction.
    async fn write_decoded(&mut self, batch: &[SinkRecord], decoded: Decoded) -> Result<(), SinkError> {
        let Decoded { table, changes, mut refused, mut statements, unknown_seen } = decoded;
        debug_assert!(Arc::ptr_eq(&table, &self.table), "decoded against the current shape");
        let recheck_due = self.fruitless_recheck_at.is_none_or(|at| at.elapsed() >= COLUMNS_RECHECK_INTERVAL);
        if unknown_seen && table.columns.is_some() && recheck_due {
            // A field the known columns lack: the table may have gained that column since
            // they were read (a DDL the CDC source replayed). Read them again and decode
            // again if they changed, before refusing or dropping the field; a read that
            // finds nothing new waits an interval before the next (a pipeline that ignores
            // extra fields sends them in every batch).
            let mut conn = self.pool.get_conn().await.map_err(transient)?;
            let columns = table_columns(&mut conn, &self.table.name).await.map_err(transient)?;
            if columns != self.table.columns {
                tracing::info!(connector = %self.connector, table = %self.table.name, "mysql sink: the table's columns changed; decoding the batch again");
                self.table = Arc::new(TableShape { columns, ..TableShape::clone(&self.table) });
                self.fruitless_recheck_at = None;
                return Box::pin(self.write(batch)).await;
            }
            self.fruitless_recheck_at = Some(std::time::Instant::now());
        }
        if table.columns.is_none()
            && let Some((_, first)) = changes.iter().find(|(_, change)| matches!(change, RowChange::Write { .. }))
        {
            self.create_table_from(first).await?;
            if self.table.columns.is_none() {
                return Err(SinkError::retryable(format!(
                    "mysql: table `{}` is still missing after CREATE TABLE (privileges? lower_case_table_names?)",
                    self.table.name
                )));
            }
            // Re-check every record against the columns the table now has.
            return Box::pin(self.write(batch)).await;
        }
        let parts = self.partition(changes);
        let partitions = parts.iter().filter(|part| !part.is_empty()).count();
        if parts.len() != 1 {
            statements = None; // built for one partition
        }
        let mut tasks = tokio::task::JoinSet::new();
        for part in parts.into_iter().filter(|part| !part.is_empty()) {
            let statements = statements.take();
            tasks.spawn(write_partition(self.pool.clone(), table.clone(), self.config.mode, part, statements));
        }
        let (mut failure, mut rows, mut server_refused) = (None, 0, false);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok((part_rows, part_refused))) => {
                    rows += part_rows;
                    server_refused |= !part_refused.is_empty();
                    refused.extend(part_refused);
                }
                Ok(Err(Failed { error, unknown_column, lock_conflict })) => {
                    self.columns_stale |= unknown_column;
                    self.serial_next |= lock_conflict;
                    failure = Some(error);
                }
                Err(error) => failure = Some(SinkError::retryable(format!("mysql sink writer failed: {error}"))),
            }
        }
        // Partitions that committed count even when another failed (the retry rewrites them).
        metrics::counter!("weir_mysql_sink_rows_total", "connector" => self.connector.clone()).increment(rows);
        if let Some(error) = failure {
            return Err(error); // upserts rewrite idempotently; the whole batch is retried
        }
        if server_refused && partitions > 1 && !self.serial_next {
            // Refusals in parallel partitions may be an order across keys (a child row before
            // its parent's, 1452; two rows swapping a unique value, 1062): one serial
            // transaction, now, decides which records really are at fault (the committed
            // partitions rewrite idempotently).
            tracing::debug!(connector = %self.connector, refused = refused.len(), "mysql sink: refusals across parallel partitions; writing the batch again in one transaction");
            self.serial_next = true;
            return Box::pin(self.write(batch)).await;
        }
        self.serial_next = false;
        if refused.is_empty() {
            return Ok(());
        }
        metrics::counter!("weir_mysql_sink_records_refused_total", "connector" => self.connector.clone())
            .increment(refused.len() as u64);
        let message = format!("mysql sink {:?}: {} record(s) of the batch refused", self.connector, refused.len());
        Err(SinkError::poison_each(message, refused.into_iter().collect()))
    }
}

#[async_trait]
impl Sink for MySqlSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        if self.columns_stale {
            // The server said a column is unknown: the table changed under us.
            let mut conn = self.pool.get_conn().await.map_err(transient)?;
            let columns = table_columns(&mut conn, &self.table.name).await.map_err(transient)?;
            self.table = Arc::new(TableShape { columns, ..TableShape::clone(&self.table) });
            self.columns_stale = false;
        }
        let decoded = self.decoder().decode(batch);
        self.write_decoded(batch, decoded).await
    }

    fn preparer(&self) -> Option<Arc<dyn BatchPreparer>> {
        Some(Arc::new(self.decoder()))
    }

    async fn write_prepared(&mut self, batch: &[SinkRecord], prepared: PreparedBatch) -> Result<(), SinkError> {
        match prepared.downcast::<Decoded>() {
            Ok(decoded) if !self.columns_stale && Arc::ptr_eq(&decoded.table, &self.table) => {
                self.write_decoded(batch, *decoded).await
            }
            _ => self.write(batch).await, // the table changed since (or not ours): decode again
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(()) // every write commits its transaction
    }
}

impl Drop for MySqlSink {
    fn drop(&mut self) {
        // Close pooled connections in the background rather than leaving them to time out.
        let pool = self.pool.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = pool.disconnect().await;
            });
        }
    }
}
