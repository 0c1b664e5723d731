//! The WCFS FUSE union: an RO branch and a shared RW branch, merged as the translation table
//! says (see DESIGN.md, "The FUSE union").
//!
//! [`mount`] serves the union on background threads and returns a [`MountGuard`]; the
//! guard's [`Invalidator`] is how the node runtime reports remote table changes, and its
//! [`RwStats`] count the syscalls made on the RW branch per operation type.

mod branch;
mod fs;
mod inode;
mod lock;
mod mount;
pub mod rebuild;
mod refresh;
mod stats;

pub use fs::{FsConfig, MAX_USER_NAME, WH_OPAQUE, WH_PREFIX};
pub use mount::{
    INVALIDATION_QUEUE, Invalidator, MountConfig, MountError, MountGuard, lazy_unmount, mount,
};
pub use stats::{OpKind, RwStats};
