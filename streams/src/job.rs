//! A streams job: its source tables, its `INSERT` queries planned once by DataFusion, and
//! the processing of micro-batches of messages into result messages.
//!
//! Each table and window relation is a slot table (`slot`) refilled before every execution,
//! so a plan made once runs over each micro-batch. A query without an aggregate is
//! stateless: it runs over each micro-batch. A query whose `GROUP BY` aggregates a window relation is split at its
//! `Aggregate`: the part below runs over each micro-batch (filters, projections), the
//! aggregate itself is the pane operator of `window` (DataFusion's accumulators, state and
//! merge), and the part above (projection, `HAVING`, ordering) runs over each closed
//! window's aggregate rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::row::SortField;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::provider_as_source;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::prelude::SessionConfig;
use weir_broker::Message;

use crate::decode::decode_json;
use crate::error::{Result, StreamsError};
use crate::join::{JoinSide, JoinSnapshot, WindowJoin};
use crate::session::SessionAggregator;
use crate::slot::{CachedPlan, Slot, SlotTable};
use crate::sql::{InsertStatement, JobSql, SourceTable, WindowKind, WindowSpec};
use crate::window::{AggregateSpec, AggregatorSnapshot, WindowAggregator, WindowResult};

/// Earliest and latest event time a row may carry (years 0001 and 9999): window arithmetic on
/// them never overflows.
pub const EVENT_TIME_MS_MIN: i64 = -62_135_596_800_000;
pub const EVENT_TIME_MS_MAX: i64 = 253_402_300_799_999;

/// Property naming why a row went to the dead-letter or late topic.
pub const PROPERTY_REASON: &str = "STREAMS_REASON";
/// Property holding the job name on dead-lettered and late rows.
pub const PROPERTY_JOB: &str = "STREAMS_JOB";

/// How a window aggregate's pane batches are laid out in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// Key columns first.
    pub keys: usize,
    /// Then this many state columns per aggregate.
    pub states: Vec<usize>,
}

/// A job's state at a checkpoint (see `Job::snapshot`).
#[derive(Clone, Debug, Default)]
pub struct JobSnapshot {
    /// Per table (in declaration order): the largest event time seen per queue.
    pub max_event_ms: Vec<BTreeMap<u32, i64>>,
    /// Per query: its window operator's state (`None` for a stateless query).
    pub aggregators: Vec<Option<crate::window::AggregatorSnapshot>>,
    /// Per table: the highest watermark reached (watermarks never go back after a restart).
    pub watermark_floor_ms: Vec<Option<i64>>,
    /// Per query: its window join's rows (`None` for other queries).
    pub joins: Vec<Option<JoinSnapshot>>,
}

/// Messages one micro-batch produced.
#[derive(Debug, Default)]
pub struct JobOutput {
    /// Query results, for the `INSERT INTO` topics.
    pub results: Vec<Message>,
    /// Result rows of queries into blackhole tables: computed, counted, not kept.
    pub discarded_rows: u64,
    /// Rows that did not decode, for `%DLQ%<job>`, with the reason.
    pub dead_letters: Vec<Message>,
    /// Rows whose windows had closed, for `%LATE%<job>`.
    pub late: Vec<Message>,
}

/// The rows of a lookup table: the latest per key, by the key's text (ordered, so joins
/// over it give their rows in a stable order).
#[derive(Default)]
struct Lookup {
    rows: BTreeMap<String, RecordBatch>,
    /// Rows changed since the slot was last filled.
    dirty: bool,
}

/// Most keys a lookup table holds (memory bound).
pub const LOOKUP_ROWS_MAX: usize = 1_000_000;

/// Which of a table's columns are decoded, and their schema.
struct UsedColumns {
    used: Vec<bool>,
    schema: SchemaRef,
}

struct TableRuntime {
    spec: SourceTable,
    slot: Slot,
    /// The columns some query (or the watermark, or the lookup key) uses: only these are
    /// decoded; the others are nulls in the slot.
    used_columns: Option<UsedColumns>,
    /// For a lookup table (`lookup_key`), its latest row per key.
    lookup: Option<Lookup>,
    /// Largest event time seen per queue.
    max_event_ms: BTreeMap<u32, i64>,
    /// Queues the runner declared: until one is idle or has delivered a row, it holds the
    /// watermark back (its first rows may be old).
    declared_queues: u32,
    /// Queues the runner reported idle (caught up and quiet for its idle timeout).
    idle: std::collections::BTreeSet<u32>,
    /// The highest watermark reached so far.
    watermark_floor_ms: Option<i64>,
}

impl TableRuntime {
    /// The table's watermark: the smallest largest-event-time over its active queues, minus
    /// the delay. A declared queue that is neither idle nor seen holds it back; when every
    /// queue is idle it is the largest event time seen (nothing is pending anywhere).
    fn watermark_ms(&self) -> Option<i64> {
        // Watermarks never go back: not when a queue turns active again, not after a restart
        // (the floor is checkpointed).
        match (self.computed_watermark_ms(), self.watermark_floor_ms) {
            (Some(computed), Some(floor)) => Some(computed.max(floor)),
            (computed, floor) => computed.or(floor),
        }
    }

    /// Every declared queue is idle: the table holds nothing back.
    fn is_idle(&self) -> bool {
        self.declared_queues > 0 && (0..self.declared_queues).all(|queue| self.idle.contains(&queue))
    }

    fn computed_watermark_ms(&self) -> Option<i64> {
        let active = |queue: &u32| !self.idle.contains(queue);
        if (0..self.declared_queues).filter(active).any(|queue| !self.max_event_ms.contains_key(&queue)) {
            return None;
        }
        let active_min = self.max_event_ms.iter().filter(|(queue, _)| active(queue)).map(|(_, max)| *max).min();
        let max = active_min.or_else(|| self.max_event_ms.values().max().copied())?;
        Some(max.saturating_sub(self.spec.watermark_delay_ms))
    }
}

struct Windowed {
    spec: WindowSpec,
    slot: Slot,
    schema: SchemaRef,
}

struct QueryView<'a> {
    plan: &'a CachedPlan,
    windowed: Option<WindowedView<'a>>,
}

struct WindowedView<'a> {
    below: &'a CachedPlan,
    pane_expr: &'a Arc<dyn PhysicalExpr>,
    key_exprs: &'a [Arc<dyn PhysicalExpr>],
    argument_exprs: &'a [AggregateArguments],
}

/// Runs a query over what its slots hold: a stateless query's rows, or a windowed one's
/// aggregate inputs (nothing is changed, so a failure can be retried row by row).
async fn evaluate(state: &SessionState, query: QueryView<'_>) -> Result<Evaluated> {
    let Some(aggregate) = query.windowed else {
        return Ok(Evaluated::Rows(query.plan.execute(state).await?));
    };
    let mut updates = Vec::new();
    for below in aggregate.below.execute(state).await? {
        if below.num_rows() == 0 {
            continue;
        }
        let panes = cast(&aggregate.pane_expr.evaluate(&below)?.into_array(below.num_rows())?, &timestamp_ms())?;
        let panes = panes.as_any().downcast_ref::<TimestampMillisecondArray>().expect("cast to timestamp ms").clone();
        let keys = evaluate_all(aggregate.key_exprs, &below)?;
        let mut arguments = Vec::with_capacity(aggregate.argument_exprs.len());
        for (exprs, filter) in aggregate.argument_exprs {
            let values = evaluate_all(exprs, &below)?;
            let filter = match filter {
                Some(filter) => {
                    let array = filter.evaluate(&below)?.into_array(below.num_rows())?;
                    Some(datafusion::arrow::array::as_boolean_array(&array).clone())
                }
                None => None,
            };
            arguments.push((values, filter));
        }
        updates.push((panes, keys, arguments));
    }
    Ok(Evaluated::Updates(updates))
}

