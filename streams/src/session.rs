//! Session windows: per group key, rows closer than `gap` to each other form one session
//! `[first row, last row + gap)`; a row that bridges two sessions merges them. A session is
//! emitted once, when the watermark passes its end.
//!
//! State is partial aggregate state, never raw rows: each micro-batch aggregates its rows
//! per (key, session) in fresh DataFusion accumulators and hands each session a one-row
//! state fragment (`state()`); merging sessions concatenates fragment lists; a session with
//! many fragments is compacted (`merge_batch` then `state()`), and closing one merges its
//! fragments and evaluates.
//!
//! A row whose own session `[t, t + gap)` already ended under the watermark is late, even if
//! it would have reached into a session still open (a simplification of Flink's rule).

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use crate::error::{Result, StreamsError};
use crate::window::{AggregateSpec, AggregatorSnapshot, PaneSnapshot, WindowResult};

/// Most sessions open at once per query (memory bound).
pub const SESSIONS_MAX: usize = 1_000_000;
/// Fragments a session keeps before they are compacted into one.
const FRAGMENTS_MAX: usize = 16;

struct Session {
    start_ms: i64,
    end_ms: i64,
    /// Per aggregate, one-row state arrays, one entry per fragment.
    fragments: Vec<Vec<ArrayRef>>,
}

/// The sessions of one query.
pub struct SessionAggregator {
    gap_ms: i64,
    aggregates: Vec<AggregateSpec>,
    converter: RowConverter,
    /// GROUP BY only the window columns: every row has the same (constant) key.
    keyless: bool,
    /// Open sessions per key, by start.
    sessions: HashMap<OwnedRow, BTreeMap<i64, Session>>,
    open: usize,
}

impl SessionAggregator {
    pub fn new(gap_ms: i64, key_fields: Vec<SortField>, aggregates: Vec<AggregateSpec>) -> Result<Self> {
        assert!(gap_ms > 0, "a session gap is positive");
        Ok(SessionAggregator {
            gap_ms,
            aggregates,
            keyless: key_fields.is_empty(),
            converter: RowConverter::new(crate::window::key_fields_or_constant(key_fields))?,
            sessions: HashMap::new(),
            open: 0,
        })
    }

    pub fn gap_ms(&self) -> i64 {
        self.gap_ms
    }

    /// Whether a row at `time_ms` is late under `watermark_ms`.
    pub fn is_late(&self, time_ms: i64, watermark_ms: Option<i64>) -> bool {
        watermark_ms.is_some_and(|watermark| time_ms + self.gap_ms <= watermark)
    }

