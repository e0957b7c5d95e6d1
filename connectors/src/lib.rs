//! Weir connectors: sources and sinks for external systems (DESIGN.md §4).
//!
//! Today: the basic sinks (`file`, `stdout`, `blackhole`), always built, and the HTTP source
//! (feature `http`). The MySQL, Redis, Elasticsearch and Doris connectors come with their issues, each in its
//! own folder behind its own cargo feature.

pub mod sinks;
pub mod sources;
pub mod template;
