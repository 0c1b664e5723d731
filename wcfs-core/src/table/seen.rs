//! What a replica has seen: per replica, a version vector entry (every dot up to it) and a dot
//! cloud (dots above it, out of order). Also the [`Digest`] that replicas exchange.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{DecodeError, Reader, Writer};
use crate::dot::{Dot, MAX_SEQ, ReplicaId};

/// Per replica, the highest seq up to which every dot has been seen. Absent means 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionVector(pub BTreeMap<ReplicaId, u64>);

impl VersionVector {
    /// The entry for `r` (0 if absent).
    pub fn get(&self, r: ReplicaId) -> u64 {
        self.0.get(&r).copied().unwrap_or(0)
    }
    /// Pointwise minimum over several vectors: what all of them have seen. A replica absent
    /// from any vector is 0 in the result (and so omitted).
    pub fn meet<'a>(vvs: impl IntoIterator<Item = &'a VersionVector>) -> VersionVector {
        let mut it = vvs.into_iter();
        let Some(first) = it.next() else {
            return VersionVector::default();
        };
        let Some(second) = it.next() else {
            return first.clone();
        };
        // Both maps are sorted by replica: walk them side by side instead of looking every
        // entry up (GC runs this over every member's vector each pass).
        let mut out: Vec<(ReplicaId, u64)> = first.0.iter().map(|(r, s)| (*r, *s)).collect();
        for v in std::iter::once(second).chain(it) {
            let mut theirs = v.0.iter().peekable();
            out.retain_mut(|(r, s)| {
                let r = *r;
                while theirs.next_if(|(tr, _)| **tr < r).is_some() {}
                let t = theirs.next_if(|(tr, _)| **tr == r).map_or(0, |(_, ts)| *ts);
                *s = (*s).min(t);
                *s > 0
            });
            if out.is_empty() {
                break;
            }
        }
        VersionVector(out.into_iter().collect())
    }
    /// Sum of entries: a cheap "how much has this replica seen" used to rank peers.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Most replicas a digest may list.
pub const MAX_DIGEST_REPLICAS: usize = 65_535;
/// Most cloud dots a digest carries; a larger cloud is truncated (which only costs redundant
/// records, never correctness).
pub const MAX_DIGEST_CLOUD: usize = 4096;

/// A replica's summary of what it has seen, sent in anti-entropy so the other side can send
/// exactly the records it lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// Everything up to these seqs is seen.
    pub vv: VersionVector,
    /// Dots above `vv` that are seen too.
    pub cloud: BTreeMap<ReplicaId, BTreeSet<u64>>,
}

impl Digest {
    /// Whether the digest's owner has seen `dot`.
    pub fn has_seen(&self, dot: Dot) -> bool {
        dot.seq <= self.vv.get(dot.replica)
            || self
                .cloud
                .get(&dot.replica)
                .is_some_and(|c| c.contains(&dot.seq))
    }

    /// Appends the encoding.
    pub fn encode(&self, w: &mut Writer) {
        w.varint(self.vv.0.len() as u64);
        for (r, s) in &self.vv.0 {
            w.u64(r.0);
            w.varint(*s);
        }
        let mut budget = MAX_DIGEST_CLOUD;
        let clouds: Vec<_> = self.cloud.iter().filter(|(_, c)| !c.is_empty()).collect();
        w.varint(clouds.len() as u64);
        for (r, c) in clouds {
            let n = c.len().min(budget);
            budget -= n;
            w.u64(r.0);
            w.varint(n as u64);
            let mut prev = self.vv.get(*r);
            for s in c.iter().take(n) {
                w.varint(s - prev);
                prev = *s;
            }
        }
    }

