//! The event-time window operator DataFusion lacks: incremental two-phase aggregation over
//! panes.
//!
//! A window of `size` sliding by `slide` is `size / slide` consecutive panes of `slide` (a
//! tumbling window is one pane). Rows update the live aggregate state of their pane (one
//! DataFusion `GroupsAccumulator` per aggregate, grouped by the non-window GROUP BY keys).
//! When the watermark passes a pane's end the pane is frozen: its accumulators give up their
//! partial state (`state()`), and the live accumulators are dropped. When the watermark
//! passes a window's end the window's frozen panes are merged (`merge_batch`) into fresh
//! accumulators and evaluated — once. No raw row is kept: state is O(open panes × groups).
//!
//! Rows whose pane is already frozen are late: the caller routes them elsewhere. (For a
//! hopping window that drops them from later windows still open too: a frozen pane is not
//! reopened.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, TimestampMillisecondArray};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use crate::error::{Result, StreamsError};

/// Most groups one pane may hold (memory bound).
pub const PANE_GROUPS_MAX: usize = 1_000_000;
/// Most panes open or frozen at once per query (memory bound).
pub const PANES_MAX: usize = 100_000;

/// One aggregate of the query, with its optional `FILTER (WHERE …)`.
pub struct AggregateSpec {
    pub function: Arc<AggregateFunctionExpr>,
}

impl AggregateSpec {
    pub(crate) fn accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.function.groups_accumulator_supported() {
            return Ok(self.function.create_groups_accumulator()?);
        }
        let function = self.function.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || function.create_accumulator())))
    }
}

/// Key fields, or one constant field for a GROUP BY of the window columns alone (a row
/// converter with no columns converts no rows).
pub(crate) fn key_fields_or_constant(mut key_fields: Vec<SortField>) -> Vec<SortField> {
    if key_fields.is_empty() {
        key_fields.push(SortField::new(datafusion::arrow::datatypes::DataType::Boolean));
    }
    key_fields
}

/// The key columns of `rows` rows: `key_columns`, or the constant column of a keyless query.
pub(crate) fn key_columns_or_constant(keyless: bool, key_columns: &[ArrayRef], rows: usize) -> Vec<ArrayRef> {
    if keyless {
        return vec![Arc::new(datafusion::arrow::array::BooleanArray::from(vec![true; rows]))];
    }
    key_columns.to_vec()
}

/// Group keys of one pane or window, in first-seen order.
struct Groups {
    index: HashMap<OwnedRow, usize>,
    keys: Vec<OwnedRow>,
}

impl Groups {
    fn new() -> Self {
        Groups { index: HashMap::new(), keys: Vec::new() }
    }

    /// Group index of every row of `keys`.
    fn indices(&mut self, converter: &RowConverter, key_columns: &[ArrayRef]) -> Result<Vec<usize>> {
        let rows = converter.convert_columns(key_columns)?;
        let mut indices = Vec::with_capacity(rows.num_rows());
        for row in rows.iter() {
            let next = self.keys.len();
            let index = match self.index.get(&row.owned()) {
                Some(index) => *index,
                None => {
                    if next >= PANE_GROUPS_MAX {
                        return Err(StreamsError::Plan(format!(
                            "more than {PANE_GROUPS_MAX} groups in one window pane"
                        )));
                    }
                    self.index.insert(row.owned(), next);
                    self.keys.push(row.owned());
                    next
                }
            };
            indices.push(index);
        }
        Ok(indices)
    }

    fn indices_of(&mut self, keys: &[OwnedRow]) -> Vec<usize> {
        keys.iter()
            .map(|key| {
                let next = self.keys.len();
                *self.index.entry(key.clone()).or_insert_with(|| {
                    self.keys.push(key.clone());
                    next
                })
            })
            .collect()
    }
}

