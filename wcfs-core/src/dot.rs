//! Replica identities, dots and the kinds of table entries.

use std::fmt;

/// A replica's stable identity: chosen once (from the caller's RNG) when a node's data
/// directory is created, persisted, and never renewed on restart. A node whose disk is lost
/// comes back as a new replica.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u64);

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{:016x}", self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Highest sequence number a replica may use (46 bits: the table packs a dot and a kind into
/// one `u64`). At a million mutations per second this lasts two years... times a thousand.
pub const MAX_SEQ: u64 = (1 << 46) - 1;

/// One mutation's identity: the replica that made it and that replica's counter value.
/// Sequence numbers start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Dot {
    /// Who made the mutation.
    pub replica: ReplicaId,
    /// The replica's counter at the mutation, `1..=MAX_SEQ`.
    pub seq: u64,
}

/// What a live table entry says about its path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    /// The path exists on the RW branch (a directory merges with the RO one of the same name).
    Rw,
    /// The path exists on the RW branch and hides whatever the RO branch has there and below.
    Opaque,
    /// The path is deleted: hidden even though the RO branch has it.
    Whiteout,
}

impl Kind {
    /// All kinds, for tests and generators.
    pub const ALL: [Kind; 3] = [Kind::Rw, Kind::Opaque, Kind::Whiteout];
}

/// A local change to the table, as the filesystem asks for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// The path now exists on the RW branch.
    MarkRw,
    /// The path now exists on the RW branch and hides the RO branch below it.
    MarkOpaque,
    /// The path is deleted (hide the RO branch's copy).
    Whiteout,
    /// The table no longer says anything about the path (the RW copy was removed and the RO
    /// branch has nothing to hide). Leaves a tombstone until it is causally stable.
    Forget,
}

impl Op {
    /// The live kind this op leaves, `None` for [`Op::Forget`].
    pub fn kind(self) -> Option<Kind> {
        match self {
            Op::MarkRw => Some(Kind::Rw),
            Op::MarkOpaque => Some(Kind::Opaque),
            Op::Whiteout => Some(Kind::Whiteout),
            Op::Forget => None,
        }
    }
}
