//! Buffered windows: for queries the pane operator cannot split — a join of two window
//! relations (`… FROM TUMBLE(a, ts, size) x JOIN TUMBLE(b, ts, size) y ON … AND
//! x.window_start = y.window_start`), or nested aggregates over one (Nexmark q5's hot items)
//! — each window relation's rows are kept per pane; when the watermark (the smallest of the
//! tables') passes a window's end, the whole query runs once over that window's rows, with
//! `window_start` / `window_end` set to the window's bounds. Rows are dropped once every
//! window holding them ran. This state is raw rows (a join needs them), bounded by
//! `JOIN_ROWS_MAX`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Result, StreamsError};

/// Most rows a query's buffered windows keep (every relation, every open pane).
pub const JOIN_ROWS_MAX: usize = 1_000_000;

/// One window relation of a buffered query.
pub struct JoinSide {
    /// Index of its table in the job.
    pub table: usize,
    /// The window relation's slot and schema (table columns, window_start, window_end).
    pub slot: crate::slot::Slot,
    pub schema: SchemaRef,
    /// Rows per pane start.
    buffer: BTreeMap<i64, Vec<RecordBatch>>,
}

impl JoinSide {
    pub fn new(table: usize, slot: crate::slot::Slot, schema: SchemaRef) -> Self {
        JoinSide { table, slot, schema, buffer: BTreeMap::new() }
    }
}

/// The buffered windows of one query.
pub struct WindowJoin {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub sides: Vec<JoinSide>,
    /// The watermark of the last emission: windows ending at or before it ran.
    closed_through_ms: Option<i64>,
    rows: usize,
}

/// A buffered query's state in a checkpoint: per relation, its rows per pane start.
#[derive(Clone, Debug, Default)]
pub struct JoinSnapshot {
    pub closed_through_ms: Option<i64>,
    pub sides: Vec<BTreeMap<i64, RecordBatch>>,
}

impl WindowJoin {
    pub fn new(size_ms: i64, slide_ms: i64, sides: Vec<JoinSide>) -> Self {
        assert!(slide_ms > 0 && size_ms % slide_ms == 0, "window size must be a multiple of the slide");
        WindowJoin { size_ms, slide_ms, sides, closed_through_ms: None, rows: 0 }
    }

    /// The pane of an event time.
    pub fn pane_start(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.slide_ms) * self.slide_ms
    }

    /// Whether rows of the pane starting at `pane_ms` come too late: every window holding it
    /// (the last one starts at the pane) already ran.
    pub fn is_late(&self, pane_ms: i64) -> bool {
        self.closed_through_ms.is_some_and(|closed| pane_ms + self.size_ms <= closed)
    }

    /// Keeps `rows` (window relation rows) of `side`; `panes[i]` is row i's pane start.
    pub fn buffer(&mut self, side: usize, rows: &RecordBatch, panes: &[i64]) -> Result<()> {
        if self.rows + rows.num_rows() > JOIN_ROWS_MAX {
            return Err(StreamsError::Plan(format!("a buffered window query holds more than {JOIN_ROWS_MAX} rows")));
        }
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, pane) in panes.iter().enumerate() {
            by_pane.entry(*pane).or_default().push(row as u32);
        }
        for (pane, indices) in by_pane {
            let take = UInt32Array::from(indices);
            let columns = rows
                .columns()
                .iter()
                .map(|c| datafusion::arrow::compute::take(c.as_ref(), &take, None))
                .collect::<Result<Vec<_>, _>>()?;
            let batch = RecordBatch::try_new(rows.schema(), columns)?;
            self.rows += batch.num_rows();
            self.sides[side].buffer.entry(pane).or_default().push(batch);
        }
        Ok(())
    }

    /// Starts of the windows ready at `watermark_ms` that hold rows and have not run yet
    /// (ascending); marks everything up to the watermark done.
    pub fn close(&mut self, watermark_ms: i64) -> Vec<i64> {
        let (size, slide) = (self.size_ms, self.slide_ms);
        let mut starts = Vec::new();
        for pane in self.sides.iter().flat_map(|side| side.buffer.keys().copied()) {
            // Windows holding the pane: starts pane - size + slide ..= pane.
            let mut start = pane - size + slide;
            while start <= pane {
                let end = start + size;
                if end <= watermark_ms && self.closed_through_ms.is_none_or(|closed| end > closed) {
                    starts.push(start);
                }
                start += slide;
            }
        }
        starts.sort_unstable();
        starts.dedup();
        self.closed_through_ms = Some(self.closed_through_ms.map_or(watermark_ms, |c| c.max(watermark_ms)));
        starts
    }

    /// A window's rows of every relation (empty for one without any), with the window's
    /// bounds in `window_start` / `window_end`.
    pub fn window_rows(&self, start_ms: i64) -> Result<Vec<RecordBatch>> {
        let end_ms = start_ms + self.size_ms;
        let mut out = Vec::with_capacity(self.sides.len());
        for side in &self.sides {
            let batches: Vec<&RecordBatch> = side.buffer.range(start_ms..end_ms).flat_map(|(_, b)| b).collect();
            let rows = datafusion::arrow::compute::concat_batches(&side.schema, batches)?;
            let count = rows.num_rows();
            let mut columns = rows.columns().to_vec();
            let last = columns.len();
            columns[last - 2] = Arc::new(TimestampMillisecondArray::from(vec![start_ms; count]));
            columns[last - 1] = Arc::new(TimestampMillisecondArray::from(vec![end_ms; count]));
            out.push(RecordBatch::try_new(side.schema.clone(), columns)?);
        }
        Ok(out)
    }

    /// Drops panes every window of which has run (the last one ends at pane + size).
    pub fn drop_done(&mut self) {
        let Some(closed) = self.closed_through_ms else { return };
        let size = self.size_ms;
        for side in &mut self.sides {
            let done: Vec<i64> = side.buffer.keys().copied().filter(|pane| pane + size <= closed).collect();
            for pane in done {
                let rows: usize = side.buffer.remove(&pane).unwrap_or_default().iter().map(RecordBatch::num_rows).sum();
                self.rows -= rows;
            }
        }
    }

    pub fn snapshot(&self) -> Result<JoinSnapshot> {
        let mut sides = Vec::with_capacity(self.sides.len());
        for side in &self.sides {
            let mut panes = BTreeMap::new();
            for (pane, batches) in &side.buffer {
                panes.insert(*pane, datafusion::arrow::compute::concat_batches(&side.schema, batches)?);
            }
            sides.push(panes);
        }
        Ok(JoinSnapshot { closed_through_ms: self.closed_through_ms, sides })
    }

    pub fn restore(&mut self, snapshot: JoinSnapshot) -> Result<()> {
        if snapshot.sides.len() != self.sides.len() {
            return Err(StreamsError::Checkpoint("a buffered query's relations changed since the checkpoint".into()));
        }
        self.closed_through_ms = snapshot.closed_through_ms;
        self.rows = 0;
        for (side, panes) in self.sides.iter_mut().zip(snapshot.sides) {
            side.buffer.clear();
            for (pane, batch) in panes {
                self.rows += batch.num_rows();
                side.buffer.insert(pane, vec![batch]);
            }
        }
        Ok(())
    }
}