struct LivePane {
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

struct FrozenPane {
    keys: Vec<OwnedRow>,
    /// Per aggregate, its state arrays (one row per key).
    states: Vec<Vec<ArrayRef>>,
}

/// One pane in a checkpoint: its group keys (as columns) and each aggregate's state.
#[derive(Clone, Debug)]
pub struct PaneSnapshot {
    pub start_ms: i64,
    /// The pane's end (a session's end for session windows).
    pub end_ms: i64,
    /// Still taking rows (else frozen).
    pub live: bool,
    pub keys: Vec<ArrayRef>,
    pub states: Vec<Vec<ArrayRef>>,
}

/// A window operator's whole state.
#[derive(Clone, Debug, Default)]
pub struct AggregatorSnapshot {
    pub next_window_start_ms: Option<i64>,
    pub emitting: bool,
    pub panes: Vec<PaneSnapshot>,
}

/// A window's result: its bounds, the group key columns and one column per aggregate.
pub struct WindowResult {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub key_columns: Vec<ArrayRef>,
    pub aggregate_columns: Vec<ArrayRef>,
}

/// The panes of one windowed aggregate query.
pub struct WindowAggregator {
    size_ms: i64,
    slide_ms: i64,
    aggregates: Vec<AggregateSpec>,
    converter: RowConverter,
    /// GROUP BY only the window columns: every row has the same (constant) key.
    keyless: bool,
    live: BTreeMap<i64, LivePane>,
    frozen: BTreeMap<i64, FrozenPane>,
    /// Start of the earliest window not yet emitted (None before the first row).
    next_window_start_ms: Option<i64>,
    /// Whether emission has begun (a window ended under the watermark).
    emitting: bool,
}

impl WindowAggregator {
    pub fn new(
        size_ms: i64,
        slide_ms: i64,
        key_fields: Vec<SortField>,
        aggregates: Vec<AggregateSpec>,
    ) -> Result<Self> {
        assert!(slide_ms > 0 && size_ms % slide_ms == 0, "window size must be a multiple of the slide");
        Ok(WindowAggregator {
            size_ms,
            slide_ms,
            aggregates,
            keyless: key_fields.is_empty(),
            converter: RowConverter::new(crate::window::key_fields_or_constant(key_fields))?,
            live: BTreeMap::new(),
            frozen: BTreeMap::new(),
            next_window_start_ms: None,
            emitting: false,
        })
    }

    /// The pane (start) an event time falls in.
    pub fn pane_start(&self, event_time_ms: i64) -> i64 {
        event_time_ms.div_euclid(self.slide_ms) * self.slide_ms
    }

    /// Whether a pane no longer takes rows: it is frozen, or every window holding it has been
    /// emitted (emission has begun and the last such window, starting at the pane, is
    /// before the next window to emit, which never passes a window still open).
    pub fn is_frozen(&self, pane_start_ms: i64) -> bool {
        self.frozen.contains_key(&pane_start_ms)
            || (self.emitting && self.next_window_start_ms.is_some_and(|next| pane_start_ms < next))
    }

