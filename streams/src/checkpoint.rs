//! Job checkpoints: input offsets, watermarks and window state saved together in one file,
//! replaced atomically (temp file, fsync, rename, fsync of the directory).
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic      8 bytes   "WEIRCKP1"
//! meta_len   u64       then meta_len bytes of JSON (`CheckpointMeta`)
//! per query with window state, in meta order:
//!   ipc_len  u64       then ipc_len bytes: an Arrow IPC stream, one batch per pane
//!                      (key columns, then each aggregate's state columns)
//! per window join, per side, in meta order:
//!   ipc_len  u64       then an Arrow IPC stream, one batch of rows per open window
//! crc32c     u32       over everything after the magic
//! ```
//!
//! A file that fails its CRC or does not parse is an error naming it — a job never starts
//! from a damaged checkpoint silently.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StreamsError};
use crate::job::{JobSnapshot, StateLayout};
use crate::window::{AggregatorSnapshot, PaneSnapshot};

const MAGIC: &[u8; 8] = b"WEIRCKP1";
/// Largest checkpoint file read back.
pub const CHECKPOINT_BYTES_MAX: u64 = 4 << 30;

/// Where a job resumes: per source topic and queue, the next offset to read; per sink topic
/// and queue, the end offset when the checkpoint was taken (results after it may be replays).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub source: BTreeMap<String, BTreeMap<u32, u64>>,
    pub sink_end: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Result ids already in the output topics (before `sink_end`) that the replay has not
    /// produced again yet: still to be skipped after another restart.
    #[serde(default)]
    pub replayed_pending: std::collections::BTreeSet<String>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    job: String,
    /// A hash of the job's parsed SQL: a checkpoint of other queries is refused.
    #[serde(default)]
    sql_fingerprint: String,
    offsets: Offsets,
    max_event_ms: Vec<BTreeMap<u32, i64>>,
    #[serde(default)]
    watermark_floor_ms: Vec<Option<i64>>,
    queries: Vec<Option<QueryMeta>>,
    /// Per query: a window join's emitted-through watermark and, per side, the window starts
    /// of its IPC batches (which follow the window operators' blocks, one block per side).
    #[serde(default)]
    joins: Vec<Option<JoinMeta>>,
}

#[derive(Serialize, Deserialize)]
struct JoinMeta {
    closed_through_ms: Option<i64>,
    windows: Vec<Vec<i64>>,
}

#[derive(Serialize, Deserialize)]
struct QueryMeta {
    next_window_start_ms: Option<i64>,
    emitting: bool,
    /// (pane start, pane end, live) in the order of the IPC batches.
    panes: Vec<(i64, i64, bool)>,
}

/// The checkpoint file of `job` under `dir`.
pub fn path(dir: &Path, job: &str) -> PathBuf {
    dir.join(format!("{job}.checkpoint"))
}

/// Writes the checkpoint atomically.
pub fn save(file: &Path, job: &str, sql_fingerprint: &str, offsets: &Offsets, snapshot: &JobSnapshot) -> Result<()> {
    let failed = |reason: String| StreamsError::Checkpoint(format!("{}: {reason}", file.display()));
    let meta = CheckpointMeta {
        job: job.to_string(),
        sql_fingerprint: sql_fingerprint.to_string(),
        offsets: offsets.clone(),
        max_event_ms: snapshot.max_event_ms.clone(),
        watermark_floor_ms: snapshot.watermark_floor_ms.clone(),
        queries: snapshot
            .aggregators
            .iter()
            .map(|state| {
                state.as_ref().map(|state| QueryMeta {
                    next_window_start_ms: state.next_window_start_ms,
                    emitting: state.emitting,
                    panes: state.panes.iter().map(|p| (p.start_ms, p.end_ms, p.live)).collect(),
                })
            })
            .collect(),
        joins: snapshot
            .joins
            .iter()
            .map(|join| {
                join.as_ref().map(|join| JoinMeta {
                    closed_through_ms: join.closed_through_ms,
                    windows: join.sides.iter().map(|side| side.keys().copied().collect()).collect(),
                })
            })
            .collect(),
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| failed(e.to_string()))?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&meta);
    for state in snapshot.aggregators.iter().flatten() {
        let ipc = panes_to_ipc(&state.panes)?;
        bytes.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&ipc);
    }
    for join in snapshot.joins.iter().flatten() {
        for side in &join.sides {
            let ipc = batches_to_ipc(side.values())?;
            bytes.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&ipc);
        }
    }
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes[MAGIC.len()..]) as u32;
    bytes.extend_from_slice(&crc.to_le_bytes());
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed(format!("cannot create the directory: {e}")))?;
    }
    weir_broker::storage::metadata::write_atomic(file, &bytes).map_err(|e| failed(e.to_string()))
}