/// What a query made of one input: result rows, or (pane starts, keys, aggregate arguments)
/// for its window operator.
enum Evaluated {
    Rows(Vec<RecordBatch>),
    Updates(Vec<OperatorInput>),
}

/// Pane starts (or row times), group keys, and each aggregate's arguments and filter.
type OperatorInput = (TimestampMillisecondArray, Vec<ArrayRef>, Vec<(Vec<ArrayRef>, Option<BooleanArray>)>);

/// The window operator of a query: panes (tumbling, hopping) or sessions.
enum Operator {
    Panes(WindowAggregator),
    Sessions(SessionAggregator),
}

impl Operator {
    /// Whether a row at `time_ms` is late (its window already emitted).
    fn is_late(&self, time_ms: i64, pane_start_ms: i64, watermark_ms: Option<i64>) -> bool {
        match self {
            Operator::Panes(panes) => panes.is_frozen(pane_start_ms),
            Operator::Sessions(sessions) => sessions.is_late(time_ms, watermark_ms),
        }
    }

    fn update(
        &mut self,
        starts: &TimestampMillisecondArray,
        keys: &[ArrayRef],
        arguments: &[(Vec<ArrayRef>, Option<BooleanArray>)],
    ) -> Result<()> {
        match self {
            Operator::Panes(panes) => panes.update(starts, keys, arguments),
            Operator::Sessions(sessions) => sessions.update(starts, keys, arguments),
        }
    }

    fn advance(&mut self, watermark_ms: i64) -> Result<Vec<WindowResult>> {
        match self {
            Operator::Panes(panes) => panes.advance(watermark_ms),
            Operator::Sessions(sessions) => sessions.advance(watermark_ms),
        }
    }

    fn snapshot(&mut self) -> Result<AggregatorSnapshot> {
        match self {
            Operator::Panes(panes) => panes.snapshot(),
            Operator::Sessions(sessions) => sessions.snapshot(),
        }
    }

    fn restore(&mut self, snapshot: AggregatorSnapshot) -> Result<()> {
        match self {
            Operator::Panes(panes) => panes.restore(snapshot),
            Operator::Sessions(sessions) => sessions.restore(snapshot),
        }
    }
}

/// An aggregate's argument expressions and its optional `FILTER (WHERE …)`.
type AggregateArguments = (Vec<Arc<dyn PhysicalExpr>>, Option<Arc<dyn PhysicalExpr>>);

struct WindowedAggregate {
    /// The plan below the aggregate (over the window relation).
    below: CachedPlan,
    /// The plan above it, reading the aggregate's rows from `aggregate_slot`.
    above: CachedPlan,
    aggregate_slot: Slot,
    aggregate_schema: SchemaRef,
    /// Position in the GROUP BY of `window_start` and `window_end`; the others are keys.
    window_start_position: usize,
    window_end_position: usize,
    key_positions: Vec<usize>,
    pane_expr: Arc<dyn PhysicalExpr>,
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    argument_exprs: Vec<AggregateArguments>,
    aggregator: Operator,
    /// State columns per aggregate (checkpoint layout).
    specs_state_widths: Vec<usize>,
    key_names: Vec<String>,
}

/// Where a query's results go.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ResultSink {
    /// JSON messages in this topic.
    Topic(String),
    /// Counted and dropped (a table declared `WITH (connector = 'blackhole')`, named here).
    Blackhole(String),
}

struct Query {
    index: usize,
    sink: ResultSink,
    table: usize,
    window: Option<Windowed>,
    /// `None`: stateless; the whole plan runs per micro-batch.
    aggregate: Option<WindowedAggregate>,
    /// A window join: the whole plan runs once per closed window.
    join: Option<WindowJoin>,
    plan: Arc<CachedPlan>,
}

impl Query {
    /// Whether rows of table `table` feed this query.
    fn reads(&self, table: usize) -> bool {
        self.table == table || self.join.as_ref().is_some_and(|join| join.sides.iter().any(|s| s.table == table))
    }
}

/// A planned job.
pub struct Job {
    name: String,
    state: SessionState,
    tables: Vec<TableRuntime>,
    queries: Vec<Query>,
}

impl Job {
    /// Plans every statement; errors say which and why.
    pub async fn plan(name: &str, sql: &JobSql) -> Result<Job> {
        Job::plan_with(name, sql, &[]).await
    }