    /// Adds rows: `pane_starts[i]` is row i's pane, `key_columns` its group keys and
    /// `arguments[a]` the argument columns of aggregate `a` (with its optional filter).
    pub fn update(
        &mut self,
        pane_starts: &TimestampMillisecondArray,
        key_columns: &[ArrayRef],
        arguments: &[(Vec<ArrayRef>, Option<datafusion::arrow::array::BooleanArray>)],
    ) -> Result<()> {
        let key_columns = &key_columns_or_constant(self.keyless, key_columns, pane_starts.len());
        // Rows of each pane, in order.
        let mut rows_by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for row in 0..pane_starts.len() {
            if pane_starts.is_valid(row) {
                rows_by_pane.entry(pane_starts.value(row)).or_default().push(row as u32);
            }
        }
        for (pane_start, rows) in rows_by_pane {
            debug_assert!(!self.is_frozen(pane_start), "late rows are filtered before update");
            if !self.live.contains_key(&pane_start) && self.live.len() + self.frozen.len() >= PANES_MAX {
                return Err(StreamsError::Plan(format!("more than {PANES_MAX} window panes open")));
            }
            // The first window holding this pane; before any window was emitted the earliest
            // such window is where emission starts (never earlier once it has begun).
            let first_window = pane_start - self.size_ms + self.slide_ms;
            if !self.emitting && self.next_window_start_ms.is_none_or(|next| first_window < next) {
                self.next_window_start_ms = Some(first_window);
            }
            let pane = match self.live.entry(pane_start) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let accumulators = self.aggregates.iter().map(AggregateSpec::accumulator).collect::<Result<_>>()?;
                    entry.insert(LivePane { groups: Groups::new(), accumulators })
                }
            };
            let take = datafusion::arrow::array::UInt32Array::from(rows);
            let take_all = |columns: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
                columns.iter().map(|c| Ok(datafusion::arrow::compute::take(c.as_ref(), &take, None)?)).collect()
            };
            let keys = take_all(key_columns)?;
            let indices = pane.groups.indices(&self.converter, &keys)?;
            let groups = pane.groups.keys.len();
            for (accumulator, (values, filter)) in pane.accumulators.iter_mut().zip(arguments) {
                let values = take_all(values)?;
                let filter = match filter {
                    Some(filter) => {
                        let taken = datafusion::arrow::compute::take(filter, &take, None)?;
                        Some(datafusion::arrow::array::as_boolean_array(&taken).clone())
                    }
                    None => None,
                };
                accumulator.update_batch(&values, &indices, filter.as_ref(), groups)?;
            }
        }
        Ok(())
    }

    /// Freezes panes that end at or before `watermark_ms` and returns every window that ends
    /// at or before it, in order, each once.
    pub fn advance(&mut self, watermark_ms: i64) -> Result<Vec<WindowResult>> {
        let ended: Vec<i64> =
            self.live.keys().copied().take_while(|start| start + self.slide_ms <= watermark_ms).collect();
        for start in ended {
            let mut pane = self.live.remove(&start).expect("pane listed above");
            let states = pane.accumulators.iter_mut().map(|a| a.state(EmitTo::All)).collect::<Result<Vec<_>, _>>()?;
            self.frozen.insert(start, FrozenPane { keys: pane.groups.keys, states });
        }
        let mut results = Vec::new();
        while let Some(window_start) = self.next_window_start_ms {
            let window_end = window_start + self.size_ms;
            if window_end > watermark_ms {
                break;
            }
            self.emitting = true;
            // Skip straight past a gap with no panes.
            let first_pane = self.frozen.range(window_start..window_end).next().map(|(start, _)| *start);
            match first_pane {
                Some(_) => results.push(self.merge_window(window_start, window_end)?),
                None => {
                    let next_pane = self.frozen.range(window_end..).next().map(|(start, _)| *start);
                    let next_live = self.live.keys().next().copied();
                    // The first window still open: a jump never passes it, so a row for an
                    // open window is never taken for late.
                    let open = watermark_ms.saturating_sub(self.size_ms).div_euclid(self.slide_ms) * self.slide_ms
                        + self.slide_ms;
                    if let Some(pane) = next_pane.into_iter().chain(next_live).min() {
                        // The first window that holds that pane.
                        let jump = (pane - self.size_ms + self.slide_ms).min(open);
                        if jump > window_start {
                            self.next_window_start_ms = Some(jump);
                            continue;
                        }
                    } else {
                        // Nothing left: emission resumes at the first window still open, so
                        // rows for windows already past stay late.
                        self.next_window_start_ms = Some(open.max(window_start));
                        break;
                    }
                }
            }
            self.next_window_start_ms = Some(window_start + self.slide_ms);
            // Panes that no later window needs.
            let keep_from = window_start + self.slide_ms;
            self.frozen.retain(|start, _| *start >= keep_from);
        }
        Ok(results)
    }

    fn merge_window(&mut self, window_start: i64, window_end: i64) -> Result<WindowResult> {
        let mut groups = Groups::new();
        let mut accumulators: Vec<Box<dyn GroupsAccumulator>> =
            self.aggregates.iter().map(AggregateSpec::accumulator).collect::<Result<_>>()?;
        for pane in self.frozen.range(window_start..window_end).map(|(_, pane)| pane) {
            let indices = groups.indices_of(&pane.keys);
            let total = groups.keys.len();
            for (accumulator, state) in accumulators.iter_mut().zip(&pane.states) {
                accumulator.merge_batch(state, &indices, total)?;
            }
        }
        let aggregate_columns =
            accumulators.iter_mut().map(|a| a.evaluate(EmitTo::All)).collect::<Result<Vec<_>, _>>()?;
        let key_columns = self.converter.convert_rows(groups.keys.iter().map(|k| k.row()))?;
        Ok(WindowResult { window_start_ms: window_start, window_end_ms: window_end, key_columns, aggregate_columns })
    }

    /// The state of every pane, for a checkpoint. Live panes keep running: their state is
    /// taken and merged back into fresh accumulators.
    pub fn snapshot(&mut self) -> Result<AggregatorSnapshot> {
        let mut panes = Vec::with_capacity(self.live.len() + self.frozen.len());
        for (start, pane) in self.frozen.iter() {
            let keys = self.converter.convert_rows(pane.keys.iter().map(|k| k.row()))?;
            let end_ms = start + self.slide_ms;
            panes.push(PaneSnapshot { start_ms: *start, end_ms, live: false, keys, states: pane.states.clone() });
        }
        let starts: Vec<i64> = self.live.keys().copied().collect();
        for start in starts {
            let pane = self.live.get_mut(&start).expect("listed above");
            let states = pane.accumulators.iter_mut().map(|a| a.state(EmitTo::All)).collect::<Result<Vec<_>, _>>()?;
            let mut fresh: Vec<Box<dyn GroupsAccumulator>> =
                self.aggregates.iter().map(AggregateSpec::accumulator).collect::<Result<_>>()?;
            let indices: Vec<usize> = (0..pane.groups.keys.len()).collect();
            for (accumulator, state) in fresh.iter_mut().zip(&states) {
                accumulator.merge_batch(state, &indices, indices.len())?;
            }
            pane.accumulators = fresh;
            let keys = self.converter.convert_rows(pane.groups.keys.iter().map(|k| k.row()))?;
            panes.push(PaneSnapshot { start_ms: start, end_ms: start + self.slide_ms, live: true, keys, states });
        }
        Ok(AggregatorSnapshot { next_window_start_ms: self.next_window_start_ms, emitting: self.emitting, panes })
    }

    /// Replaces every pane with a snapshot's (a restart from a checkpoint).
    pub fn restore(&mut self, snapshot: AggregatorSnapshot) -> Result<()> {
        self.live.clear();
        self.frozen.clear();
        self.next_window_start_ms = snapshot.next_window_start_ms;
        self.emitting = snapshot.emitting;
        for pane in snapshot.panes {
            let rows = self.converter.convert_columns(&pane.keys)?;
            let keys: Vec<OwnedRow> = rows.iter().map(|row| row.owned()).collect();
            if !pane.live {
                self.frozen.insert(pane.start_ms, FrozenPane { keys, states: pane.states });
                continue;
            }
            let mut accumulators: Vec<Box<dyn GroupsAccumulator>> =
                self.aggregates.iter().map(AggregateSpec::accumulator).collect::<Result<_>>()?;
            let indices: Vec<usize> = (0..keys.len()).collect();
            for (accumulator, state) in accumulators.iter_mut().zip(&pane.states) {
                accumulator.merge_batch(state, &indices, indices.len())?;
            }
            let mut groups = Groups::new();
            groups.indices_of(&keys);
            self.live.insert(pane.start_ms, LivePane { groups, accumulators });
        }
        Ok(())
    }

    /// Live and frozen panes (for tests and metrics).
    pub fn pane_count(&self) -> usize {
        self.live.len() + self.frozen.len()
    }
}
