//! Slot tables and reusable plans: a slot table's rows are the batches the job last put in
//! its slot, read when a plan *executes*, not when it is planned, so a query's physical plan
//! is made once and runs again over every micro-batch (`CachedPlan`).
//!
//! Planning a query (logical optimizer, physical planner and optimizer) cost about as much
//! as running a simple projection over a 1,024-row micro-batch; a plan is planned once when
//! every operator in it keeps nothing between runs (see `REUSABLE_OPERATORS`) and every
//! function it calls is immutable (a stable one such as `now()` is folded to the planning
//! moment; volatile ones are left out too, to be safe). Any other plan is planned anew for
//! each run, as before.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};

use crate::error::Result;

/// The batches a slot table holds until the next `fill`.
#[derive(Clone, Debug, Default)]
pub struct Slot(Arc<RwLock<Vec<RecordBatch>>>);

impl Slot {
    /// Replaces what the table holds.
    pub fn fill(&self, batches: Vec<RecordBatch>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = batches;
    }

    fn batches(&self) -> Vec<RecordBatch> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A table of one partition: whatever its slot holds when a scan of it executes.
#[derive(Debug)]
pub struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

impl SlotTable {
    /// An empty table of `schema`, and the slot that fills it.
    pub fn new(schema: SchemaRef) -> (Arc<SlotTable>, Slot) {
        let slot = Slot::default();
        (Arc::new(SlotTable { schema, slot: slot.clone() }), slot)
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(SlotExec {
            slot: self.slot.clone(),
            projection: projection.cloned(),
            schema,
            properties: Arc::new(properties),
        }))
    }
}

/// The scan of a slot table: reads the slot when executed.
#[derive(Debug)]
struct SlotExec {
    slot: Slot,
    projection: Option<Vec<usize>>,
    /// The projected schema.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SlotExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &'static str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(datafusion::common::DataFusionError::Internal(format!(
                "SlotExec has one partition, asked for {partition}"
            )));
        }
        let mut batches = self.slot.batches();
        if let Some(columns) = &self.projection {
            batches = batches.iter().map(|batch| batch.project(columns)).collect::<Result<_, _>>()?;
        }
        Ok(Box::pin(MemoryStream::try_new(batches, self.schema.clone(), None)?))
    }
}

/// Operators that keep nothing between runs of their plan (every run starts from fresh
/// streams; `reset_plan_states` gives them fresh metrics). Joins (their build side), sorts
/// (top-k dynamic filters), aggregates and anything else are planned per run.
const REUSABLE_OPERATORS: &[&str] = &[
    "SlotExec",
    "CooperativeExec",
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "UnionExec",
    "GlobalLimitExec",
    "LocalLimitExec",
    "EmptyExec",
    "PlaceholderRowExec",
];

/// A query piece's logical plan and, once planned, its physical plan when it can run again.
pub struct CachedPlan {
    logical: LogicalPlan,
    physical: OnceLock<Arc<dyn ExecutionPlan>>,
}

impl CachedPlan {
    pub fn new(logical: LogicalPlan) -> Self {
        CachedPlan { logical, physical: OnceLock::new() }
    }

    pub fn logical(&self) -> &LogicalPlan {
        &self.logical
    }

    /// Runs the plan over what the slots hold now.
    pub async fn execute(&self, state: &SessionState) -> Result<Vec<RecordBatch>> {
        let physical = match self.physical.get() {
            // Fresh operator instances (metrics that do not pile up run after run).
            Some(planned) => reset_plan_states(planned.clone())?,
            None => {
                let planned = state.create_physical_plan(&self.logical).await?;
                if reusable(&self.logical, &planned) {
                    let _ = self.physical.set(planned.clone());
                }
                planned
            }
        };
        Ok(datafusion::physical_plan::collect(physical, state.task_ctx()).await?)
    }

    /// Whether the physical plan is kept for the next runs.
    #[cfg(test)]
    fn is_cached(&self) -> bool {
        self.physical.get().is_some()
    }
}

/// Whether a physical plan made from `logical` may run again over new slot contents.
fn reusable(logical: &LogicalPlan, physical: &Arc<dyn ExecutionPlan>) -> bool {
    let mut operators_reusable = true;
    let _ = physical.apply(|node| {
        operators_reusable &= REUSABLE_OPERATORS.contains(&node.name());
        Ok(if operators_reusable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    // A stable function (now(), current_date()) is folded to its value when planned; volatile
    // ones are not, but are left out as well.
    let mut immutable = true;
    let _ = logical.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(function) = e {
                    immutable &= function.func.signature().volatility == Volatility::Immutable;
                }
                Ok(if immutable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
            })
        })
    });
    operators_reusable && immutable
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        let column = |b: &RecordBatch| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
        batches.iter().flat_map(column).collect()
    }

    /// Each case: a query over slot table `t`, whether its plan is kept, and its rows over two
    /// fillings of the slot in turn.
    #[tokio::test]
    async fn a_kept_plan_reads_the_slot_as_it_is_at_each_run() {
        let cases: &[(&str, bool, [&[i64]; 2])] = &[
            ("SELECT a * 2 AS b FROM t WHERE a > 1", true, [&[4, 6], &[10]]),
            ("SELECT a FROM t UNION ALL SELECT a + 100 FROM t", true, [&[1, 2, 3, 101, 102, 103], &[5, 105]]),
            ("SELECT a FROM t ORDER BY a DESC LIMIT 1", false, [&[3], &[5]]),
            ("SELECT count(*) AS a FROM t", false, [&[3], &[1]]),
            ("SELECT a FROM t WHERE a + 0 * extract(second FROM now()) > 2", false, [&[3], &[5]]),
            ("SELECT a FROM t WHERE random() >= 0", false, [&[1, 2, 3], &[5]]),
            ("SELECT a FROM t WHERE a > (SELECT min(a) FROM t)", false, [&[2, 3], &[]]),
        ];
        for (sql, kept, expected) in cases {
            // One partition, as a job plans.
            let context = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
            let (table, slot) = SlotTable::new(batch(&[]).schema());
            context.register_table("t", table).unwrap();
            let plan = CachedPlan::new(context.state().create_logical_plan(sql).await.unwrap());
            let state = context.state();
            slot.fill(vec![batch(&[1, 2, 3])]);
            assert_eq!(values(&plan.execute(&state).await.unwrap()), expected[0], "{sql}");
            slot.fill(vec![batch(&[5])]);
            assert_eq!(values(&plan.execute(&state).await.unwrap()), expected[1], "{sql}");
            assert_eq!(plan.is_cached(), *kept, "{sql}");
        }
    }
}
