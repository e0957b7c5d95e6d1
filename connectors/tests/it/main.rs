//! Connector tests: each connector through the conformance kit, then its own behaviour.
//! Sinks for external systems run against private servers (`weir-testsvc`) or, for
//! Elasticsearch and Doris, in-test servers built from their documented APIs.

mod doris_server;
mod doris_sink;
mod elasticsearch_server;
mod elasticsearch_sink;
mod file_sink;
mod file_source;
mod mysql_cdc;
mod mysql_sink;
mod redis_sink;
mod support;