    /// Adds rows: `times[i]` is row i's event time, `key_columns` its group keys.
    pub fn update(
        &mut self,
        times: &TimestampMillisecondArray,
        key_columns: &[ArrayRef],
        arguments: &[(Vec<ArrayRef>, Option<BooleanArray>)],
    ) -> Result<()> {
        let key_columns = crate::window::key_columns_or_constant(self.keyless, key_columns, times.len());
        let keys = self.converter.convert_columns(&key_columns)?;
        // Place every row in a session (merging as needed); remember (key, session start).
        let mut order: Vec<usize> = (0..times.len()).filter(|row| times.is_valid(*row)).collect();
        order.sort_by_key(|row| times.value(*row));
        let mut placed: Vec<Option<(OwnedRow, i64)>> = vec![None; times.len()];
        for row in order {
            let time = times.value(row);
            let key = keys.row(row).owned();
            let start = self.place(&key, time)?;
            placed[row] = Some((key, start));
        }
        // Sessions may have merged after a row was placed: resolve each to its final start.
        let mut group_of: HashMap<(OwnedRow, i64), u32> = HashMap::new();
        let mut groups: Vec<(OwnedRow, i64)> = Vec::new();
        let mut rows = Vec::new();
        let mut indices = Vec::new();
        for (row, place) in placed.into_iter().enumerate() {
            let Some((key, _)) = place else { continue };
            let time = times.value(row);
            let start = self.session_containing(&key, time).expect("a placed row has a session");
            let next = groups.len() as u32;
            let group = *group_of.entry((key.clone(), start)).or_insert_with(|| {
                groups.push((key, start));
                next
            });
            rows.push(row as u32);
            indices.push(group as usize);
        }
        if groups.is_empty() {
            return Ok(());
        }
        let take = UInt32Array::from(rows);
        let mut fragments: Vec<Vec<ArrayRef>> = Vec::with_capacity(self.aggregates.len());
        for (spec, (values, filter)) in self.aggregates.iter().zip(arguments) {
            let mut accumulator = spec.accumulator()?;
            let values: Vec<ArrayRef> = values
                .iter()
                .map(|v| datafusion::arrow::compute::take(v.as_ref(), &take, None))
                .collect::<Result<_, _>>()?;
            let filter = match filter {
                Some(filter) => {
                    let taken = datafusion::arrow::compute::take(filter, &take, None)?;
                    Some(datafusion::arrow::array::as_boolean_array(&taken).clone())
                }
                None => None,
            };
            accumulator.update_batch(&values, &indices, filter.as_ref(), groups.len())?;
            fragments.push(accumulator.state(EmitTo::All)?);
        }
        for (group, (key, start)) in groups.into_iter().enumerate() {
            let fragment: Vec<ArrayRef> =
                fragments.iter().flat_map(|state| state.iter().map(|a| a.slice(group, 1))).collect();
            let session = self.sessions.get_mut(&key).and_then(|s| s.get_mut(&start)).expect("resolved above");
            session.fragments.push(fragment);
            if session.fragments.len() > FRAGMENTS_MAX {
                let compacted = compact(&self.aggregates, &session.fragments)?;
                session.fragments = vec![compacted];
            }
        }
        Ok(())
    }

    /// Puts `time` in a session of `key`, creating or merging sessions; returns its start.
    fn place(&mut self, key: &OwnedRow, time: i64) -> Result<i64> {
        let gap = self.gap_ms;
        let sessions = self.sessions.entry(key.clone()).or_default();
        // Sessions overlapping [time, time + gap).
        let overlapping: Vec<i64> = sessions
            .range(..time + gap)
            .filter(|(_, session)| session.end_ms > time)
            .map(|(start, _)| *start)
            .collect();
        let (mut start, mut end, mut fragments) = (time, time + gap, Vec::new());
        for old in &overlapping {
            let session = sessions.remove(old).expect("listed above");
            start = start.min(session.start_ms);
            end = end.max(session.end_ms);
            fragments.extend(session.fragments);
        }
        if overlapping.is_empty() {
            if self.open >= SESSIONS_MAX {
                return Err(StreamsError::Plan(format!("more than {SESSIONS_MAX} sessions open")));
            }
            self.open += 1;
        } else {
            self.open -= overlapping.len() - 1;
        }
        sessions.insert(start, Session { start_ms: start, end_ms: end, fragments });
        Ok(start)
    }

    fn session_containing(&self, key: &OwnedRow, time: i64) -> Option<i64> {
        let sessions = self.sessions.get(key)?;
        sessions.range(..=time).next_back().filter(|(_, s)| s.end_ms > time).map(|(start, _)| *start)
    }

    /// Emits every session that ends at or before `watermark_ms`, each as its own result.
    pub fn advance(&mut self, watermark_ms: i64) -> Result<Vec<WindowResult>> {
        let mut closed = Vec::new();
        for (key, sessions) in self.sessions.iter_mut() {
            let ended: Vec<i64> =
                sessions.iter().filter(|(_, s)| s.end_ms <= watermark_ms).map(|(start, _)| *start).collect();
            for start in ended {
                closed.push((key.clone(), sessions.remove(&start).expect("listed above")));
            }
        }
        self.sessions.retain(|_, sessions| !sessions.is_empty());
        self.open -= closed.len();
        closed.sort_by_key(|(_, session)| (session.end_ms, session.start_ms));
        let mut results = Vec::with_capacity(closed.len());
        for (key, session) in closed {
            let mut accumulators: Vec<Box<dyn GroupsAccumulator>> =
                self.aggregates.iter().map(AggregateSpec::accumulator).collect::<Result<_>>()?;
            merge_fragments(&self.aggregates, &mut accumulators, &session.fragments)?;
            let aggregate_columns =
                accumulators.iter_mut().map(|a| a.evaluate(EmitTo::All)).collect::<Result<Vec<_>, _>>()?;
            let key_columns = self.converter.convert_rows(std::iter::once(key.row()))?;
            results.push(WindowResult {
                window_start_ms: session.start_ms,
                window_end_ms: session.end_ms,
                key_columns,
                aggregate_columns,
            });
        }
        Ok(results)
    }