    /// `plan`, with the caller's scalar UDFs available to the queries (besides DataFusion's
    /// functions and `functions::builtin`).
    pub async fn plan_with(name: &str, sql: &JobSql, udfs: &[datafusion::logical_expr::ScalarUDF]) -> Result<Job> {
        // Analysis only (type coercion), no rewrites: the window split needs the query's own
        // Aggregate, not one an optimizer rule restructured.
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(1))
            .with_optimizer_rules(vec![])
            .build();
        let context = datafusion::prelude::SessionContext::new_with_state(state);
        for udf in crate::functions::builtin().into_iter().chain(udfs.iter().cloned()) {
            context.register_udf(udf);
        }
        let mut tables = Vec::new();
        for (index, table) in sql.tables.iter().enumerate() {
            if sql.tables[..index].iter().any(|earlier| earlier.topic == table.topic) {
                return Err(StreamsError::Plan(format!(
                    "tables {} and another both read topic {}; one table per topic (filter in the query)",
                    table.name, table.topic
                )));
            }
            let slot = register_slot(&context, &table.name, table.schema.clone())?;
            tables.push(TableRuntime {
                spec: table.clone(),
                slot,
                used_columns: None,
                lookup: table.lookup_key.as_ref().map(|_| Lookup::default()),
                max_event_ms: BTreeMap::new(),
                declared_queues: 0,
                idle: Default::default(),
                watermark_floor_ms: None,
            });
        }
        if sql.inserts.is_empty() {
            return Err(StreamsError::Plan("the job has no INSERT INTO statement".into()));
        }
        let mut queries = Vec::new();
        for (index, insert) in sql.inserts.iter().enumerate() {
            let sink = if sql.is_blackhole(&insert.topic) {
                ResultSink::Blackhole(insert.topic.clone())
            } else {
                ResultSink::Topic(insert.topic.clone())
            };
            let query = plan_insert(&context, &tables, index, insert, sink).await.map_err(|error| {
                let reason = match error {
                    StreamsError::Plan(reason) => reason,
                    other => other.to_string(),
                };
                StreamsError::Plan(format!("INSERT INTO {}: {reason}", insert.topic))
            })?;
            queries.push(query);
        }
        // Decode only the columns something refers to (by name: over-inclusion is harmless).
        let mut names = std::collections::HashSet::new();
        for query in &queries {
            // Subquery plans too (nothing rewrote them into joins), and outer references.
            query.plan.logical().apply_with_subqueries(|node| {
                node.apply_expressions(|expr| {
                    expr.apply(|e| {
                        match e {
                            Expr::Column(column) => {
                                names.insert(column.name.clone());
                            }
                            Expr::OuterReferenceColumn(_, column) => {
                                names.insert(column.name.clone());
                            }
                            _ => {}
                        }
                        Ok(TreeNodeRecursion::Continue)
                    })
                })?;
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        for table in &mut tables {
            let keep = [table.spec.event_time.as_ref(), table.spec.lookup_key.as_ref()];
            let used: Vec<bool> = table
                .spec
                .schema
                .fields()
                .iter()
                .map(|f| names.contains(f.name()) || keep.iter().flatten().any(|k| *k == f.name()))
                .collect();
            if used.iter().any(|u| !u) {
                let fields = table.spec.schema.fields().iter().zip(&used).filter(|(_, used)| **used);
                let schema = Arc::new(Schema::new(fields.map(|(f, _)| f.as_ref().clone()).collect::<Vec<_>>()));
                table.used_columns = Some(UsedColumns { used, schema });
            }
        }
        // Execution plans the pieces with every optimizer rule (simplification included:
        // `coalesce` and friends rely on it); the split above needed the query unrewritten.
        let execution = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(1))
            .build();
        Ok(Job { name: name.to_string(), state: execution, tables, queries })
    }

    /// Topics the job reads, with their tag expressions.
    /// Lookup tables' topics come first, so a round of reads updates them before the rows
    /// they enrich.
    pub fn source_topics(&self) -> Vec<(String, String)> {
        let mut tables: Vec<&TableRuntime> = self.tables.iter().collect();
        tables.sort_by_key(|t| t.lookup.is_none());
        tables.iter().map(|t| (t.spec.topic.clone(), t.spec.tag_expression.clone())).collect()
    }

    /// Whether `topic` feeds a lookup table: it is read from its start after every restart
    /// (its latest rows are not in checkpoints).
    pub fn is_lookup_topic(&self, topic: &str) -> bool {
        self.tables.iter().any(|t| t.spec.topic == topic && t.lookup.is_some())
    }

    /// Topics the job writes results to (blackhole tables are not topics).
    pub fn sink_topics(&self) -> Vec<String> {
        let topics = self.queries.iter().filter_map(|q| match &q.sink {
            ResultSink::Topic(topic) => Some(topic.clone()),
            ResultSink::Blackhole(_) => None,
        });
        topics.collect()
    }

    /// Every `INSERT INTO` target, a blackhole table marked as such, for display.
    pub fn sink_names(&self) -> Vec<String> {
        let name = |q: &Query| match &q.sink {
            ResultSink::Topic(topic) => topic.clone(),
            ResultSink::Blackhole(table) => format!("{table} (blackhole)"),
        };
        self.queries.iter().map(name).collect()
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("%DLQ%{}", self.name)
    }

    pub fn late_topic(&self) -> String {
        format!("%LATE%{}", self.name)
    }

    /// The watermark of the table over `topic`, if any row came.
    pub fn watermark_ms(&self, topic: &str) -> Option<i64> {
        self.tables.iter().find(|t| t.spec.topic == topic).and_then(TableRuntime::watermark_ms)
    }

    /// Says how many queues `topic` has: each holds the watermark back until it delivers a
    /// row or is reported idle. (Without it, only queues seen so far count.)
    pub fn declare_queues(&mut self, topic: &str, queues: u32) {
        for table in self.tables.iter_mut().filter(|t| t.spec.topic == topic) {
            table.declared_queues = queues;
        }
    }

    /// Marks a queue idle (caught up and quiet) or active again; an idle queue does not hold
    /// the watermark back.
    pub fn set_queue_idle(&mut self, topic: &str, queue_id: u32, idle: bool) {
        for table in self.tables.iter_mut().filter(|t| t.spec.topic == topic) {
            if idle {
                table.idle.insert(queue_id);
            } else {
                table.idle.remove(&queue_id);
            }
        }
    }

    /// Emits the windows the current watermark of `topic`'s table closed (after queues went
    /// idle, with no new rows).
    pub async fn advance(&mut self, topic: &str) -> Result<JobOutput> {
        let mut output = JobOutput::default();
        if let Some(table_index) = self.tables.iter().position(|t| t.spec.topic == topic) {
            self.fire(table_index, &mut output).await?;
        }
        Ok(output)
    }

    /// Runs one micro-batch of message bodies read from `queue_id` of `topic`: stateless
    /// queries give their rows now, windowed ones update their panes and give the windows
    /// the watermark closed.
    pub async fn process(&mut self, topic: &str, queue_id: u32, bodies: &[&[u8]]) -> Result<JobOutput> {
        let mut output = JobOutput::default();
        let Some(table_index) = self.tables.iter().position(|t| t.spec.topic == topic) else {
            return Err(StreamsError::Plan(format!("the job reads no table over topic {topic}")));
        };
        let decoded = match &self.tables[table_index].used_columns {
            None => decode_json(&self.tables[table_index].spec.schema, bodies)?,
            Some(used) => decode_columns(&self.tables[table_index].spec.schema, used, bodies)?,
        };
        for bad in &decoded.bad {
            output.dead_letters.push(self.side_message(self.dead_letter_topic(), bodies[bad.index], &bad.reason));
        }
        if self.tables[table_index].lookup.is_some() {
            self.update_lookup(table_index, &decoded.batch, &decoded.kept, bodies, &mut output)?;
            return Ok(output);
        }
        let mut batch = decoded.batch;
        let mut kept = decoded.kept;
        // Rows need an event time, within years 0001..=9999, to be windowed.
        let event_times = match &self.tables[table_index].spec.event_time {
            Some(column) => {
                let times = event_time_column(&batch, column)?;
                let usable =
                    |i: usize| times.is_valid(i) && (EVENT_TIME_MS_MIN..=EVENT_TIME_MS_MAX).contains(&times.value(i));
                if (0..times.len()).any(|i| !usable(i)) {
                    let valid = BooleanArray::from((0..times.len()).map(usable).collect::<Vec<_>>());
                    for (row, index) in kept.iter().enumerate() {
                        if !valid.value(row) {
                            let reason = format!("the event time column {column} is null or outside years 1..=9999");
                            output.dead_letters.push(self.side_message(
                                self.dead_letter_topic(),
                                bodies[*index],
                                &reason,
                            ));
                        }
                    }
                    batch = filter_record_batch(&batch, &valid)?;
                    kept =
                        kept.into_iter().zip(valid.iter()).filter(|(_, v)| v == &Some(true)).map(|(k, _)| k).collect();
                }
                Some(event_time_column(&batch, column)?)
            }
            None => None,
        };
        for query_index in 0..self.queries.len() {
            if !self.queries[query_index].reads(table_index) {
                continue;
            }
            if self.queries[query_index].join.is_some() {
                self.buffer_join(query_index, table_index, &batch, event_times.as_ref(), &kept, bodies, &mut output)?;
                continue;
            }
            self.run_query(query_index, &batch, event_times.as_ref(), &kept, bodies, &mut output).await?;
        }
        // The watermark moves only after the rows that moved it were taken.
        if let Some(times) = &event_times
            && let Some(max) = datafusion::arrow::compute::max(times)
        {
            let entry = self.tables[table_index].max_event_ms.entry(queue_id).or_insert(max);
            *entry = (*entry).max(max);
        }
        self.fire(table_index, &mut output).await?;
        Ok(output)
    }

    async fn run_query(
        &mut self,
        query_index: usize,
        batch: &RecordBatch,
        event_times: Option<&TimestampMillisecondArray>,
        kept: &[usize],
        bodies: &[&[u8]],
        output: &mut JobOutput,
    ) -> Result<()> {
        self.refresh_lookups().await?;
        let table_slot = self.tables[self.queries[query_index].table].slot.clone();
        table_slot.fill(vec![batch.clone()]);
        let late_topic = self.late_topic();
        let query = &self.queries[query_index];
        // The query's input: the table's rows, or the window relation's (late rows left out),
        // and the body each row came from.
        let (slot, input, input_bodies) = match &query.window {
            None => (table_slot, batch.clone(), kept.to_vec()),
            Some(window) => {
                let times = event_times.expect("a window's table has an event time");
                // The window relation's window_start / window_end of a row: its pane, or for a
                // session window the row's own session [ts, ts + gap) (the operator merges them).
                let slide = window.spec.slide_ms;
                let session = window.spec.kind == WindowKind::Session;
                let watermark = self.tables[query.table].watermark_ms();
                let (pane_starts, late): (Vec<i64>, Vec<bool>) = times
                    .values()
                    .iter()
                    .map(|time| {
                        let pane = if session { *time } else { time.div_euclid(slide) * slide };
                        let late =
                            query.aggregate.as_ref().is_some_and(|a| a.aggregator.is_late(*time, pane, watermark));
                        (pane, late)
                    })
                    .unzip();
                let keep = BooleanArray::from(late.iter().map(|late| !late).collect::<Vec<_>>());
                let input_bodies = kept.iter().zip(&late).filter(|(_, late)| !**late).map(|(k, _)| *k).collect();
                output.late.extend(late_messages(&self.name, &late_topic, times, &late, kept, bodies));
                let starts = TimestampMillisecondArray::from(pane_starts);
                let ends =
                    TimestampMillisecondArray::from(starts.values().iter().map(|s| s + slide).collect::<Vec<_>>());
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(starts));
                columns.push(Arc::new(ends));
                let windowed = RecordBatch::try_new(window.schema.clone(), columns)?;
                (window.slot.clone(), filter_record_batch(&windowed, &keep)?, input_bodies)
            }
        };
        slot.fill(vec![input.clone()]);
        let evaluated = match evaluate(&self.state, self.view(query_index)).await {
            Ok(evaluated) => vec![evaluated],
            Err(error @ (StreamsError::DataFusion(_) | StreamsError::Arrow(_))) if input.num_rows() > 0 => {
                // A row the query cannot evaluate (a division by zero, a failed cast): find it
                // one row at a time, dead-letter it with the error, keep the others.
                let mut evaluated = Vec::with_capacity(input.num_rows());
                for row in 0..input.num_rows() {
                    let outcome = if input.num_rows() == 1 {
                        Err(error.to_string())
                    } else {
                        slot.fill(vec![input.slice(row, 1)]);
                        match evaluate(&self.state, self.view(query_index)).await {
                            Ok(one) => Ok(one),
                            Err(error @ (StreamsError::DataFusion(_) | StreamsError::Arrow(_))) => {
                                Err(error.to_string())
                            }
                            Err(error) => return Err(error),
                        }
                    };
                    match outcome {
                        Ok(one) => evaluated.push(one),
                        Err(error) => {
                            let reason = format!("the query failed on this row: {error}");
                            let message =
                                self.side_message(self.dead_letter_topic(), bodies[input_bodies[row]], &reason);
                            output.dead_letters.push(message);
                        }
                    }
                }
                evaluated
            }
            Err(error) => return Err(error),
        };
        let (job, query) = (self.name.clone(), &mut self.queries[query_index]);
        for evaluated in evaluated {
            match (evaluated, &mut query.aggregate) {
                (Evaluated::Rows(batches), _) => emit(
                    &job,
                    query.index,
                    &query.sink,
                    &batches,
                    ResultIdentity::Row,
                    None,
                    &mut Occurrences::new(),
                    output,
                )?,
                (Evaluated::Updates(updates), Some(aggregate)) => {
                    for (panes, keys, arguments) in updates {
                        aggregate.aggregator.update(&panes, &keys, &arguments)?;
                    }
                }
                (Evaluated::Updates(_), None) => unreachable!("updates come from an aggregate"),
            }
        }
        Ok(())
    }

