//! The journal's on-disk format, sans-IO: a header, then length + CRC framed entries.
//!
//! ```text
//! header: b"WCFSJRNL" | u16 LE format version | u64 LE replica id | u32 LE CRC32 of the above
//! frame:  u32 LE payload length | u32 LE CRC32 of payload | payload
//! payload: tag byte | entry body (tag 1: a record, tag 2: a counter reservation)
//! ```
//!
//! The file layer (in `wcfs-gossip`) appends frames and fsyncs them; after a crash it hands the
//! whole file to [`replay`], which returns every entry up to the first torn or corrupt frame and
//! says where and why it stopped, so the caller can truncate there and append after it.

use crate::codec::{DecodeError, Reader, Writer};
use crate::dot::{MAX_SEQ, ReplicaId};
use crate::record::Record;
use crate::table::{Table, TableError};

/// First bytes of every journal file.
pub const MAGIC: [u8; 8] = *b"WCFSJRNL";

/// The format version this code writes and reads. Bump it when a tag's meaning changes.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes in the file header: magic, version, replica id, header CRC.
pub const HEADER_LEN: usize = 8 + 2 + 8 + 4;

/// Bytes in a frame header: payload length and payload CRC.
pub const FRAME_HEADER_LEN: usize = 8;

/// Largest payload a frame may carry. A record is at most a few tens of KiB (a 4 KiB path and
/// at most 4,096 context entries of ≤ 19 bytes), so a length above this is corruption, and
/// refusing it keeps a flipped length bit from making replay allocate gigabytes.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

const TAG_RECORD: u8 = 1;
const TAG_RESERVE: u8 = 2;

/// The journal file's header: whose journal this is, in which format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version (always [`FORMAT_VERSION`] once decoded).
    pub version: u16,
    /// The replica whose journal this is.
    pub replica: ReplicaId,
}

/// Why a journal header was refused. The file is not a journal this replica may replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("journal header truncated: {len} bytes, a header has {HEADER_LEN}")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The file does not start with [`MAGIC`].
    #[error("not a WCFS journal (magic {found:02x?}, expected {MAGIC:02x?})")]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The header's checksum does not match its bytes.
    #[error("journal header checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC of the header bytes.
        computed: u32,
    },
    /// Written by a format version this code does not read.
    #[error("journal format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// The journal belongs to another replica.
    #[error("journal belongs to replica {found}, not to this replica {expected}")]
    WrongReplica {
        /// The replica that opened it.
        expected: ReplicaId,
        /// The replica named in the header.
        found: ReplicaId,
    },
}

impl Header {
    /// A current-version header for `replica`.
    pub fn new(replica: ReplicaId) -> Header {
        Header {
            version: FORMAT_VERSION,
            replica,
        }
    }

    /// The header's [`HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10..18].copy_from_slice(&self.replica.0.to_le_bytes());
        let crc = crc32fast::hash(&out[..18]);
        out[18..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `bytes` and checks that it is a current-version
    /// journal of `expected`. Never panics.
    pub fn decode(bytes: &[u8], expected: ReplicaId) -> Result<Header, HeaderError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::Truncated { len: bytes.len() });
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&h[..8]);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let stored = u32::from_le_bytes([h[18], h[19], h[20], h[21]]);
        let computed = crc32fast::hash(&h[..18]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion { found: version });
        }
        let mut r = [0u8; 8];
        r.copy_from_slice(&h[10..18]);
        let found = ReplicaId(u64::from_le_bytes(r));
        if found != expected {
            return Err(HeaderError::WrongReplica { expected, found });
        }
        Ok(Header {
            version,
            replica: found,
        })
    }
}

/// One journaled fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalEntry {
    /// A record (local or remote) to merge on replay. Merging a record the table lacks
    /// reproduces the state it carried, so this is also how local mutations come back.
    Record(Record),
    /// The replica's counter is reserved up to `upto`: after a crash the counter restarts at
    /// or above it, so a sequence number is never reused even if the records that used it
    /// never reached the disk. `1..=MAX_SEQ`.
    Reserve {
        /// The highest sequence number the replica may have used.
        upto: u64,
    },
}

