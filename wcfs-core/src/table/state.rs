//! A path's CRDT state packed into machine words.
//!
//! One context entry — (replica index, seq, live kind or dead) — packs into a `u64`:
//! replica index in bits 63..48, seq in 47..2, kind in 1..0 (0 dead, 1 Rw, 2 Opaque,
//! 3 Whiteout). Nearly every path has exactly one entry (its last mutation), stored inline in
//! the node; a path with more goes to an overflow list. Replica index `0xFFFF` marks an
//! overflow reference, so at most 65,535 replicas can ever write to one table.

use crate::dot::{Kind, MAX_SEQ};

/// Replica index reserved to mark an overflow reference.
pub(crate) const OVERFLOW: u16 = 0xFFFF;

/// One packed entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Packed(pub u64);

impl Packed {
    #[inline]
    pub fn new(ridx: u16, seq: u64, live: Option<Kind>) -> Packed {
        debug_assert!(ridx != OVERFLOW && (1..=MAX_SEQ).contains(&seq));
        let k = match live {
            None => 0,
            Some(Kind::Rw) => 1,
            Some(Kind::Opaque) => 2,
            Some(Kind::Whiteout) => 3,
        };
        Packed(((ridx as u64) << 48) | (seq << 2) | k)
    }
    #[inline]
    pub fn ridx(self) -> u16 {
        (self.0 >> 48) as u16
    }
    #[inline]
    pub fn seq(self) -> u64 {
        (self.0 >> 2) & MAX_SEQ
    }
    #[inline]
    pub fn live(self) -> Option<Kind> {
        match self.0 & 3 {
            0 => None,
            1 => Some(Kind::Rw),
            2 => Some(Kind::Opaque),
            _ => Some(Kind::Whiteout),
        }
    }
    #[inline]
    pub fn dead(self) -> Packed {
        Packed(self.0 & !3)
    }
}

/// Out-of-line entry lists for paths with more than one context entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overflow {
    pub lists: Vec<Vec<Packed>>,
    pub free: Vec<u32>,
}

impl Overflow {
    pub fn heap_bytes(&self) -> usize {
        self.lists.capacity() * size_of::<Vec<Packed>>()
            + self.lists.iter().map(|l| l.capacity() * 8).sum::<usize>()
            + self.free.capacity() * 4
    }
}

/// A node's entries, sorted by replica index: the inline one or a borrowed overflow list.
pub(crate) enum Entries<'a> {
    Inline([Packed; 1]),
    List(&'a [Packed]),
}

impl std::ops::Deref for Entries<'_> {
    type Target = [Packed];
    fn deref(&self) -> &[Packed] {
        match self {
            Entries::Inline(a) => a,
            Entries::List(l) => l,
        }
    }
}

/// Reads a node's state word.
#[inline]
pub(crate) fn entries(word: u64, of: &Overflow) -> Entries<'_> {
    if word == 0 {
        return Entries::List(&[]);
    }
    let p = Packed(word);
    if p.ridx() == OVERFLOW {
        return Entries::List(&of.lists[(word & 0xFFFF_FFFF) as usize]);
    }
    Entries::Inline([p])
}

/// Stores `list` (sorted by replica index) as a node's state word, reusing or freeing the
/// overflow slot that `old` referenced.
pub(crate) fn store(old: u64, list: &[Packed], of: &mut Overflow) -> u64 {
    debug_assert!(list.windows(2).all(|w| w[0].ridx() < w[1].ridx()));
    let old_slot =
        (old != 0 && Packed(old).ridx() == OVERFLOW).then_some((old & 0xFFFF_FFFF) as u32);
    match list.len() {
        0 | 1 => {
            if let Some(s) = old_slot {
                of.lists[s as usize] = Vec::new();
                of.free.push(s);
            }
            list.first().map_or(0, |p| p.0)
        }
        _ => {
            let slot = match old_slot {
                Some(s) => s,
                None => match of.free.pop() {
                    Some(s) => s,
                    None => {
                        of.lists.push(Vec::new());
                        (of.lists.len() - 1) as u32
                    }
                },
            };
            let v = &mut of.lists[slot as usize];
            v.clear();
            v.extend_from_slice(list);
            ((OVERFLOW as u64) << 48) | slot as u64
        }
    }
}
