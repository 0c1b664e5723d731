//! The dot index: per replica, every seen dot above the GC floor with the node of its path,
//! sorted by seq. Anti-entropy scans it from a peer's version vector; GC drains it from the
//! front. A dot whose path has since moved on (a later dot superseded it) stays as an alias of
//! the path, so peers that missed it can still account for it.

use std::collections::VecDeque;

use super::tree::NodeId;

#[derive(Clone, Debug, Default)]
pub(crate) struct DotIndex {
    per_replica: Vec<VecDeque<(u64, NodeId)>>,
}

pub(crate) type Iter<'a> = std::iter::Copied<std::collections::vec_deque::Iter<'a, (u64, NodeId)>>;

impl DotIndex {
    pub fn add_replica(&mut self) {
        self.per_replica.push(VecDeque::new());
    }

    /// Adds a newly seen dot. Dots mostly arrive in order; a late one is inserted in place.
    pub fn push(&mut self, ridx: u16, seq: u64, id: NodeId) {
        let q = &mut self.per_replica[ridx as usize];
        match q.back() {
            None => q.push_back((seq, id)),
            Some(&(last, _)) if last < seq => q.push_back((seq, id)),
            _ => {
                let at = q.partition_point(|&(s, _)| s < seq);
                debug_assert!(
                    q.get(at).is_none_or(|&(s, _)| s != seq),
                    "dot indexed twice"
                );
                q.insert(at, (seq, id));
            }
        }
    }

    /// Removes the dots of replica `ridx` at or below `floor`, collecting their nodes.
    pub fn drain_upto(&mut self, ridx: usize, floor: u64, out: &mut Vec<NodeId>) {
        let q = &mut self.per_replica[ridx];
        while let Some(&(s, id)) = q.front() {
            if s > floor {
                break;
            }
            out.push(id);
            q.pop_front();
        }
        if q.capacity() > 64 && q.len() < q.capacity() / 4 {
            q.shrink_to(q.len() * 2);
        }
    }

    /// Dots of replica `ridx` above `from`, in seq order.
    pub fn iter_from(&self, ridx: usize, from: u64) -> std::iter::Skip<Iter<'_>> {
        let q = &self.per_replica[ridx];
        let at = q.partition_point(|&(s, _)| s <= from);
        q.iter().copied().skip(at)
    }

    pub fn len(&self) -> usize {
        self.per_replica.iter().map(|q| q.len()).sum()
    }

    pub fn heap_bytes(&self) -> usize {
        self.per_replica
            .iter()
            .map(|q| q.capacity() * 16)
            .sum::<usize>()
            + self.per_replica.capacity() * 32
    }
}