impl JournalEntry {
    /// The entry's payload bytes (tag + body).
    pub fn encode(&self, w: &mut Writer) {
        match self {
            JournalEntry::Record(rec) => {
                w.u8(TAG_RECORD);
                rec.encode(w);
            }
            JournalEntry::Reserve { upto } => {
                w.u8(TAG_RESERVE);
                w.varint(*upto);
            }
        }
    }

    /// Decodes one payload; every byte must be consumed. Never panics.
    pub fn decode(payload: &[u8]) -> Result<JournalEntry, DecodeError> {
        let mut r = Reader::new(payload);
        let entry = match r.u8()? {
            TAG_RECORD => JournalEntry::Record(Record::decode(&mut r)?),
            TAG_RESERVE => {
                let upto = r.varint()?;
                if upto == 0 || upto > MAX_SEQ {
                    return Err(DecodeError::Invalid("reservation out of range"));
                }
                JournalEntry::Reserve { upto }
            }
            _ => return Err(DecodeError::Invalid("unknown journal entry tag")),
        };
        if !r.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes after journal entry"));
        }
        Ok(entry)
    }
}

/// The bytes of one frame holding `entry`: length, CRC, payload.
pub fn encode_frame(entry: &JournalEntry) -> Vec<u8> {
    let mut w = Writer::with_buf(vec![0u8; FRAME_HEADER_LEN]);
    entry.encode(&mut w);
    let mut buf = w.into_bytes();
    let len = buf.len() - FRAME_HEADER_LEN;
    // Valid records are far below the limit; a frame above it would be refused on replay.
    debug_assert!(len <= MAX_FRAME_PAYLOAD, "journal frame of {len} bytes");
    let crc = crc32fast::hash(&buf[FRAME_HEADER_LEN..]);
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Why a frame was judged corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// A zero length: no entry is empty (typically zero-filled blocks after a crash).
    #[error("zero-length frame")]
    Empty,
    /// The length exceeds [`MAX_FRAME_PAYLOAD`].
    #[error("frame length {len} exceeds the limit of {MAX_FRAME_PAYLOAD}")]
    TooLong {
        /// The length read.
        len: u32,
    },
    /// The payload's CRC does not match: a torn or damaged write.
    #[error("frame checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The CRC in the frame header.
        stored: u32,
        /// The CRC of the payload read.
        computed: u32,
    },
    /// The checksum matched but the payload is not an entry this build understands. A crash
    /// cannot produce this; it means a bug or a file from an incompatible writer.
    #[error("frame checksum ok but entry undecodable: {0}")]
    Entry(DecodeError),
}

/// How the journal ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Every byte after the header belongs to a good frame.
    Clean,
    /// The file ends inside the frame starting at `offset`: an interrupted append, or a
    /// damaged length pointing past the end. Either way nothing from `offset` on is usable.
    Torn {
        /// File offset of the incomplete frame.
        offset: usize,
        /// Bytes the frame (or its header, if even that is incomplete) still lacks.
        missing_bytes: usize,
    },
    /// The frame at `offset` is damaged; it and everything after it are unusable.
    Corrupt {
        /// File offset of the bad frame.
        offset: usize,
        /// What is wrong with it.
        reason: CorruptReason,
    },
}

/// What a journal file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The file's header.
    pub header: Header,
    /// The entries of every good frame, in file order, up to the first bad one.
    pub entries: Vec<JournalEntry>,
    /// Bytes from the start of the file up to and including the last good frame (the header
    /// alone if there is none): where the file should be truncated and appended to.
    pub valid_len: usize,
    /// How the file ends after `valid_len`.
    pub tail: Tail,
}

