//! Weir Connect: the worker that moves records between external systems and topics.
//!
//! Empty until the Connect issue lands: it will hold the `Record`, `Source` and `Sink`
//! traits and the worker runtime (DESIGN.md §4). It depends on `weir-broker` only.
