//! Bounded queries over topics for inspection (`weir sql`): every topic the query names
//! (quoted when it is not an SQL identifier: `FROM "access-logs"`) becomes a table of the
//! JSON messages read from it, with a schema inferred from them; DataFusion runs the query.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use weir_broker::{Messaging, PullRequest};

use crate::decode::decode_json;
use crate::error::{Result, StreamsError};

/// Most messages one inspection query reads per topic.
pub const INSPECT_MESSAGES_MAX: usize = 1_000_000;

/// Where reading starts in every queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    /// The last `messages_max / queues` messages of each queue.
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// What the query returned, and what reading skipped.
#[derive(Debug)]
pub struct Inspection {
    pub batches: Vec<RecordBatch>,
    /// Messages read per topic.
    pub messages_read: Vec<(String, usize)>,
    /// Messages that were not JSON objects (left out of the tables).
    pub messages_skipped: usize,
}

/// Reads up to `messages_max` messages from each topic the query names, then runs it
/// (`explain`: shows DataFusion's plan instead).
pub async fn query_topics(
    broker: &dyn Messaging,
    sql: &str,
    from: StartFrom,
    messages_max: usize,
    explain: bool,
) -> Result<Inspection> {
    let messages_max = messages_max.clamp(1, INSPECT_MESSAGES_MAX);
    let context = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for udf in crate::functions::builtin() {
        context.register_udf(udf);
    }
    let state = context.state();
    let statement = state.sql_to_statement(sql, &state.config().options().sql_parser.dialect)?;
    let references = state.resolve_table_references(&statement)?;
    let mut messages_read = Vec::new();
    let mut messages_skipped = 0;
    for reference in references {
        let topic = reference.table().to_string();
        let Some(config) = broker.topic(&topic).await? else {
            return Err(StreamsError::Plan(format!("no topic named {topic:?} (quote names with `-`: \"{topic}\")")));
        };
        let per_queue = messages_max.div_ceil(config.queue_count.max(1) as usize);
        let mut bodies = Vec::new();
        for queue_id in 0..config.queue_count {
            let range = broker.queue_range(&topic, queue_id).await?;
            let mut offset = match from {
                StartFrom::Earliest => range.min_offset,
                StartFrom::Latest => range.max_offset.saturating_sub(per_queue as u64).max(range.min_offset),
                StartFrom::Timestamp(ms) => broker.offset_for_timestamp(&topic, queue_id, ms).await?,
            };
            let mut taken = 0;
            while taken < per_queue && offset < range.max_offset {
                let mut request = PullRequest::new("weir-sql", &topic, queue_id, offset);
                request.messages_max = (per_queue - taken).min(weir_broker::PULL_MESSAGES_MAX);
                let pulled = broker.pull(request).await?;
                if pulled.messages.is_empty() {
                    break;
                }
                taken += pulled.messages.len();
                bodies.extend(pulled.messages.into_iter().map(|m| m.body));
                offset = pulled.next_offset;
            }
        }
        let objects: Vec<&[u8]> =
            bodies.iter().map(|b| &b[..]).filter(|b| b.trim_ascii_start().starts_with(b"{")).collect();
        messages_skipped += bodies.len() - objects.len();
        let schema = infer_schema(&objects)?;
        let decoded = decode_json(&schema, &objects)?;
        messages_skipped += decoded.bad.len();
        let table = MemTable::try_new(schema, vec![vec![decoded.batch]])?;
        context.register_table(reference.clone(), Arc::new(table))?;
        messages_read.push((topic, bodies.len()));
    }
    let text = if explain { format!("EXPLAIN {sql}") } else { sql.to_string() };
    let batches = context.sql(&text).await?.collect().await?;
    Ok(Inspection { batches, messages_read, messages_skipped })
}

/// The schema of JSON objects (all of them read; fields in first-seen order).
fn infer_schema(bodies: &[&[u8]]) -> Result<Arc<Schema>> {
    if bodies.is_empty() {
        return Ok(Arc::new(Schema::empty()));
    }
    let mut text = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum());
    for body in bodies {
        text.extend_from_slice(body);
        text.push(b'\n');
    }
    // A body that does not parse fails inference; fall back to the ones that do.
    match datafusion::arrow::json::reader::infer_json_schema(Cursor::new(&text), None) {
        Ok((schema, _)) => Ok(Arc::new(schema)),
        Err(_) => {
            let good: Vec<serde_json::Value> =
                bodies.iter().filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok()).collect();
            let schema = datafusion::arrow::json::reader::infer_json_schema_from_iterator(good.into_iter().map(Ok))?;
            Ok(Arc::new(schema))
        }
    }
}
