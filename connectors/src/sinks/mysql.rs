//! `type: mysql`: records into a MySQL or MariaDB table (feature `mysql`, mysql_async).
//!
//! **Modes.** `insert` (plain `INSERT`; at-least-once — a retried batch may insert a row
//! twice unless the table has a unique key), `upsert` (`INSERT … ON DUPLICATE KEY UPDATE` on
//! `key_columns`; a retry rewrites the same rows, so the table holds each record once) and
//! `cdc` (Debezium envelopes `{before, after, op}`, optionally under `payload`: `c`/`r`/`u`
//! upsert `after`, `d` deletes `before`'s key, an update that changes the key deletes the old
//! row first; tombstones — empty values — are skipped).
//!
//! **Batches.** A batch becomes multi-row statements (consecutive records of one shape, at
//! most `STATEMENT_ROWS_MAX` rows and about `STATEMENT_BYTES_MAX` bytes each) executed in
//! order inside one transaction per partition; with `concurrency` > 1 the batch is split by a
//! hash of the key columns, so one key's records stay in order on one connection. `write`
//! commits; `flush` has nothing left to do.
//!
//! **Bad records.** A record that is not a JSON object, lacks a key column, names a field
//! that is not a column, or that the server refuses as data (type, range, null, constraint
//! errors) is poison: the transaction is rolled back, the partition's records are written
//! again one statement each inside a new transaction, and the ones the server refuses are
//! reported (they go to the dead-letter topic) while the rest commit. Connection loss,
//! deadlocks and lock timeouts are transient (the batch is retried); anything else from the
//! server is reported as transient too, so an outage such as a dropped table stops the task
//! after its retries instead of dead-lettering the topic.
//!
//! **JSON → column types** (auto-create and binding): string → `TEXT` (`VARCHAR(255)` for key
//! columns), integer → `BIGINT` (`BIGINT UNSIGNED` above `i64`), other number → `DOUBLE`,
//! boolean → `BOOLEAN` (bound as 0/1), object or array → `JSON` (bound as its JSON text), null
//! → `TEXT NULL` (bound as NULL). Values are bound as statement parameters, never spliced
//! into SQL; identifiers are backquoted and may not contain a backquote.

mod config;
mod sink;
mod statement;

pub use config::{MySqlMode, MySqlSinkConfig};
pub use sink::{MySqlSink, MySqlSinkError};
