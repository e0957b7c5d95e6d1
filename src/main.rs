//! The `weir` binary (placeholder until the CLI lands in this change series).
fn main() {}