    /// Every open session, compacted to one fragment, for a checkpoint (`start_ms`, and
    /// `end_ms` in place of a pane's end).
    pub fn snapshot(&mut self) -> Result<AggregatorSnapshot> {
        let mut panes = Vec::with_capacity(self.open);
        for (key, sessions) in self.sessions.iter_mut() {
            for session in sessions.values_mut() {
                let compacted = compact(&self.aggregates, &session.fragments)?;
                session.fragments = vec![compacted.clone()];
                let keys = self.converter.convert_rows(std::iter::once(key.row()))?;
                let states = split_states(&self.aggregates, compacted)?;
                panes.push(PaneSnapshot {
                    start_ms: session.start_ms,
                    end_ms: session.end_ms,
                    live: true,
                    keys,
                    states,
                });
            }
        }
        Ok(AggregatorSnapshot { next_window_start_ms: None, emitting: false, panes })
    }

    /// Replaces every session with a snapshot's.
    pub fn restore(&mut self, snapshot: AggregatorSnapshot) -> Result<()> {
        self.sessions.clear();
        self.open = 0;
        for pane in snapshot.panes {
            let rows = self.converter.convert_columns(&pane.keys)?;
            let key = rows.row(0).owned();
            let fragment: Vec<ArrayRef> = pane.states.into_iter().flatten().collect();
            let session = Session { start_ms: pane.start_ms, end_ms: pane.end_ms, fragments: vec![fragment] };
            self.sessions.entry(key).or_default().insert(pane.start_ms, session);
            self.open += 1;
        }
        Ok(())
    }
}

/// Per aggregate, how many state columns it has.
fn state_widths(aggregates: &[AggregateSpec]) -> Result<Vec<usize>> {
    aggregates.iter().map(|a| Ok(a.function.state_fields()?.len())).collect()
}

/// A flat fragment split per aggregate.
fn split_states(aggregates: &[AggregateSpec], fragment: Vec<ArrayRef>) -> Result<Vec<Vec<ArrayRef>>> {
    let mut rest = fragment.into_iter();
    Ok(state_widths(aggregates)?.into_iter().map(|width| rest.by_ref().take(width).collect()).collect())
}

fn merge_fragments(
    aggregates: &[AggregateSpec],
    accumulators: &mut [Box<dyn GroupsAccumulator>],
    fragments: &[Vec<ArrayRef>],
) -> Result<()> {
    for fragment in fragments {
        let states = split_states(aggregates, fragment.clone())?;
        for (accumulator, state) in accumulators.iter_mut().zip(&states) {
            accumulator.merge_batch(state, &[0], 1)?;
        }
    }
    Ok(())
}

/// Fragments merged into one (flat) fragment.
fn compact(aggregates: &[AggregateSpec], fragments: &[Vec<ArrayRef>]) -> Result<Vec<ArrayRef>> {
    let mut accumulators: Vec<Box<dyn GroupsAccumulator>> =
        aggregates.iter().map(AggregateSpec::accumulator).collect::<Result<_>>()?;
    merge_fragments(aggregates, &mut accumulators, fragments)?;
    let mut flat = Vec::new();
    for accumulator in &mut accumulators {
        flat.extend(accumulator.state(EmitTo::All)?);
    }
    Ok(flat)
}
