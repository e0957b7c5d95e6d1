//! Sources: where records enter Weir.

pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "mysql-cdc")]
pub mod mysql_cdc;
