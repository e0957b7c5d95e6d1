//! Weir connectors: HTTP, MySQL CDC and the MySQL / Elasticsearch / Redis / Doris sinks.
//!
//! Empty until the Connect issue lands; each connector will live in its own folder behind
//! its own cargo feature (DESIGN.md §4, STYLE.md).
