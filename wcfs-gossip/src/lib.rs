//! WCFS node runtime: drives `wcfs-core` and owns the persistence files.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fsutil;
pub mod journal;
pub mod metrics;
pub mod runtime;
pub mod store;
pub mod tls;
pub mod transport;
