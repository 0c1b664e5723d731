//! WCFS core: the translation table CRDT, validated paths, records and their codecs, the
//! journal and snapshot formats.
//!
//! Sans-IO and deterministic, like `quinn-proto`: no async runtime, sockets, threads, clocks
//! or OS randomness. Time and randomness are passed in by the caller; files are the caller's.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod dot;
pub mod handle;
pub mod journal;
pub mod node;
pub mod path;
pub mod record;
pub mod snapshot;
pub mod table;
pub mod webgen;

pub use dot::{Dot, Kind, Op, ReplicaId};
pub use path::{PathError, WPath};
pub use record::{CtxEntry, Record};
pub use table::{
    Child, Chunk, Digest, MergeOutcome, Resolution, Shipped, Table, TableError, TableStats,
    VersionVector,
};
