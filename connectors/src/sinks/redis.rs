//! `type: redis`: records into Redis as SET, HSET, XADD, LPUSH/RPUSH or PUBLISH commands
//! (feature `redis`), DEL on tombstones.
//!
//! **Commands.** The key (the channel for PUBLISH, the stream for XADD) comes from the `key`
//! template (`"user:{{id}}"`, `"{{$key}}"`). SET stores the record's value (with `EX` when
//! `ttl_seconds` is set); HSET and XADD store the top-level fields of a JSON object in
//! document order (strings as they are, other values as JSON text; a repeated field is sent
//! each time, so HSET keeps the last; a value that is not an object becomes field `value`),
//! read as a flat field list without building a JSON tree (`fields.rs`), HSET and EXPIRE in
//! one script when `ttl_seconds` is set; LPUSH, RPUSH and PUBLISH send the value. A tombstone (empty value) deletes the key (rendered from `$` names only, as a
//! tombstone has no fields) when `delete_on_tombstone` is on.
//!
//! **Batches.** A batch is sent as pipelines of at most `pipeline_commands_max` commands on one
//! multiplexed connection (one round trip each), not wrapped in MULTI: a command the server
//! refuses (`WRONGTYPE`, a bad argument) makes its record poison — it goes to the dead-letter
//! topic — while the others stand. Busy or loading servers, read-only replicas, cluster
//! redirections and lost connections are transient: the whole batch is sent again. SET, HSET
//! and DEL rewrite the same state on a retry (the store holds each record once); LPUSH, RPUSH,
//! XADD and PUBLISH are at-least-once.
//!
//! **Cluster-safe design.** Every command touches exactly one key and nothing relies on two
//! keys sharing a slot, so a cluster client can split a pipeline by slot without changing
//! semantics; this sink itself speaks to one node (a cluster node answers `MOVED`, which is
//! retried and then reported).

mod config;
mod fields;
mod sink;

pub use config::{RedisCommand, RedisSinkConfig};
pub use sink::{RedisSink, RedisSinkError};