    /// Decodes a digest; total, bounded, never panics.
    pub fn decode(r: &mut Reader<'_>) -> Result<Digest, DecodeError> {
        let n = r.count(MAX_DIGEST_REPLICAS)?;
        let mut vv = BTreeMap::new();
        for _ in 0..n {
            let id = ReplicaId(r.u64()?);
            let s = r.varint()?;
            if s > MAX_SEQ {
                return Err(DecodeError::Invalid("digest seq out of range"));
            }
            if vv.insert(id, s).is_some() {
                return Err(DecodeError::Invalid("digest lists a replica twice"));
            }
        }
        let vv = VersionVector(vv);
        let n = r.count(MAX_DIGEST_REPLICAS)?;
        let mut cloud = BTreeMap::new();
        let mut total = 0usize;
        for _ in 0..n {
            let id = ReplicaId(r.u64()?);
            let m = r.count(MAX_DIGEST_CLOUD)?;
            total += m;
            if total > MAX_DIGEST_CLOUD {
                return Err(DecodeError::Invalid("digest cloud too large"));
            }
            let mut set = BTreeSet::new();
            let mut prev = vv.get(id);
            for _ in 0..m {
                let d = r.varint()?;
                if d == 0 {
                    return Err(DecodeError::Invalid("digest cloud not increasing"));
                }
                prev = prev
                    .checked_add(d)
                    .filter(|s| *s <= MAX_SEQ)
                    .ok_or(DecodeError::Invalid("digest cloud seq out of range"))?;
                set.insert(prev);
            }
            if cloud.insert(id, set).is_some() {
                return Err(DecodeError::Invalid("digest lists a cloud twice"));
            }
        }
        Ok(Digest { vv, cloud })
    }
}

/// The table's own seen-set, indexed by interned replica index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    pub vv: Vec<u64>,
    pub cloud: Vec<BTreeSet<u64>>,
}

impl Seen {
    pub fn add_replica(&mut self) {
        self.vv.push(0);
        self.cloud.push(BTreeSet::new());
    }
    #[inline]
    pub fn contains(&self, ridx: u16, seq: u64) -> bool {
        let i = ridx as usize;
        seq <= self.vv[i] || self.cloud[i].contains(&seq)
    }
    /// Marks a dot seen; returns whether it was new.
    pub fn insert(&mut self, ridx: u16, seq: u64) -> bool {
        let i = ridx as usize;
        if seq <= self.vv[i] {
            return false;
        }
        if seq == self.vv[i] + 1 {
            self.vv[i] = seq;
            let cloud = &mut self.cloud[i];
            while cloud.first() == Some(&(self.vv[i] + 1)) {
                cloud.pop_first();
                self.vv[i] += 1;
            }
            true
        } else {
            self.cloud[i].insert(seq)
        }
    }
    pub fn cloud_len(&self) -> usize {
        self.cloud.iter().map(|c| c.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digest_roundtrip() {
        let mut d = Digest::default();
        d.vv.0.insert(ReplicaId(1), 10);
        d.vv.0.insert(ReplicaId(2), 0);
        d.cloud
            .insert(ReplicaId(1), [12, 15, 99].into_iter().collect());
        d.cloud.insert(ReplicaId(3), [4].into_iter().collect());
        let mut w = Writer::default();
        d.encode(&mut w);
        let b = w.into_bytes();
        let got = Digest::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(got, d);
        assert!(got.has_seen(Dot {
            replica: ReplicaId(1),
            seq: 15
        }));
        assert!(!got.has_seen(Dot {
            replica: ReplicaId(1),
            seq: 11
        }));
    }

    #[test]
    fn seen_fills_holes() {
        let mut s = Seen::default();
        s.add_replica();
        assert!(s.insert(0, 3));
        assert!(s.insert(0, 2));
        assert_eq!(s.vv[0], 0);
        assert!(s.insert(0, 1));
        assert_eq!(s.vv[0], 3);
        assert!(!s.insert(0, 2));
        assert_eq!(s.cloud_len(), 0);
    }

    proptest! {
        #[test]
        fn digest_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Digest::decode(&mut Reader::new(&bytes));
        }

        #[test]
        fn meet_is_the_pointwise_minimum(
            vvs in proptest::collection::vec(
                proptest::collection::btree_map(0u64..12, 0u64..5, 0..8), 0..5)
        ) {
            let vvs: Vec<VersionVector> = vvs
                .into_iter()
                .map(|m| VersionVector(m.into_iter().map(|(r, s)| (ReplicaId(r), s)).collect()))
                .collect();
            let got = VersionVector::meet(&vvs);
            // The definition, written the slow way.
            let want = match vvs.split_first() {
                None => VersionVector::default(),
                Some((first, [])) => first.clone(),
                Some((first, rest)) => VersionVector(
                    first
                        .0
                        .iter()
                        .map(|(r, s)| (*r, rest.iter().map(|v| v.get(*r)).fold(*s, u64::min)))
                        .filter(|(_, s)| *s > 0)
                        .collect(),
                ),
            };
            prop_assert_eq!(got, want);
        }
    }
}
