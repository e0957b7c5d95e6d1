//! Weir streams: windowed ETL SQL over topics, planned and executed with DataFusion.
//!
//! Empty until the streams issue lands (DESIGN.md §6). It depends on `weir-broker` only.
