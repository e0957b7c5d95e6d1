//! The MySQL sink: connection pool, start-up checks, and the transactional write path.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, TxOpts};
use weir_connect::{Sink, SinkError, SinkRecord};

use super::config::{MySqlMode, MySqlSinkConfig};
use super::statement::{self, RowChange, Statement, TableShape};

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
    table: TableShape,
    /// Spreads keys over partitions (`concurrency`).
    hasher: std::collections::hash_map::RandomState,
}

/// The session settings every connection gets: strict mode, so a value that does not fit its
/// column is an error (poison) rather than silently truncated.
const SESSION_INIT: &str =
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'";

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
            .pool_opts(PoolOpts::default().with_constraints(constraints))
            .init(vec![SESSION_INIT]);
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
                if let Some(missing) = config.key_columns.iter().find(|key| !known.contains(*key)) {
                    return Err(fail_config((
                        "key_columns",
                        format!("names {missing:?}, which is not a column of `{}`", config.table),
                    )));
                }
            }
            None => {}
        }
        drop(conn);
        let table = TableShape {
            name: config.table.clone(),
            key_columns: config.key_columns.clone(),
            columns,
            unknown_fields: config.unknown_fields,
        };
        tracing::info!(connector, %address, %database, table = %config.table, mode = ?config.mode, "mysql sink connected");
        Ok(MySqlSink { connector: connector.into(), config, pool, table, hasher: Default::default() })
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
        self.table.columns = table_columns(&mut conn, &self.table.name).await.map_err(transient)?;
        tracing::info!(connector = %self.connector, table = %self.table.name, %sql, "mysql sink created its table from the first record");
        Ok(())
    }
}

/// The table's columns, or `None` when it does not exist.
async fn table_columns(
    conn: &mut mysql_async::Conn,
    table: &str,
) -> Result<Option<BTreeSet<String>>, mysql_async::Error> {
    let names: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        .await?;
    Ok(if names.is_empty() { None } else { Some(names.into_iter().collect()) })
}

fn transient(error: mysql_async::Error) -> SinkError {
    SinkError::retryable(format!("mysql: {error}"))
}

/// Whether the server refused the *data* (the record is at fault), not the connection, the
/// schema or the load.
fn is_data_error(error: &mysql_async::Error) -> bool {
    let mysql_async::Error::Server(error) = error else { return false };
    matches!(
        error.code,
        1048 // column cannot be null
            | 1054 // unknown column
            | 1062 // duplicate entry (insert mode)
            | 1136 // column count
            | 1264 // out of range
            | 1265 // data truncated
            | 1292 // incorrect value (dates, numbers)
            | 1366 // incorrect value for column
            | 1367 // illegal value
            | 1406 // data too long
            | 1411 // incorrect value for function
            | 1416 // cannot get geometry
            | 1451 | 1452 // foreign keys
            | 1690 // value out of range
            | 3140 // invalid JSON (MySQL)
            | 4025 // CHECK constraint (MariaDB, JSON columns too)
            | 3819 // CHECK constraint (MySQL)
    )
}

/// The outcome of a partition: records the server refused, with its reason.
type Refused = Vec<(usize, String)>;

async fn write_partition(
    pool: Pool,
    table: TableShape,
    mode: MySqlMode,
    changes: Vec<(usize, RowChange)>,
) -> Result<Refused, SinkError> {
    let statements = statement::statements(&changes, &table, mode);
    let mut conn = pool.get_conn().await.map_err(transient)?;
    let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(transient)?;
    let mut data_error = None;
    for Statement { sql, params } in statements {
        if let Err(error) = tx.exec_drop(sql, Params::Positional(params)).await {
            if !is_data_error(&error) {
                return Err(transient(error)); // dropping the transaction rolls it back
            }
            data_error = Some(error);
            break;
        }
    }
    let Some(error) = data_error else {
        tx.commit().await.map_err(transient)?;
        metrics::counter!("weir_mysql_sink_rows_total").increment(changes.len() as u64);
        return Ok(Vec::new());
    };
    tracing::debug!(%error, "mysql sink batch refused; writing its records one by one");
    tx.rollback().await.map_err(transient)?;
    // One record at a time, each behind a savepoint, so a refused record takes back only its
    // own changes.
    let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(transient)?;
    let mut refused = Vec::new();
    let mut rows = 0u64;
    let mut start = 0;
    while start < changes.len() {
        let index = changes[start].0;
        let end = start + changes[start..].iter().take_while(|(i, _)| *i == index).count();
        tx.query_drop("SAVEPOINT weir_record").await.map_err(transient)?;
        let mut failed = None;
        for Statement { sql, params } in statement::statements(&changes[start..end], &table, mode) {
            if let Err(error) = tx.exec_drop(sql, Params::Positional(params)).await {
                if !is_data_error(&error) {
                    return Err(transient(error));
                }
                failed = Some(error);
                break;
            }
        }
        match failed {
            Some(error) => {
                tx.query_drop("ROLLBACK TO SAVEPOINT weir_record").await.map_err(transient)?;
                refused.push((index, format!("mysql refused the record: {error}")));
            }
            None => rows += (end - start) as u64,
        }
        start = end;
    }
    tx.commit().await.map_err(transient)?;
    metrics::counter!("weir_mysql_sink_rows_total").increment(rows);
    Ok(refused)
}

#[async_trait]
impl Sink for MySqlSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut refused: Refused = Vec::new();
        let mut changes = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match statement::changes(record, self.config.mode, &self.table) {
                Ok(record_changes) => changes.extend(record_changes.into_iter().map(|change| (index, change))),
                Err(reason) => refused.push((index, reason)),
            }
        }
        if self.table.columns.is_none()
            && let Some((_, first)) = changes.iter().find(|(_, change)| matches!(change, RowChange::Write { .. }))
        {
            let first = first.clone();
            self.create_table_from(&first).await?;
            // Re-check every record against the columns the table now has.
            return self.write(batch).await;
        }
        let partitions = self.config.concurrency;
        let mut parts: Vec<Vec<(usize, RowChange)>> = vec![Vec::new(); partitions];
        for (index, change) in changes {
            let part = if partitions == 1 {
                0
            } else {
                match &change {
                    RowChange::Delete { key } => self.hasher.hash_one(format!("{key:?}")) as usize % partitions,
                    RowChange::Write { columns, values, .. } => {
                        let key: Vec<_> = columns
                            .iter()
                            .zip(values)
                            .filter(|(c, _)| self.table.key_columns.contains(c))
                            .map(|(_, v)| v)
                            .collect();
                        if key.is_empty() {
                            index % partitions
                        } else {
                            self.hasher.hash_one(format!("{key:?}")) as usize % partitions
                        }
                    }
                }
            };
            parts[part].push((index, change));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for part in parts.into_iter().filter(|part| !part.is_empty()) {
            tasks.spawn(write_partition(self.pool.clone(), self.table.clone(), self.config.mode, part));
        }
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(part_refused)) => refused.extend(part_refused),
                Ok(Err(error)) => failure = Some(error),
                Err(error) => failure = Some(SinkError::retryable(format!("mysql sink writer failed: {error}"))),
            }
        }
        if let Some(error) = failure {
            return Err(error); // upserts rewrite idempotently; the whole batch is retried
        }
        if refused.is_empty() {
            return Ok(());
        }
        metrics::counter!("weir_mysql_sink_records_refused_total", "connector" => self.connector.clone())
            .increment(refused.len() as u64);
        let message = format!("mysql sink {:?}: {} record(s) of the batch refused", self.connector, refused.len());
        Err(SinkError::poison_each(message, refused.into_iter().collect()))
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