/// Reads a whole journal file. Checks the header (see [`Header::decode`]), then decodes frames
/// until the end or the first torn or corrupt frame, which [`Replay::tail`] describes.
/// Never panics and never allocates more than the input's size for payloads.
pub fn replay(bytes: &[u8], replica: ReplicaId) -> Result<Replay, HeaderError> {
    let header = Header::decode(bytes, replica)?;
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    let tail = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        if rest.len() < FRAME_HEADER_LEN {
            break Tail::Torn {
                offset: pos,
                missing_bytes: FRAME_HEADER_LEN - rest.len(),
            };
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let stored = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            break Tail::Corrupt {
                offset: pos,
                reason: CorruptReason::Empty,
            };
        }
        if len as usize > MAX_FRAME_PAYLOAD {
            break Tail::Corrupt {
                offset: pos,
                reason: CorruptReason::TooLong { len },
            };
        }
        let body = &rest[FRAME_HEADER_LEN..];
        if body.len() < len as usize {
            break Tail::Torn {
                offset: pos,
                missing_bytes: len as usize - body.len(),
            };
        }
        let payload = &body[..len as usize];
        let computed = crc32fast::hash(payload);
        if computed != stored {
            break Tail::Corrupt {
                offset: pos,
                reason: CorruptReason::Checksum { stored, computed },
            };
        }
        match JournalEntry::decode(payload) {
            Ok(e) => entries.push(e),
            Err(e) => {
                break Tail::Corrupt {
                    offset: pos,
                    reason: CorruptReason::Entry(e),
                };
            }
        }
        pos += FRAME_HEADER_LEN + len as usize;
    };
    Ok(Replay {
        header,
        entries,
        valid_len: pos,
        tail,
    })
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Records merged.
    pub records: usize,
    /// Records that changed some path's resolution.
    pub changed: usize,
    /// Reservations seen.
    pub reserves: usize,
    /// The highest reservation (0 if none).
    pub max_reserve: u64,
    /// The highest sequence number of the table's own replica in a replayed record (0 if none).
    pub max_own_seq: u64,
}

