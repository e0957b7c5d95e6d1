//! `type: elasticsearch`: records into Elasticsearch indices through `_bulk` (feature
//! `elasticsearch`, the official `elasticsearch` crate).
//!
//! **Documents.** Each record is one `index` (or `create`) action with the record's JSON
//! object as the source; a tombstone (empty value) is a `delete`. The index name comes from a
//! template with fields (`{{service}}`) and strftime date patterns (`%Y.%m.%d`) taken from
//! `timestamp_field` (epoch milliseconds or RFC 3339), else from the record's timestamp, in
//! UTC. The `_id` is deterministic — the `id` template, else the record's key, else
//! `<topic>-<queue_id>-<queue_offset>` — so a retried record overwrites itself instead of
//! indexing a duplicate (with `create`, a retry's 409 counts as already written; a delete's
//! 404 counts as already gone).
//!
//! **Concurrency.** Actions go to `concurrency` lanes by a hash of `(_index, _id)`; lanes
//! send their `_bulk` requests in parallel, one lane's in order, so one document's actions
//! are applied in the batch's order.
//!
//! **Errors.** `_bulk` answers per item. Items refused with 429 or 5xx are sent again, alone,
//! with exponential backoff up to `item_retries_max` times; after that the batch fails as
//! transient (the task retries it whole, idempotently). Items refused with any other 4xx
//! (mapping and parsing errors) are poison and go to the dead-letter topic carrying
//! Elasticsearch's error type and reason. A whole request answered 429/5xx, a timeout or a
//! lost connection is transient. Metrics count exactly: indexed, refused and retried items.

mod config;
mod sink;

pub use config::{ElasticsearchAction, ElasticsearchSinkConfig};
pub use sink::{ElasticsearchSink, ElasticsearchSinkError};
