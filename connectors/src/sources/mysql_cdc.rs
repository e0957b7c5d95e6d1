//! `type: mysql_cdc`: every change of chosen MySQL/MariaDB tables as Debezium-shaped
//! envelopes in topics (feature `mysql-cdc`, mysql_async's binlog client).
//!
//! **Start.** The source connects, checks `log_bin`, `binlog_format=ROW` and
//! `binlog_row_image=FULL` and refuses with what to change. Without a committed position
//! (`snapshot: initial`, or `when_needed` also when the committed binlog file was purged) it
//! snapshots: one connection opens `START TRANSACTION WITH CONSISTENT SNAPSHOT` and reads the
//! binlog position that snapshot corresponds to (MariaDB: `binlog_snapshot_file/position`,
//! no lock at all; MySQL: a `FLUSH TABLES WITH READ LOCK` held only around `SHOW MASTER
//! STATUS`), then reads every captured table in primary-key chunks (`snapshot_chunk_rows`)
//! as `op: r` records, and a heartbeat record carries the snapshot's binlog position. A
//! reader task runs the chunk queries and keeps up to two chunks read ahead while the
//! source turns the current one into records. A crash mid-snapshot, or a failed chunk query,
//! restarts the snapshot (its records are idempotent upserts) at a new consistent point. A
//! row the first attempt emitted and that was deleted before the second gets no delete event
//! (the second never sees it), so a replica may keep it; Debezium has the same gap.
//!
//! **Streaming.** The source registers as a replica (`server_id`) and reads row events from
//! that position: inserts (`c`), updates (`u`, with `before`), deletes (`d`), with column
//! names and types from `information_schema` (reloaded after DDL, which also produces an
//! event on `schema_topic`). Values are converted as `value.rs` documents.
//!
//! **Positions** sit on transaction boundaries: a row's position is `{file, pos, skip_rows,
//! gtid}` where `pos` is its transaction's start and `skip_rows` how many of that
//! transaction's rows are at or before it; resuming re-reads the transaction and skips them,
//! so nothing is skipped and nothing half-applied is committed past. An idle server (or one
//! busy only with tables not captured) still advances the position through heartbeat records
//! (topic `heartbeat_topic`) every `heartbeat_interval_ms`. A committed file the server no
//! longer has is an error naming it and the options.
//!
//! **Envelope:** `{before, after, op, source: {version, connector, name, ts_ms, snapshot, db,
//! table, server_id, gtid, file, pos, row}, ts_ms}` with a row's fields in column order,
//! written straight to JSON bytes (`envelope.rs`: no JSON tree per row); message key = the
//! primary key (its value for one column, a JSON object of the key columns in key order for
//! several), tag = table name, topic from the `topic` template. MySQL 8 differs from MariaDB
//! in GTID form (`uuid:n` vs `domain-server-seq`) and in JSON columns (binary JSONB, decoded
//! to JSON) — both are handled.
//!
//! **Recovery.** A failed poll (connection lost, an undecodable event) closes the stream;
//! the next poll reopens it at the position of the last record handed out, so rows read but
//! not handed out are read again rather than skipped.
//!
//! **Refused or not handled:** `binlog_transaction_compression=ON` (MySQL 8.0.20+) is refused
//! at start. XA transactions are not treated specially (rows are emitted at `XA PREPARE`).
//!
//! **Known limits:**
//! - mysql_common 0.37 decodes a *negative* `TIME(1)` or `TIME(2)` binlog value wrongly (an
//!   unsigned underflow in its fraction handling; debug builds panic). Other TIME
//!   precisions, and every snapshot value, are exact.
//! - Text columns are decoded as UTF-8 (utf8/utf8mb4 tables); other character sets come out
//!   as base64 where they are not valid UTF-8.
//! - A zero TIMESTAMP reads as `1970-01-01T00:00:00` from the binlog.
//! - Column names come from the current schema by position (ARCHITECTURE.md).

mod config;
mod envelope;
mod schema;
mod source;
pub mod value;

pub use config::{MySqlCdcConfig, SnapshotMode};
pub use source::{MySqlCdcError, MySqlCdcSource, rotate_file_name};
