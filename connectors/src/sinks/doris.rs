//! `type: doris`: records into an Apache Doris table by Stream Load (feature `doris`,
//! reqwest).
//!
//! **Loads.** A batch (sized by the pipeline's `batch:` rows, bytes and linger) becomes one
//! Stream Load per queue (`concurrency` queues at a time): `PUT /api/{db}/{table}/_stream_load` with `format: json`,
//! `strip_outer_array: true` and a JSON array of the records' objects. The frontend answers
//! `307` with a backend's address; the sink follows it itself (at most `redirects_max` hops)
//! so the credentials go along, which an HTTP client's own redirect handling drops when the
//! host changes. The load is sent with `Expect: 100-continue` (the frontend refuses a load
//! without it) and its body only after the server's `100 Continue` — or 5 s (at most half
//! of `timeout_ms`) without any answer: curl's rule with a longer wait — so the frontend, which answers 307 without reading the body and
//! resets a connection that sends one anyway, never gets it (`expect_continue.rs`: hyper's
//! HTTP/1.1 connection, since reqwest cannot wait for a `100`). Plain `http://` only.
//!
//! **Exactly once per label.** Each load's label is `<label_prefix>_<queue>_<first>_<last>`
//! (default prefix `weir_<connector, cut to 32>_<hash of the name>`)
//! (the queue offsets it carries) and is reused on every retry of that load, so Doris refuses
//! a second copy: `Label Already Exists` with a `FINISHED` load counts as success, a
//! `RUNNING` one is retried later, and `Publish Timeout` is success (the data is committed,
//! only not yet visible).
//!
//! **Across restarts: the load journal.** After a crash between a finished load and the offset
//! commit, the re-read batch may end at another offset and so get another label. Under `weir
//! run` the sink therefore saves every load range durably before its load is sent — a refused
//! load's split halves too — until the queue's committed offset passes it
//! (`<data_dir>/connect/sink-state.json`, `{"<connector>": {"doris_loads": {"<queue>":
//! [[first, last], …]}}}`; a queue's ranges are disjoint or nested). The sink loads a
//! journaled range its batch holds whole, with no range inside it, under the range's own label
//! again; for part of one, or one that was split (reloading it whole could now succeed and
//! repeat its halves' rows), it asks `GET /api/{db}/get_load_state?label=…` first:
//! `VISIBLE`/`COMMITTED` rows are there already (skipped and counted), `PRECOMMITTED` ones are
//! committed in their turn (with two-phase commit in `flush`), for `UNKNOWN`/`ABORTED` the
//! ranges inside it decide the same way and rows in none load as usual; anything else is
//! retried.
//! So a duplicate-key table gets each record once too. Limits: Doris forgets labels after
//! `label_keep_max_second` (3 days by default), and resetting the sink's offsets back over
//! journaled ranges replays nothing Doris already holds under those labels (use a new
//! `label_prefix` to replay).
//!
//! **Bad records.** Loads are sent with `strict_mode: true` (otherwise Doris loads a value
//! that does not fit its column as NULL). A record that is not a JSON object (or, in CDC
//! mode, not a change envelope) is poison before loading. A load that fails for data quality
//! (`too many filtered rows`) is split in halves, each loaded under the label of its own
//! offset range, until the refused records stand alone (about 2·log₂ n loads per bad record);
//! those are poison, carrying Doris's message and error URL. After 32 splits of one queue's
//! loads in a batch, a refused part's records are all poison (so a batch Doris refuses whole
//! costs ~64 loads per queue, not 2n). Other failures are transient.
//!
//! **CDC.** With `cdc: true`, records are Debezium envelopes: creates, reads and updates load
//! `after` with `__DORIS_DELETE_SIGN__ = 0`, deletes load `before` with `1` (header
//! `hidden_columns`; the table must be a unique-key table). Tombstones are skipped.
//!
//! **Two-phase commit** (`two_phase_commit: true`): loads are pre-committed in `write` and
//! committed in `flush` (`PUT /api/{db}/_stream_load_2pc`, `txn_operation: commit`, by
//! transaction id, or by label when a retry found its label pre-committed), so the offsets
//! are committed only after the data is visible. When Doris aborted a pre-commit, the sink
//! forgets it and the queue's later pre-commits (the next write loads them again, in order)
//! and aborts those later ones (`txn_operation: abort`), so none holds a transaction until
//! Doris's pre-commit timeout.

mod config;
mod expect_continue;
mod sink;

pub use config::DorisSinkConfig;
pub use sink::{DorisSink, DorisSinkError};
