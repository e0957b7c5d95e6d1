//! Sources: where records enter Weir.

#[cfg(feature = "http")]
pub mod http;
