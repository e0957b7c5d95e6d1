//! Connector tests: each connector through the conformance kit, then its own behaviour.

mod file_sink;
mod file_source;
