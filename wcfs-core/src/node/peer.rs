//! What a node knows about each peer: its identity, the version vector from its last digest
//! (for GC and for ranking peers by need) and how many bytes wait for it in our outbound queue.

use std::time::Duration;

use super::membership::Identity;
use crate::table::VersionVector;

/// Per-peer sync state.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub id: Identity,
    /// The peer's version vector from its last digest, `None` until one arrives.
    pub vv: Option<VersionVector>,
    /// How far behind us the peer was at its last digest (sum of version vector entries).
    pub behind: u64,
    /// Bytes queued for this peer and not yet polled by the driver.
    pub queued: usize,
    /// When we last started a snapshot transfer to it.
    pub snap_started: Option<Duration>,
}

impl Peer {
    pub fn new(id: Identity) -> Peer {
        Peer {
            id,
            vv: None,
            behind: u64::MAX,
            queued: 0,
            snap_started: None,
        }
    }

    /// Whether `n` more bytes fit under the queue bound `cap` (an empty queue always takes
    /// one message, so a message larger than the bound is not refused forever).
    pub fn fits(&self, n: usize, cap: usize) -> bool {
        self.queued == 0 || self.queued + n <= cap
    }
}