    /// What `evaluate` needs of a query: its plans and expressions, not its (unshareable)
    /// window state, so the evaluation future stays `Send`.
    fn view(&self, query_index: usize) -> QueryView<'_> {
        let query = &self.queries[query_index];
        QueryView {
            plan: &query.plan,
            windowed: query.aggregate.as_ref().map(|aggregate| WindowedView {
                below: &aggregate.below,
                pane_expr: &aggregate.pane_expr,
                key_exprs: &aggregate.key_exprs,
                argument_exprs: &aggregate.argument_exprs,
            }),
        }
    }

    /// Emits every window of `table`'s queries that its watermark closed.
    async fn fire(&mut self, table_index: usize, output: &mut JobOutput) -> Result<()> {
        self.fire_joins(table_index, output).await?;
        let Some(watermark) = self.tables[table_index].watermark_ms() else { return Ok(()) };
        self.tables[table_index].watermark_floor_ms = Some(watermark);
        let mut failed_windows = Vec::new();
        for query in self.queries.iter_mut().filter(|q| q.table == table_index) {
            let Some(aggregate) = &mut query.aggregate else { continue };
            // One count per query and firing: sessions of different keys may share bounds.
            let mut occurrences = Occurrences::new();
            for result in aggregate.aggregator.advance(watermark)? {
                let rows = result.key_columns.first().map_or(0, |c| c.len());
                let rows = if result.key_columns.is_empty() {
                    result.aggregate_columns.first().map_or(0, |c| c.len())
                } else {
                    rows
                };
                let mut columns: Vec<Option<ArrayRef>> = vec![None; aggregate.aggregate_schema.fields().len()];
                let constant =
                    |value: i64| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(vec![value; rows])) };
                columns[aggregate.window_start_position] = Some(constant(result.window_start_ms));
                columns[aggregate.window_end_position] = Some(constant(result.window_end_ms));
                for (position, column) in aggregate.key_positions.iter().zip(result.key_columns) {
                    columns[*position] = Some(column);
                }
                let groups = aggregate.key_positions.len() + 2;
                for (offset, column) in result.aggregate_columns.into_iter().enumerate() {
                    columns[groups + offset] = Some(column);
                }
                let columns = columns
                    .into_iter()
                    .zip(aggregate.aggregate_schema.fields())
                    .map(|(column, field)| Ok(cast(&column.expect("every column placed"), field.data_type())?))
                    .collect::<Result<Vec<_>>>()?;
                let batch = RecordBatch::try_new(aggregate.aggregate_schema.clone(), columns)?;
                aggregate.aggregate_slot.fill(vec![batch]);
                let window = (result.window_start_ms, result.window_end_ms);
                let emitted = match aggregate.above.execute(&self.state).await {
                    Ok(batches) => emit(
                        &self.name,
                        query.index,
                        &query.sink,
                        &batches,
                        ResultIdentity::GroupKey(&aggregate.key_names),
                        Some(window),
                        &mut occurrences,
                        output,
                    ),
                    Err(error) => Err(error),
                };
                match emitted {
                    Ok(()) => {}
                    // The window's values make the part above the aggregate fail (a division
                    // by zero, a failed cast): report the window and go on, or a restart
                    // would replay into the same failure forever.
                    Err(error @ (StreamsError::DataFusion(_) | StreamsError::Arrow(_))) => {
                        failed_windows.push((window, error.to_string()))
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        for ((start, end), error) in failed_windows {
            let window = serde_json::json!({ "window_start_ms": start, "window_end_ms": end });
            let reason = format!("the query failed on this window: {error}");
            output.dead_letters.push(self.side_message(
                self.dead_letter_topic(),
                window.to_string().as_bytes(),
                &reason,
            ));
        }
        Ok(())
    }

    /// Keeps a micro-batch's rows in the buffered relation(s) their table feeds; rows whose
    /// windows all ran are late.
    #[allow(clippy::too_many_arguments)]
    fn buffer_join(
        &mut self,
        query_index: usize,
        table_index: usize,
        batch: &RecordBatch,
        event_times: Option<&TimestampMillisecondArray>,
        kept: &[usize],
        bodies: &[&[u8]],
        output: &mut JobOutput,
    ) -> Result<()> {
        let times = event_times.expect("a window join's tables have event times");
        let (name, late_topic) = (self.name.clone(), self.late_topic());
        let join = self.queries[query_index].join.as_mut().expect("a join query");
        let starts: Vec<i64> = times.values().iter().map(|t| join.pane_start(*t)).collect();
        let late: Vec<bool> = starts.iter().map(|pane| join.is_late(*pane)).collect();
        output.late.extend(late_messages(&name, &late_topic, times, &late, kept, bodies));
        let keep: Vec<bool> = late.iter().map(|late| !late).collect();
        let keep_mask = BooleanArray::from(keep.clone());
        let kept_starts: Vec<i64> = starts.iter().zip(&keep).filter(|(_, k)| **k).map(|(s, _)| *s).collect();
        for side in 0..join.sides.len() {
            if join.sides[side].table != table_index {
                continue;
            }
            // Pane bounds for now; a window's run sets the window's own.
            let size = join.slide_ms;
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(TimestampMillisecondArray::from(starts.clone())));
            columns
                .push(Arc::new(TimestampMillisecondArray::from(starts.iter().map(|s| s + size).collect::<Vec<_>>())));
            let windowed = RecordBatch::try_new(join.sides[side].schema.clone(), columns)?;
            join.buffer(side, &filter_record_batch(&windowed, &keep_mask)?, &kept_starts)?;
        }
        Ok(())
    }

    /// Runs every buffered query (window joins, nested aggregates) that reads `table_index`
    /// over the windows its watermark (the smallest of its tables') closed.
    async fn fire_joins(&mut self, table_index: usize, output: &mut JobOutput) -> Result<()> {
        self.refresh_lookups().await?;
        for query_index in 0..self.queries.len() {
            let Some(join) = &self.queries[query_index].join else { continue };
            if !self.queries[query_index].reads(table_index) {
                continue;
            }
            // The smallest watermark of the sides, leaving out a side whose table is wholly
            // idle (as Flink leaves out idle inputs): a quiet or empty side must not stall
            // the join until its buffered rows hit their limit.
            let sides: Vec<&TableRuntime> = join.sides.iter().map(|side| &self.tables[side.table]).collect();
            let active: Vec<Option<i64>> =
                sides.iter().filter(|table| !table.is_idle()).map(|table| table.watermark_ms()).collect();
            let watermark = if active.is_empty() {
                sides.iter().filter_map(|table| table.watermark_ms()).max()
            } else {
                active.into_iter().collect::<Option<Vec<i64>>>().and_then(|w| w.into_iter().min())
            };
            let Some(watermark) = watermark else {
                continue;
            };
            let join = self.queries[query_index].join.as_mut().expect("checked above");
            let size = join.size_ms;
            for start in join.close(watermark) {
                let join = self.queries[query_index].join.as_mut().expect("checked above");
                let rows = join.window_rows(start)?;
                for (side, batch) in join.sides.iter().zip(rows) {
                    side.slot.fill(vec![batch]);
                }
                // Owned copies across the await: a query's window state is not `Sync`.
                let (plan, index, sink) = {
                    let query = &self.queries[query_index];
                    (query.plan.clone(), query.index, query.sink.clone())
                };
                let mut occurrences = Occurrences::new();
                let batches = match plan.execute(&self.state).await {
                    Ok(batches) => batches,
                    Err(error @ (StreamsError::DataFusion(_) | StreamsError::Arrow(_))) => {
                        // The window's rows make the query fail (a division by zero): report
                        // the window on the dead-letter topic and go on with the next one.
                        let window = serde_json::json!({ "window_start_ms": start, "window_end_ms": start + size });
                        let reason = format!("the query failed on this window: {error}");
                        let message =
                            self.side_message(self.dead_letter_topic(), window.to_string().as_bytes(), &reason);
                        output.dead_letters.push(message);
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                let window = Some((start, start + size));
                emit(&self.name, index, &sink, &batches, ResultIdentity::Row, window, &mut occurrences, output)?;
            }
            self.queries[query_index].join.as_mut().expect("checked above").drop_done();
        }
        Ok(())
    }

    /// Keeps each key's latest row; a row without a key is dead-lettered.
    fn update_lookup(
        &mut self,
        table_index: usize,
        batch: &RecordBatch,
        kept: &[usize],
        bodies: &[&[u8]],
        output: &mut JobOutput,
    ) -> Result<()> {
        let key_column = self.tables[table_index].spec.lookup_key.clone().expect("a lookup table");
        let keys = cast(batch.column(batch.schema().index_of(&key_column)?), &DataType::Utf8)?;
        let keys = datafusion::arrow::array::as_string_array(&keys);
        for row in 0..batch.num_rows() {
            if keys.is_null(row) {
                let reason = format!("the lookup key {key_column} is null");
                output.dead_letters.push(self.side_message(self.dead_letter_topic(), bodies[kept[row]], &reason));
                continue;
            }
            let lookup = self.tables[table_index].lookup.as_mut().expect("a lookup table");
            let key = keys.value(row);
            if !lookup.rows.contains_key(key) && lookup.rows.len() >= LOOKUP_ROWS_MAX {
                return Err(StreamsError::Plan(format!("lookup table over more than {LOOKUP_ROWS_MAX} keys")));
            }
            // A copy of the row: a slice would keep the whole micro-batch alive.
            let take = datafusion::arrow::array::UInt32Array::from(vec![row as u32]);
            let columns = batch
                .columns()
                .iter()
                .map(|c| datafusion::arrow::compute::take(c.as_ref(), &take, None))
                .collect::<Result<Vec<_>, _>>()?;
            lookup.rows.insert(key.to_string(), RecordBatch::try_new(batch.schema(), columns)?);
            lookup.dirty = true;
        }
        Ok(())
    }

    /// Refills the slots of lookup tables whose rows changed.
    async fn refresh_lookups(&mut self) -> Result<()> {
        for table in &mut self.tables {
            let Some(lookup) = table.lookup.as_mut().filter(|l| l.dirty) else { continue };
            let rows: Vec<&RecordBatch> = lookup.rows.values().collect();
            let all = datafusion::arrow::compute::concat_batches(&table.spec.schema, rows)?;
            table.slot.fill(vec![all]);
            lookup.dirty = false;
        }
        Ok(())
    }

    /// The job's state for a checkpoint: watermarks and every window operator's panes.
    /// Input offsets are the runner's and are saved beside it.
    pub fn snapshot(&mut self) -> Result<JobSnapshot> {
        let max_event_ms = self.tables.iter().map(|t| t.max_event_ms.clone()).collect();
        let mut aggregators = Vec::with_capacity(self.queries.len());
        for query in &mut self.queries {
            aggregators.push(match &mut query.aggregate {
                Some(aggregate) => Some(aggregate.aggregator.snapshot()?),
                None => None,
            });
        }
        let watermark_floor_ms = self.tables.iter().map(|t| t.watermark_floor_ms).collect();
        let joins = self
            .queries
            .iter()
            .map(|q| q.join.as_ref().map(WindowJoin::snapshot).transpose())
            .collect::<Result<_>>()?;
        Ok(JobSnapshot { max_event_ms, aggregators, watermark_floor_ms, joins })
    }

    /// Puts back a snapshot taken by a job planned from the same SQL.
    pub fn restore(&mut self, snapshot: JobSnapshot) -> Result<()> {
        if snapshot.max_event_ms.len() != self.tables.len() || snapshot.aggregators.len() != self.queries.len() {
            return Err(StreamsError::Checkpoint(
                "the checkpoint is of a different job (tables or queries differ)".into(),
            ));
        }
        for (table, max) in self.tables.iter_mut().zip(snapshot.max_event_ms) {
            table.max_event_ms = max;
        }
        for (table, floor) in self.tables.iter_mut().zip(snapshot.watermark_floor_ms) {
            table.watermark_floor_ms = floor;
        }
        let joins = if snapshot.joins.is_empty() { vec![None; self.queries.len()] } else { snapshot.joins };
        if joins.len() != self.queries.len() {
            return Err(StreamsError::Checkpoint("the checkpoint is of a different job (queries differ)".into()));
        }
        for (query, state) in self.queries.iter_mut().zip(joins) {
            match (&mut query.join, state) {
                (Some(join), Some(state)) => join.restore(state)?,
                (None, None) => {}
                _ => {
                    return Err(StreamsError::Checkpoint(
                        "the checkpoint is of a different job (a join changed)".into(),
                    ));
                }
            }
        }
        for (query, state) in self.queries.iter_mut().zip(snapshot.aggregators) {
            match (&mut query.aggregate, state) {
                (Some(aggregate), Some(state)) => aggregate.aggregator.restore(state)?,
                (None, None) => {}
                _ => {
                    return Err(StreamsError::Checkpoint(
                        "the checkpoint is of a different job (a query changed)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Per query with a window aggregate: the number of key columns and of state columns of
    /// each aggregate (how a checkpoint's pane batches are laid out).
    pub fn state_layout(&self) -> Result<Vec<Option<StateLayout>>> {
        self.queries
            .iter()
            .map(|query| {
                let Some(aggregate) = &query.aggregate else { return Ok(None) };
                let states = aggregate.specs_state_widths.clone();
                // A keyless query keeps one constant key column (`key_fields_or_constant`).
                Ok(Some(StateLayout { keys: aggregate.key_exprs.len().max(1), states }))
            })
            .collect()
    }

    fn side_message(&self, topic: String, body: &[u8], reason: &str) -> Message {
        side_message(&self.name, topic, body, reason)
    }
}

/// A row's body for the dead-letter or late topic, with the reason and the job.
fn side_message(job: &str, topic: String, body: &[u8], reason: &str) -> Message {
    let mut message = Message::new(topic, body.to_vec());
    message.properties.insert(PROPERTY_REASON.into(), reason.chars().take(1024).collect());
    message.properties.insert(PROPERTY_JOB.into(), job.to_string());
    message
}

/// The late rows (`late[i]` for decoded row i, whose body is `bodies[kept[i]]`), for the
/// late topic.
fn late_messages(
    job: &str,
    late_topic: &str,
    times: &TimestampMillisecondArray,
    late: &[bool],
    kept: &[usize],
    bodies: &[&[u8]],
) -> Vec<Message> {
    (0..late.len())
        .filter(|row| late[*row])
        .map(|row| {
            let reason = format!("late: its window closed (event time {} ms)", times.value(row));
            side_message(job, late_topic.to_string(), bodies[kept[row]], &reason)
        })
        .collect()
}

/// `expr` simplified as the optimizer would (functions such as `coalesce` only run
/// rewritten), ready to become a physical expression over `schema`.
fn simplified(state: &SessionState, expr: &Expr, schema: &datafusion::common::DFSchemaRef) -> Result<Expr> {
    use datafusion::optimizer::simplify_expressions::{ExprSimplifier, SimplifyContext};
    let context = SimplifyContext::builder()
        .with_schema(schema.clone())
        .with_config_options(Arc::clone(state.config_options()))
        .build();
    let simplifier = ExprSimplifier::new(context);
    let expr = simplifier.coerce(expr.clone(), schema)?;
    Ok(simplifier.simplify(expr)?)
}

/// Decodes only the `used` columns of `schema`; the others come back as nulls, so plans see
/// the table's full schema.
fn decode_columns(schema: &SchemaRef, used: &UsedColumns, bodies: &[&[u8]]) -> Result<crate::decode::Decoded> {
    let mut decoded = decode_json(&used.schema, bodies)?;
    let rows = decoded.batch.num_rows();
    let mut columns = decoded.batch.columns().iter();
    let full: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(&used.used)
        .map(|(field, used)| match used {
            true => columns.next().expect("one decoded column per used field").clone(),
            false => datafusion::arrow::array::new_null_array(field.data_type(), rows),
        })
        .collect();
    decoded.batch = RecordBatch::try_new(schema.clone(), full)?;
    Ok(decoded)
}

fn timestamp_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn event_time_column(batch: &RecordBatch, column: &str) -> Result<TimestampMillisecondArray> {
    let index = batch.schema().index_of(column)?;
    let times = cast(batch.column(index), &timestamp_ms())?;
    Ok(times.as_any().downcast_ref::<TimestampMillisecondArray>().expect("cast to timestamp ms").clone())
}

fn evaluate_all(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs.iter().map(|e| Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)).collect()
}

/// A slot table registered as `name`; returns its slot.
fn register_slot(context: &datafusion::prelude::SessionContext, name: &str, schema: SchemaRef) -> Result<Slot> {
    let (table, slot) = SlotTable::new(schema);
    context.register_table(name, table)?;
    Ok(slot)
}

async fn plan_insert(
    context: &datafusion::prelude::SessionContext,
    tables: &[TableRuntime],
    index: usize,
    insert: &InsertStatement,
    sink: ResultSink,
) -> Result<Query> {
    if insert.windows.len() > 2 {
        return Err(StreamsError::Plan("at most two windows (a window join) per query".into()));
    }
    let mut window = None;
    let mut table = None;
    let mut join_sides = Vec::new();
    for spec in &insert.windows {
        let table_index =
            tables.iter().position(|t| t.spec.name.eq_ignore_ascii_case(&spec.table)).expect("checked by parse_job");
        let mut fields: Vec<Field> =
            tables[table_index].spec.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("window_start", timestamp_ms(), false));
        fields.push(Field::new("window_end", timestamp_ms(), false));
        let schema = Arc::new(Schema::new(fields));
        let slot = register_slot(context, &spec.relation, schema.clone())?;
        join_sides.push(JoinSide::new(table_index, slot.clone(), schema.clone()));
        window = Some(Windowed { spec: spec.clone(), slot, schema });
        table = Some(table_index);
    }
    let state = context.state();
    let plan = state.optimize(&state.create_logical_plan(&insert.query).await?)?;
    // Which tables the query reads.
    let mut scanned = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scanned.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if table.is_none() {
        // The table whose rows drive the query; lookup tables only enrich them.
        let mut reads = tables.iter().enumerate().filter(|(_, t)| {
            t.spec.lookup_key.is_none() && scanned.iter().any(|s| s.eq_ignore_ascii_case(&t.spec.name))
        });
        table = reads.next().map(|(i, _)| i);
        if reads.next().is_some() {
            return Err(StreamsError::Plan(
                "a query reads one stream table (join others as lookup tables: WITH (lookup_key = '…'))".into(),
            ));
        }
    }
    let Some(table) = table else {
        return Err(StreamsError::Plan("the query reads no stream table declared with CREATE TABLE".into()));
    };
    let mut aggregates = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node {
            aggregates.push(aggregate.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    // Queries the pane operator cannot split run whole per window over buffered rows: a
    // join of two window relations, or nested aggregates over one.
    if insert.windows.len() == 2 || (window.is_some() && aggregates.len() > 1) {
        let specs = &insert.windows;
        let same = specs
            .iter()
            .all(|w| w.kind == specs[0].kind && w.size_ms == specs[0].size_ms && w.slide_ms == specs[0].slide_ms);
        if !same || specs[0].kind == WindowKind::Session {
            return Err(StreamsError::Plan(
                "window relations joined or nested in one query must be TUMBLE or HOP windows of the same size and slide"
                    .into(),
            ));
        }
        let join = WindowJoin::new(specs[0].size_ms, specs[0].slide_ms, join_sides);
        return Ok(Query {
            index,
            sink,
            table,
            window: None,
            aggregate: None,
            join: Some(join),
            plan: Arc::new(CachedPlan::new(plan)),
        });
    }
    let aggregate = match (aggregates.as_slice(), &window) {
        ([], None) => None,
        ([], Some(window)) if window.spec.kind == WindowKind::Tumble => None,
        ([], Some(_)) => return Err(StreamsError::Plan("HOP and SESSION windows need a GROUP BY".into())),
        ([_], None) => {
            return Err(StreamsError::Plan(
                "GROUP BY over an unbounded table needs a window: FROM TUMBLE(…) or HOP(…)".into(),
            ));
        }
        ([aggregate], Some(window)) => Some(plan_window_aggregate(context, &plan, aggregate, window)?),
        _ => return Err(StreamsError::Plan("one GROUP BY per query for now".into())),
    };
    Ok(Query { index, sink, table, window, aggregate, join: None, plan: Arc::new(CachedPlan::new(plan)) })
}

/// HOP and SESSION rows are aggregated per pane or per row, and get their windows' bounds
/// only when a window closes: below the aggregate, `window_start` and `window_end` hold a
/// pane's or a row's bounds. So they may only pass through to the GROUP BY, not feed a
/// filter, an aggregate's argument or another group expression.
fn refuse_window_columns_below(
    aggregate: &datafusion::logical_expr::Aggregate,
    window_start_position: usize,
    window_end_position: usize,
) -> Result<()> {
    let uses_window_column = |expr: &Expr| {
        expr.column_refs().iter().any(|column| column.name == "window_start" || column.name == "window_end")
    };
    let passes_through = |expr: &Expr| matches!(expr.clone().unalias(), Expr::Column(_));
    let refused = |expr: &Expr| {
        StreamsError::Plan(format!(
            "{expr}: with HOP and SESSION windows, window_start and window_end may only be grouped by and selected; a window's bounds are known only when it closes"
        ))
    };
    for (position, expr) in aggregate.group_expr.iter().enumerate() {
        if position != window_start_position && position != window_end_position && uses_window_column(expr) {
            return Err(refused(expr));
        }
    }
    if let Some(expr) = aggregate.aggr_expr.iter().find(|expr| uses_window_column(expr)) {
        return Err(refused(expr));
    }
    let mut found = None;
    aggregate.input.apply(|node| {
        let passing = matches!(node, LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_));
        for expr in node.expressions() {
            if uses_window_column(&expr) && !(passing && passes_through(&expr)) {
                found = Some(expr);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found {
        Some(expr) => Err(refused(&expr)),
        None => Ok(()),
    }
}

fn plan_window_aggregate(
    context: &datafusion::prelude::SessionContext,
    plan: &LogicalPlan,
    aggregate: &datafusion::logical_expr::Aggregate,
    window: &Windowed,
) -> Result<WindowedAggregate> {
    let state = context.state();
    let input_schema = aggregate.input.schema();
    let position_of =
        |name: &str| aggregate.group_expr.iter().position(|e| matches!(e, Expr::Column(c) if c.name == name));
    let (Some(window_start_position), Some(window_end_position)) =
        (position_of("window_start"), position_of("window_end"))
    else {
        return Err(StreamsError::Plan("GROUP BY must include window_start and window_end".into()));
    };
    if window.spec.kind != WindowKind::Tumble {
        refuse_window_columns_below(aggregate, window_start_position, window_end_position)?;
    }
    let mut key_positions = Vec::new();
    let mut key_exprs = Vec::new();
    let mut key_fields = Vec::new();
    let mut key_names = Vec::new();
    for (position, expr) in aggregate.group_expr.iter().enumerate() {
        if position == window_start_position || position == window_end_position {
            continue;
        }
        if matches!(expr, Expr::GroupingSet(_)) {
            return Err(StreamsError::Plan("GROUPING SETS, CUBE and ROLLUP are not supported".into()));
        }
        let physical = state.create_physical_expr(simplified(&state, expr, input_schema)?, input_schema)?;
        key_fields.push(SortField::new(physical.data_type(input_schema.as_arrow())?));
        key_exprs.push(physical);
        key_positions.push(position);
        key_names.push(aggregate.schema.field(position).name().clone());
    }
    let pane_expr = state.create_physical_expr(
        simplified(&state, &aggregate.group_expr[window_start_position], input_schema)?,
        input_schema,
    )?;
    let planning = PhysicalPlanningContext::default();
    let mut specs = Vec::new();
    let mut argument_exprs = Vec::new();
    let mut state_widths = Vec::new();
    for expr in &aggregate.aggr_expr {
        let expr = &simplified(&state, expr, input_schema)?;
        let lowered = LoweredAggregateBuilder::new(
            expr,
            input_schema,
            input_schema.as_arrow(),
            state.execution_props(),
            &planning,
        )
        .build()?;
        // `WITHIN GROUP (ORDER BY x)` names the input of an ordered-set aggregate (x is among
        // its arguments); any other ORDER BY needs sorted input, which merged panes lack.
        let within_group = lowered.aggregate.fun().supports_within_group_clause();
        if !within_group && !lowered.aggregate.order_bys().is_empty() {
            return Err(StreamsError::Plan(format!("{expr}: ORDER BY inside an aggregate is not supported")));
        }
        state_widths.push(lowered.aggregate.state_fields()?.len());
        argument_exprs.push((lowered.aggregate.expressions(), lowered.filter.clone()));
        specs.push(AggregateSpec { function: lowered.aggregate });
    }
    let aggregator = match window.spec.kind {
        WindowKind::Session => Operator::Sessions(SessionAggregator::new(window.spec.size_ms, key_fields, specs)?),
        WindowKind::Tumble | WindowKind::Hop => {
            Operator::Panes(WindowAggregator::new(window.spec.size_ms, window.spec.slide_ms, key_fields, specs)?)
        }
    };
    // The aggregate's rows come from a slot; a projection gives them the names the plan above
    // refers to.
    let output = aggregate.schema.as_ref();
    let slot_fields: Vec<Field> = output
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    let aggregate_schema = Arc::new(Schema::new(slot_fields));
    let slot_name = format!("{}_aggregate", window.spec.relation);
    let (aggregate_table, aggregate_slot) = SlotTable::new(aggregate_schema.clone());
    let scan = LogicalPlanBuilder::scan(slot_name.as_str(), provider_as_source(aggregate_table), None)?;
    let renames: Vec<Expr> = output
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(slot_name.as_str()), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let replacement = scan.project(renames)?.build()?;
    let above = plan
        .clone()
        .transform_up(|node| {
            Ok(match node {
                LogicalPlan::Aggregate(_) => Transformed::yes(replacement.clone()),
                other => Transformed::no(other),
            })
        })?
        .data;
    Ok(WindowedAggregate {
        below: CachedPlan::new(aggregate.input.as_ref().clone()),
        above: CachedPlan::new(above),
        aggregate_slot,
        aggregate_schema,
        window_start_position,
        window_end_position,
        key_positions,
        pane_expr,
        key_exprs,
        argument_exprs,
        aggregator,
        specs_state_widths: state_widths,
        key_names,
    })
}

/// What identifies a window result besides its window: a windowed aggregate's GROUP BY key
/// (its output names; none for a keyless aggregate, one result per window), or the row.
#[derive(Clone, Copy)]
enum ResultIdentity<'a> {
    GroupKey(&'a [String]),
    Row,
}

/// How many results of one firing had each identity (window and key, or window and row).
type Occurrences = std::collections::HashMap<Vec<u8>, usize>;

/// Result rows into their sink: messages for a topic (see `to_messages`), a count for a
/// blackhole table. On error `output` holds none of `batches`' results.
#[allow(clippy::too_many_arguments)]
fn emit(
    job: &str,
    query: usize,
    sink: &ResultSink,
    batches: &[RecordBatch],
    identity: ResultIdentity<'_>,
    window: Option<(i64, i64)>,
    occurrences: &mut Occurrences,
    output: &mut JobOutput,
) -> Result<()> {
    match sink {
        ResultSink::Topic(topic) => {
            output.results.extend(to_messages(job, query, topic, batches, identity, window, occurrences)?);
        }
        ResultSink::Blackhole(_) => {
            output.discarded_rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
    }
    Ok(())
}

/// Result rows → JSON messages for `topic`. The key is a `key` column when the query has
/// one, else the GROUP BY key columns joined by `|`. A window's results get a deterministic
/// unique id — job, query, window, the result's identity and its occurrence among results of
/// that identity in the firing — so a replay after a restart can be recognised. The identity
/// is the key when the result carries it, so a replay that computes another value for a
/// window and key (rows that were late before the crash arrive in one batch after it, or
/// queues interleave differently) still matches the result already sent; only a result
/// without its key falls back to its whole row.
fn to_messages(
    job: &str,
    query: usize,
    topic: &str,
    batches: &[RecordBatch],
    identity: ResultIdentity<'_>,
    window: Option<(i64, i64)>,
    occurrences: &mut Occurrences,
) -> Result<Vec<Message>> {
    let (key_names, by_key) = match identity {
        ResultIdentity::GroupKey(key_names) => (key_names, true),
        ResultIdentity::Row => (&[][..], false),
    };
    let mut messages = Vec::new();
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(batch)?;
        writer.finish()?;
        let text = writer.into_inner();
        let schema = batch.schema();
        let key_column = schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case("key"));
        let key_columns: Vec<usize> = match key_column {
            Some(index) => vec![index],
            None => key_names.iter().filter_map(|name| schema.index_of(name).ok()).collect(),
        };
        // A windowed aggregate's result that carries its whole GROUP BY key (none for a keyless
        // one: one result per window) or a `key` column is identified by it; any other result
        // (a window join's) by its row.
        let keyed = by_key && (key_column.is_some() || key_columns.len() == key_names.len());
        let key_strings: Vec<ArrayRef> =
            key_columns.iter().map(|i| cast(batch.column(*i), &DataType::Utf8)).collect::<Result<_, _>>()?;
        for (row, line) in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let mut message = Message::new(topic, line.to_vec());
            let parts: Vec<&str> = key_strings
                .iter()
                .map(|c| datafusion::arrow::array::as_string_array(c))
                .map(|c| if c.is_valid(row) { c.value(row) } else { "" })
                .collect();
            let key: String = parts.join("|").chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
            if !key.is_empty() {
                message.sharding_key = Some(key.clone());
                message.keys = vec![key.chars().take(128).collect()];
            }
            if let Some((start, end)) = window {
                let mut identity = format!("{start}\u{1}{end}\u{1}").into_bytes();
                if keyed {
                    identity.push(b'k');
                    for part in &parts {
                        identity.extend_from_slice(part.as_bytes());
                        identity.push(1);
                    }
                } else {
                    identity.push(b'r');
                    identity.extend_from_slice(line);
                }
                // Results of one identity (identical rows without their key, sessions of
                // different keys with the same bounds) are told apart by their order.
                let seen = occurrences.entry(identity).or_insert(0usize);
                *seen += 1;
                let identity = if keyed { parts.join("\u{1}").into_bytes() } else { line.to_vec() };
                message.unique_id = Some(result_id(job, query, start, end, keyed, &identity, *seen));
                message.born_timestamp_ms = Some(end);
                // The replay check after a restart reads only this job's results.
                message.properties.insert(PROPERTY_JOB.into(), job.to_string());
            }
            messages.push(message);
        }
    }
    Ok(messages)
}

/// 32 hex digits from FNV-1a 64 over the parts, twice with different seeds.
fn result_id(job: &str, query: usize, start: i64, end: i64, keyed: bool, identity: &[u8], occurrence: usize) -> String {
    let kind = if keyed { 'k' } else { 'r' };
    let mut text = format!("{job}\u{1}{query}\u{1}{start}\u{1}{end}\u{1}{occurrence}\u{1}{kind}").into_bytes();
    text.extend_from_slice(identity);
    let hash =
        |seed: u64| text.iter().fold(seed, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{:016X}{:016X}", hash(0xcbf2_9ce4_8422_2325), hash(0x8422_2325_cbf2_9ce4))
}
