//! Window joins: two stream tables, each through `TUMBLE` of the same size, joined within a
//! window (`… FROM TUMBLE(a, ts, size) x JOIN TUMBLE(b, ts, size) y ON … AND x.window_start =
//! y.window_start`). Each side's rows are kept per window; when the watermark (the smaller of
//! the two tables') passes a window's end, the whole query runs once over that window's
//! rows of both sides, and the rows are dropped. A join needs the rows themselves, so this
//! state is raw rows, bounded by `JOIN_ROWS_MAX`.

use std::collections::BTreeMap;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Result, StreamsError};

/// Most rows a window join keeps (both sides, every open window).
pub const JOIN_ROWS_MAX: usize = 1_000_000;

/// One side of a window join.
pub struct JoinSide {
    /// Index of its table in the job.
    pub table: usize,
    /// The window relation's slot and schema (table columns, window_start, window_end).
    pub slot: datafusion::datasource::memory::PartitionData,
    pub schema: SchemaRef,
    /// Rows per window start.
    buffer: BTreeMap<i64, Vec<RecordBatch>>,
}

impl JoinSide {
    pub fn new(table: usize, slot: datafusion::datasource::memory::PartitionData, schema: SchemaRef) -> Self {
        JoinSide { table, slot, schema, buffer: BTreeMap::new() }
    }
}

/// The state of one window-join query.
pub struct WindowJoin {
    pub size_ms: i64,
    pub sides: Vec<JoinSide>,
    /// The watermark of the last emission: windows ending at or before it are done.
    closed_through_ms: Option<i64>,
    rows: usize,
}

/// A window join's state in a checkpoint: per side, its rows per window start.
#[derive(Clone, Debug, Default)]
pub struct JoinSnapshot {
    pub closed_through_ms: Option<i64>,
    pub sides: Vec<BTreeMap<i64, RecordBatch>>,
}

impl WindowJoin {
    pub fn new(size_ms: i64, sides: Vec<JoinSide>) -> Self {
        WindowJoin { size_ms, sides, closed_through_ms: None, rows: 0 }
    }

    /// The window start of an event time.
    pub fn window_start(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.size_ms) * self.size_ms
    }

    /// Whether rows of the window starting at `start_ms` come too late (it was emitted).
    pub fn is_late(&self, start_ms: i64) -> bool {
        self.closed_through_ms.is_some_and(|closed| start_ms + self.size_ms <= closed)
    }

    /// Keeps `rows` (window relation rows) of `side`; `starts[i]` is row i's window start.
    pub fn buffer(&mut self, side: usize, rows: &RecordBatch, starts: &[i64]) -> Result<()> {
        if self.rows + rows.num_rows() > JOIN_ROWS_MAX {
            return Err(StreamsError::Plan(format!("a window join holds more than {JOIN_ROWS_MAX} rows")));
        }
        let mut by_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, start) in starts.iter().enumerate() {
            by_window.entry(*start).or_default().push(row as u32);
        }
        for (start, indices) in by_window {
            let take = UInt32Array::from(indices);
            let columns = rows
                .columns()
                .iter()
                .map(|c| datafusion::arrow::compute::take(c.as_ref(), &take, None))
                .collect::<Result<Vec<_>, _>>()?;
            let batch = RecordBatch::try_new(rows.schema(), columns)?;
            self.rows += batch.num_rows();
            self.sides[side].buffer.entry(start).or_default().push(batch);
        }
        Ok(())
    }

    /// Window starts ready at `watermark_ms` (ascending); marks them done.
    pub fn close(&mut self, watermark_ms: i64) -> Vec<i64> {
        let mut starts: Vec<i64> = self
            .sides
            .iter()
            .flat_map(|side| side.buffer.keys().copied())
            .filter(|start| start + self.size_ms <= watermark_ms)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        self.closed_through_ms = Some(self.closed_through_ms.map_or(watermark_ms, |c| c.max(watermark_ms)));
        starts
    }

    /// Takes a window's rows of every side (an empty batch for a side without any).
    pub fn take_window(&mut self, start_ms: i64) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(self.sides.len());
        for side in &mut self.sides {
            let batches = side.buffer.remove(&start_ms).unwrap_or_default();
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            self.rows -= rows;
            out.push(datafusion::arrow::compute::concat_batches(&side.schema, &batches)?);
        }
        Ok(out)
    }

    pub fn snapshot(&self) -> Result<JoinSnapshot> {
        let mut sides = Vec::with_capacity(self.sides.len());
        for side in &self.sides {
            let mut windows = BTreeMap::new();
            for (start, batches) in &side.buffer {
                windows.insert(*start, datafusion::arrow::compute::concat_batches(&side.schema, batches)?);
            }
            sides.push(windows);
        }
        Ok(JoinSnapshot { closed_through_ms: self.closed_through_ms, sides })
    }

    pub fn restore(&mut self, snapshot: JoinSnapshot) -> Result<()> {
        if snapshot.sides.len() != self.sides.len() {
            return Err(StreamsError::Checkpoint("a window join's sides changed since the checkpoint".into()));
        }
        self.closed_through_ms = snapshot.closed_through_ms;
        self.rows = 0;
        for (side, windows) in self.sides.iter_mut().zip(snapshot.sides) {
            side.buffer.clear();
            for (start, batch) in windows {
                self.rows += batch.num_rows();
                side.buffer.insert(start, vec![batch]);
            }
        }
        Ok(())
    }
}
