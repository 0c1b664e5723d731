//! Records: the unit of replication. A record carries one path's whole CRDT state (its causal
//! context, with the kind of each dot that is still live), so merging it is idempotent,
//! commutative and associative.

use crate::codec::{DecodeError, Reader, Writer};
use crate::dot::{Dot, Kind, MAX_SEQ, ReplicaId};
use crate::path::{MAX_PATH_LEN, WPath};

/// Most context entries (distinct replicas) one record may carry on the wire.
pub const MAX_RECORD_ENTRIES: usize = 4096;

/// One replica's entry in a path's causal context: the highest dot of that replica observed
/// for the path, and the kind it gave the path if that dot is still live.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct CtxEntry {
    /// The dot (highest observed from `dot.replica` for this path).
    pub dot: Dot,
    /// `Some(kind)` if the dot is live, `None` if it has been superseded or removed.
    pub live: Option<Kind>,
}

/// A path's replicated state: its causal context, sorted by replica, one entry per replica.
/// A record with no live entry is a tombstone.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    /// The path this record is about.
    pub path: WPath,
    /// Sorted by `dot.replica`, strictly increasing, never empty.
    pub entries: Vec<CtxEntry>,
}

impl Record {
    /// Whether no dot is live (the record removes whatever its context covers).
    pub fn is_tombstone(&self) -> bool {
        self.entries.iter().all(|e| e.live.is_none())
    }

    /// The live kinds, in replica order.
    pub fn live(&self) -> impl Iterator<Item = (Dot, Kind)> + '_ {
        self.entries
            .iter()
            .filter_map(|e| e.live.map(|k| (e.dot, k)))
    }

    /// Appends the record's encoding to `w`.
    pub fn encode(&self, w: &mut Writer) {
        w.bytes(self.path.as_bytes());
        w.varint(self.entries.len() as u64);
        for e in &self.entries {
            w.u64(e.dot.replica.0);
            w.varint(e.dot.seq);
            w.u8(match e.live {
                None => 0,
                Some(Kind::Rw) => 1,
                Some(Kind::Opaque) => 2,
                Some(Kind::Whiteout) => 3,
            });
        }
    }

    /// Decodes one record, checking every rule: a valid path, 1..=[`MAX_RECORD_ENTRIES`]
    /// entries in strictly increasing replica order, sequence numbers in `1..=MAX_SEQ`,
    /// known kinds. Never panics, whatever the bytes.
    pub fn decode(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
        let path = r.bytes(MAX_PATH_LEN)?;
        let path = WPath::new(path).map_err(DecodeError::Path)?;
        let n = r.varint()?;
        if n == 0 || n > MAX_RECORD_ENTRIES as u64 {
            return Err(DecodeError::Invalid("record entry count out of range"));
        }
        let mut entries: Vec<CtxEntry> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let replica = ReplicaId(r.u64()?);
            let seq = r.varint()?;
            if seq == 0 || seq > MAX_SEQ {
                return Err(DecodeError::Invalid("sequence number out of range"));
            }
            let live = match r.u8()? {
                0 => None,
                1 => Some(Kind::Rw),
                2 => Some(Kind::Opaque),
                3 => Some(Kind::Whiteout),
                _ => return Err(DecodeError::Invalid("unknown entry kind")),
            };
            if let Some(prev) = entries.last()
                && prev.dot.replica >= replica
            {
                return Err(DecodeError::Invalid("record entries not sorted by replica"));
            }
            entries.push(CtxEntry {
                dot: Dot { replica, seq },
                live,
            });
        }
        Ok(Record { path, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let rec = Record {
            path: WPath::new(b"a/b").unwrap(),
            entries: vec![
                CtxEntry {
                    dot: Dot {
                        replica: ReplicaId(1),
                        seq: 7,
                    },
                    live: Some(Kind::Rw),
                },
                CtxEntry {
                    dot: Dot {
                        replica: ReplicaId(9),
                        seq: MAX_SEQ,
                    },
                    live: None,
                },
            ],
        };
        let mut w = Writer::default();
        rec.encode(&mut w);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(Record::decode(&mut r).unwrap(), rec);
        assert!(r.is_empty());
        for cut in 0..bytes.len() {
            assert!(Record::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&mut Reader::new(&bytes));
        }
    }
}
