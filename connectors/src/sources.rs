//! Sources: where records enter Weir.

pub mod file;
#[cfg(feature = "http")]
pub mod http;