/// Reads a checkpoint; `None` when there is none. `layout` is `Job::state_layout`.
#[allow(clippy::type_complexity)]
pub fn load(
    file: &Path,
    job: &str,
    sql_fingerprint: &str,
    layout: &[Option<StateLayout>],
) -> Result<Option<(Offsets, JobSnapshot)>> {
    let damaged = |reason: String| StreamsError::Checkpoint(format!("{} is damaged: {reason}", file.display()));
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StreamsError::Checkpoint(format!("cannot read {}: {error}", file.display()))),
    };
    if bytes.len() as u64 > CHECKPOINT_BYTES_MAX || bytes.len() < MAGIC.len() + 12 || &bytes[..8] != MAGIC {
        return Err(damaged("not a checkpoint file".into()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &body[MAGIC.len()..]) as u32 != expected {
        return Err(damaged("CRC mismatch".into()));
    }
    let mut at = MAGIC.len();
    let take = |at: &mut usize| -> Result<&[u8]> {
        let length = body.get(*at..*at + 8).ok_or_else(|| damaged("truncated".into()))?;
        let length = u64::from_le_bytes(length.try_into().expect("8 bytes")) as usize;
        let start = *at + 8;
        let part = body.get(start..start.saturating_add(length)).ok_or_else(|| damaged("truncated".into()))?;
        *at = start + length;
        Ok(part)
    };
    let meta: CheckpointMeta = serde_json::from_slice(take(&mut at)?).map_err(|e| damaged(e.to_string()))?;
    if meta.job != job {
        return Err(damaged(format!("it belongs to job {:?}", meta.job)));
    }
    if meta.sql_fingerprint != sql_fingerprint {
        return Err(StreamsError::Checkpoint(format!(
            "{}: the job's SQL changed since the checkpoint (its window state would not fit); delete it to start over",
            file.display()
        )));
    }
    if meta.queries.len() != layout.len() {
        return Err(StreamsError::Checkpoint(format!(
            "{}: the job's queries changed since the checkpoint; delete it to start over",
            file.display()
        )));
    }
    let mut aggregators = Vec::with_capacity(meta.queries.len());
    for (query, shape) in meta.queries.into_iter().zip(layout) {
        let (query, StateLayout { keys, states }) = match (query, shape) {
            (None, None) => {
                aggregators.push(None);
                continue;
            }
            (Some(query), Some(shape)) => (query, shape),
            _ => {
                return Err(StreamsError::Checkpoint(format!(
                    "{}: the job's queries changed since the checkpoint; delete it to start over",
                    file.display()
                )));
            }
        };
        let batches = ipc_to_batches(take(&mut at)?).map_err(|e| damaged(e.to_string()))?;
        if batches.len() != query.panes.len() {
            return Err(damaged(format!("{} pane batches for {} panes", batches.len(), query.panes.len())));
        }
        let mut panes = Vec::with_capacity(batches.len());
        for ((start_ms, end_ms, live), batch) in query.panes.into_iter().zip(batches) {
            let columns = batch.columns();
            if columns.len() != keys + states.iter().sum::<usize>() {
                return Err(StreamsError::Checkpoint(format!(
                    "{}: the job's aggregates changed since the checkpoint; delete it to start over",
                    file.display()
                )));
            }
            let mut rest = &columns[*keys..];
            let mut pane_states = Vec::with_capacity(states.len());
            for count in states {
                pane_states.push(rest[..*count].to_vec());
                rest = &rest[*count..];
            }
            panes.push(PaneSnapshot { start_ms, end_ms, live, keys: columns[..*keys].to_vec(), states: pane_states });
        }
        aggregators.push(Some(AggregatorSnapshot {
            next_window_start_ms: query.next_window_start_ms,
            emitting: query.emitting,
            panes,
        }));
    }
    let mut joins = Vec::with_capacity(meta.joins.len());
    for join in meta.joins {
        let Some(join) = join else {
            joins.push(None);
            continue;
        };
        let mut sides = Vec::with_capacity(join.windows.len());
        for starts in join.windows {
            let batches = ipc_to_batches(take(&mut at)?).map_err(|e| damaged(e.to_string()))?;
            if batches.len() != starts.len() {
                return Err(damaged(format!("{} join batches for {} windows", batches.len(), starts.len())));
            }
            sides.push(starts.into_iter().zip(batches).collect());
        }
        joins.push(Some(crate::join::JoinSnapshot { closed_through_ms: join.closed_through_ms, sides }));
    }
    let snapshot = JobSnapshot {
        max_event_ms: meta.max_event_ms,
        aggregators,
        watermark_floor_ms: meta.watermark_floor_ms,
        joins,
    };
    Ok(Some((meta.offsets, snapshot)))
}

fn panes_to_ipc(panes: &[PaneSnapshot]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let Some(first) = panes.first() else { return Ok(out) };
    let columns = |pane: &PaneSnapshot| -> Vec<ArrayRef> {
        pane.keys.iter().chain(pane.states.iter().flatten()).cloned().collect()
    };
    let fields: Vec<Field> = columns(first)
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    for pane in panes {
        writer.write(&RecordBatch::try_new(schema.clone(), columns(pane))?)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// Batches of one schema (theirs) as an IPC stream; nothing for none.
fn batches_to_ipc<'a>(batches: impl Iterator<Item = &'a RecordBatch>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut batches = batches.peekable();
    let Some(first) = batches.peek() else { return Ok(out) };
    let schema = first.schema();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn ipc_to_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// A fingerprint of a job's parsed SQL (tables, queries, windows; comments and spacing do
/// not count).
pub fn sql_fingerprint(sql: &crate::sql::JobSql) -> String {
    let mut text = format!("{:?}", sql.tables);
    for insert in &sql.inserts {
        let query: Vec<&str> = insert.query.split_whitespace().collect();
        text.push_str(&format!("|{}|{}|{:?}", insert.topic, query.join(" "), insert.windows));
    }
    format!("{:08x}", crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, text.as_bytes()) as u32)
}