/// Replays `entries` into `table`: merges every record in order, then raises the counter to
/// the highest reservation and the highest own sequence number seen, so the next local
/// mutation gets a sequence number never used before the crash. On a merge error the records
/// before it stay merged and the counter is not raised.
pub fn apply<'a>(
    table: &mut Table,
    entries: impl IntoIterator<Item = &'a JournalEntry>,
) -> Result<ApplyStats, TableError> {
    let me = table.replica();
    let mut st = ApplyStats::default();
    for e in entries {
        match e {
            JournalEntry::Record(rec) => {
                let out = table.merge(rec)?;
                st.records += 1;
                st.changed += usize::from(out.changed);
                if let Some(c) = rec.entries.iter().find(|c| c.dot.replica == me) {
                    st.max_own_seq = st.max_own_seq.max(c.dot.seq);
                }
            }
            JournalEntry::Reserve { upto } => {
                st.reserves += 1;
                st.max_reserve = st.max_reserve.max(*upto);
            }
        }
    }
    table.bump_counter(st.max_reserve.max(st.max_own_seq));
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::Op;
    use crate::path::WPath;
    use proptest::prelude::*;

    const ME: ReplicaId = ReplicaId(7);

    fn p(s: &str) -> WPath {
        WPath::new(s.as_bytes()).unwrap()
    }

    fn journal(entries: &[JournalEntry]) -> Vec<u8> {
        let mut out = Header::new(ME).encode().to_vec();
        for e in entries {
            out.extend(encode_frame(e));
        }
        out
    }

    fn sample() -> Vec<JournalEntry> {
        let mut a = Table::new(ME, 1);
        let mut b = Table::new(ReplicaId(9), 2);
        let mut out = vec![JournalEntry::Reserve { upto: 1024 }];
        out.push(JournalEntry::Record(
            a.propose(&p("x/y"), Op::MarkRw).unwrap(),
        ));
        let rb = b.propose(&p("x/y"), Op::Whiteout).unwrap();
        a.merge(&rb).unwrap();
        out.push(JournalEntry::Record(rb));
        out.push(JournalEntry::Record(
            a.propose(&p("x/y"), Op::Forget).unwrap(),
        ));
        out.push(JournalEntry::Record(
            a.propose(&p("z"), Op::MarkOpaque).unwrap(),
        ));
        out
    }

    fn sorted(t: &Table) -> Vec<Record> {
        let mut v: Vec<Record> = t.records().collect();
        v.sort_by(|x, y| x.path.as_bytes().cmp(y.path.as_bytes()));
        v
    }

    #[test]
    fn roundtrip_and_apply_reproduces_table() {
        let entries = sample();
        let bytes = journal(&entries);
        let r = replay(&bytes, ME).unwrap();
        assert_eq!(r.tail, Tail::Clean);
        assert_eq!(r.valid_len, bytes.len());
        assert_eq!(r.entries, entries);

        // The table that produced the records, rebuilt independently.
        let mut orig = Table::new(ME, 1);
        let mut b = Table::new(ReplicaId(9), 2);
        orig.propose(&p("x/y"), Op::MarkRw).unwrap();
        orig.merge(&b.propose(&p("x/y"), Op::Whiteout).unwrap())
            .unwrap();
        orig.propose(&p("x/y"), Op::Forget).unwrap();
        orig.propose(&p("z"), Op::MarkOpaque).unwrap();

        let mut t = Table::new(ME, 99);
        let st = apply(&mut t, &r.entries).unwrap();
        assert_eq!(st.records, 4);
        assert_eq!(st.reserves, 1);
        assert_eq!(st.max_own_seq, 3);
        assert_eq!(t.counter(), 1024);
        assert_eq!(sorted(&t), sorted(&orig));
        assert_eq!(t.resolve(&p("x/y")), orig.resolve(&p("x/y")));
        assert_eq!(t.resolve(&p("z")), orig.resolve(&p("z")));
        t.check_invariants().unwrap();
        // The next local mutation does not reuse a reserved sequence number.
        let rec = t.propose(&p("w"), Op::MarkRw).unwrap();
        assert_eq!(rec.entries[0].dot.seq, 1025);
    }

    #[test]
    fn counter_covers_own_records_without_reserve() {
        let mut a = Table::new(ME, 1);
        let recs: Vec<JournalEntry> = (0..5)
            .map(|i| JournalEntry::Record(a.propose(&p(&format!("f{i}")), Op::MarkRw).unwrap()))
            .collect();
        let mut t = Table::new(ME, 1);
        apply(&mut t, &recs).unwrap();
        assert_eq!(t.counter(), 5);
    }

    #[test]
    fn header_errors_are_typed() {
        let good = Header::new(ME).encode();
        assert_eq!(
            Header::decode(&good, ReplicaId(8)),
            Err(HeaderError::WrongReplica {
                expected: ReplicaId(8),
                found: ME
            })
        );
        assert_eq!(
            Header::decode(&good[..5], ME),
            Err(HeaderError::Truncated { len: 5 })
        );
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            Header::decode(&bad, ME),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut v2 = good;
        v2[8] = 2;
        let crc = crc32fast::hash(&v2[..18]);
        v2[18..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Header::decode(&v2, ME),
            Err(HeaderError::UnsupportedVersion { found: 2 })
        );
        let mut flipped = good;
        flipped[12] ^= 1;
        assert!(matches!(
            Header::decode(&flipped, ME),
            Err(HeaderError::Checksum { .. })
        ));
        let msg = Header::decode(&good, ReplicaId(8)).unwrap_err().to_string();
        assert!(msg.contains("0000000000000008"), "{msg}");
    }

    #[test]
    fn torn_tail_at_every_cut() {
        let entries = sample();
        let bytes = journal(&entries);
        let mut ends = vec![HEADER_LEN];
        for e in &entries {
            ends.push(ends.last().unwrap() + encode_frame(e).len());
        }
        for cut in HEADER_LEN..bytes.len() {
            let r = replay(&bytes[..cut], ME).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
            assert_eq!(r.entries, entries[..whole], "cut {cut}");
            assert_eq!(r.valid_len, ends[whole]);
            if cut == ends[whole] {
                assert_eq!(r.tail, Tail::Clean);
            } else {
                let missing = if cut - ends[whole] < FRAME_HEADER_LEN {
                    FRAME_HEADER_LEN - (cut - ends[whole])
                } else {
                    ends[whole + 1] - cut
                };
                assert_eq!(
                    r.tail,
                    Tail::Torn {
                        offset: ends[whole],
                        missing_bytes: missing
                    },
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn corrupt_frames_are_reported() {
        let entries = sample();
        let mut bytes = journal(&entries);
        let second = HEADER_LEN + encode_frame(&entries[0]).len();
        // A payload bit flip in the second frame.
        bytes[second + FRAME_HEADER_LEN + 2] ^= 0x10;
        let r = replay(&bytes, ME).unwrap();
        assert_eq!(r.entries, entries[..1]);
        assert_eq!(r.valid_len, second);
        assert!(matches!(
            r.tail,
            Tail::Corrupt {
                offset,
                reason: CorruptReason::Checksum { .. }
            } if offset == second
        ));

        // A huge length is refused without allocating.
        let mut huge = journal(&entries[..1]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        let r = replay(&huge, ME).unwrap();
        assert_eq!(
            r.tail,
            Tail::Corrupt {
                offset: second,
                reason: CorruptReason::TooLong { len: u32::MAX }
            }
        );

        // Zero-filled blocks after a crash.
        let mut zeros = journal(&entries[..1]);
        zeros.extend_from_slice(&[0; 4096]);
        let r = replay(&zeros, ME).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(
            r.tail,
            Tail::Corrupt {
                offset: second,
                reason: CorruptReason::Empty
            }
        );

        // A checksummed frame with an unknown tag is an entry error, not silently skipped.
        let mut unknown = journal(&entries[..1]);
        let payload = [9u8, 1, 2];
        unknown.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        unknown.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        unknown.extend_from_slice(&payload);
        let r = replay(&unknown, ME).unwrap();
        assert!(matches!(
            r.tail,
            Tail::Corrupt {
                reason: CorruptReason::Entry(_),
                ..
            }
        ));
    }

    #[test]
    fn reserve_out_of_range_is_refused() {
        for upto in [0, MAX_SEQ + 1] {
            let mut w = Writer::default();
            w.u8(TAG_RESERVE);
            w.varint(upto);
            assert!(JournalEntry::decode(w.as_slice()).is_err());
        }
        let mut w = Writer::default();
        JournalEntry::Reserve { upto: MAX_SEQ }.encode(&mut w);
        w.u8(0);
        assert_eq!(
            JournalEntry::decode(w.as_slice()),
            Err(DecodeError::Invalid("trailing bytes after journal entry"))
        );
    }

    fn arb_entry() -> impl Strategy<Value = JournalEntry> {
        prop_oneof![
            (1..=MAX_SEQ).prop_map(|upto| JournalEntry::Reserve { upto }),
            (
                proptest::collection::vec(0u8..4, 1..6),
                proptest::sample::select(vec!["a", "a/b", "site/up/x.jpg", "z"]),
                prop::collection::vec(0usize..4, 1..4),
            )
                .prop_map(|(ops, path, reps)| {
                    let mut t = Table::new(ReplicaId(reps[0] as u64), 3);
                    let mut last = None;
                    for (i, o) in ops.iter().enumerate() {
                        let op =
                            [Op::MarkRw, Op::MarkOpaque, Op::Whiteout, Op::Forget][*o as usize];
                        let mut other = Table::new(ReplicaId(reps[i % reps.len()] as u64 + 10), 4);
                        let r = other.propose(&p(path), op).unwrap();
                        t.merge(&r).unwrap();
                        last = Some(t.propose(&p(path), op).unwrap());
                    }
                    JournalEntry::Record(last.unwrap())
                }),
        ]
    }

    proptest! {
        #[test]
        fn replay_of_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = replay(&bytes, ME);
            let _ = JournalEntry::decode(&bytes);
            // With a valid header in front, so frame decoding is reached too.
            let mut j = Header::new(ME).encode().to_vec();
            j.extend_from_slice(&bytes);
            let r = replay(&j, ME).unwrap();
            prop_assert!(r.valid_len <= j.len());
            let mut t = Table::new(ME, 0);
            let _ = apply(&mut t, &r.entries);
        }

        #[test]
        fn frames_roundtrip(entries in proptest::collection::vec(arb_entry(), 0..8)) {
            let bytes = journal(&entries);
            let r = replay(&bytes, ME).unwrap();
            prop_assert_eq!(r.tail, Tail::Clean);
            prop_assert_eq!(r.valid_len, bytes.len());
            prop_assert_eq!(r.entries, entries);
        }

        #[test]
        fn any_single_bit_flip_keeps_exactly_the_prefix(
            entries in proptest::collection::vec(arb_entry(), 1..6),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let bytes = journal(&entries);
            let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            let r = replay(&bad, ME).unwrap();
            let mut end = HEADER_LEN;
            let mut before = 0;
            for e in &entries {
                let next = end + encode_frame(e).len();
                if next > i { break; }
                end = next;
                before += 1;
            }
            prop_assert_eq!(&r.entries[..], &entries[..before]);
            prop_assert_eq!(r.valid_len, end);
            prop_assert!(r.tail != Tail::Clean);
        }
    }
}
