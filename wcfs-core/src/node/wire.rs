//! The sync engine's wire format: every message starts with a magic and a format version, then
//! a type byte and the body. Decoding is total: any byte string yields a message or a typed
//! error, never a panic. A message from an unknown format version is refused with both
//! versions named, so the log line says exactly who is out of date.

use crate::codec::{DecodeError, Reader, Writer};
use crate::dot::{Dot, MAX_SEQ, ReplicaId};
use crate::record::Record;
use crate::table::{Digest, Shipped};

/// First bytes of every message.
pub const MAGIC: [u8; 4] = *b"WCFS";
/// The format version this build speaks.
pub const VERSION: u8 = 2;
/// Most records one push or chunk message may carry.
pub const MAX_ITEMS: usize = 65_536;
/// Most superseded dots one shipped record may stand for.
pub const MAX_ALSO: usize = 65_536;
/// Largest snapshot piece one message may carry.
pub const MAX_SNAPSHOT_PIECE: usize = 1 << 20;
/// Largest encoded member list one message may carry.
pub const MAX_MEMBER_BYTES: usize = 4 << 20;

/// Why bytes are not a message we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes do not start with [`MAGIC`]: not a WCFS peer.
    #[error("not a WCFS message (bad magic)")]
    Magic,
    /// The peer speaks another format version.
    #[error("peer speaks wire format version {got}, this node speaks version {ours}")]
    Version {
        /// The version in the message.
        got: u8,
        /// [`VERSION`].
        ours: u8,
    },
    /// Unknown message type byte.
    #[error("unknown message type {0}")]
    Type(u8),
    /// The body is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Bytes left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// One message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A SWIM (foca) packet, opaque here.
    Swim(Vec<u8>),
    /// Fresh local records, eagerly pushed.
    Push(Vec<Record>),
    /// Anti-entropy: the sender's digest. `reply` asks the receiver to answer with its own
    /// digest (push-pull); the receiver sends the records the sender lacks either way.
    Digest {
        /// Whether the receiver should answer with its digest.
        reply: bool,
        /// What the sender has seen.
        digest: Digest,
    },
    /// Anti-entropy: records the receiver lacked, oldest first per replica.
    Records {
        /// Whether this was everything the receiver lacked as of its digest.
        complete: bool,
        /// The records.
        items: Vec<Shipped>,
    },
    /// A piece of a snapshot transfer.
    SnapChunk {
        /// Transfer id, chosen by the sender.
        id: u64,
        /// Offset of `data` in the snapshot.
        offset: u64,
        /// Snapshot length.
        total: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Anti-entropy opener: a hash of the sender's digest. Equal to the receiver's: nothing
    /// to exchange. Different: the receiver answers with its full digest.
    Summary {
        /// [`digest_hash`] of the sender's digest.
        hash: u64,
        /// An answer to a summary (never answered itself, so summaries cannot ping-pong).
        echo: bool,
        /// A fingerprint of the set of members the sender sees as up (itself included). A
        /// receiver that sees another set answers with [`Message::Members`].
        view: u64,
    },
    /// Fresh local records, pushed with [`Config::push_acks`](super::Config::push_acks): the
    /// receiver answers [`Message::PushAck`] with the same `id`, and the sender sends it again
    /// after a timeout until it does (for transports that lose messages).
    AckedPush {
        /// The sender's batch number.
        id: u64,
        /// The records.
        records: Vec<Record>,
    },
    /// The [`Message::AckedPush`] `id` arrived.
    PushAck {
        /// Its batch number.
        id: u64,
    },
    /// Membership anti-entropy: the sender's member list (SWIM member records, opaque here),
    /// sent when two nodes' views differ. SWIM's gossip alone takes many seconds to tell
    /// every node of a large cluster about every member, and a pusher does not push to a
    /// member it does not know.
    Members {
        /// Whether the receiver should answer with its own list.
        reply: bool,
        /// The encoded member records.
        list: Vec<u8>,
    },
    /// Asks for the snapshot transfer `id` from `offset` on (resume or flow control).
    SnapReq {
        /// Transfer id.
        id: u64,
        /// First byte wanted.
        offset: u64,
    },
}

fn put_dot(w: &mut Writer, d: Dot) {
    w.u64(d.replica.0);
    w.varint(d.seq);
}

fn get_dot(r: &mut Reader<'_>) -> Result<Dot, DecodeError> {
    let replica = ReplicaId(r.u64()?);
    let seq = r.varint()?;
    if seq == 0 || seq > MAX_SEQ {
        return Err(DecodeError::Invalid("dot seq out of range"));
    }
    Ok(Dot { replica, seq })
}

impl Message {
    /// The full encoding, header included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(&MAGIC);
        w.u8(VERSION);
        match self {
            Message::Swim(b) => {
                w.u8(0);
                w.raw(b);
            }
            Message::Push(recs) => {
                w.u8(1);
                w.varint(recs.len() as u64);
                for r in recs {
                    r.encode(&mut w);
                }
            }
            Message::Digest { reply, digest } => {
                w.u8(2);
                w.u8(u8::from(*reply));
                digest.encode(&mut w);
            }
            Message::Records { complete, items } => {
                w.u8(3);
                w.u8(u8::from(*complete));
                w.varint(items.len() as u64);
                for s in items {
                    s.record.encode(&mut w);
                    w.varint(s.also.len() as u64);
                    for d in &s.also {
                        put_dot(&mut w, *d);
                    }
                }
            }
            Message::SnapChunk {
                id,
                offset,
                total,
                data,
            } => {
                w.u8(4);
                w.u64(*id);
                w.varint(*offset);
                w.varint(*total);
                w.bytes(data);
            }
            Message::SnapReq { id, offset } => {
                w.u8(5);
                w.u64(*id);
                w.varint(*offset);
            }
            Message::Summary { hash, echo, view } => {
                w.u8(6);
                w.u64(*hash);
                w.u8(u8::from(*echo));
                w.u64(*view);
            }
            Message::AckedPush { id, records } => {
                w.u8(8);
                w.varint(*id);
                w.varint(records.len() as u64);
                for r in records {
                    r.encode(&mut w);
                }
            }
            Message::PushAck { id } => {
                w.u8(9);
                w.varint(*id);
            }
            Message::Members { reply, list } => {
                w.u8(7);
                w.u8(u8::from(*reply));
                w.bytes(list);
            }
        }
        w.into_bytes()
    }

    /// The SWIM payload of `bytes` if they are a SWIM message of this format version, without
    /// decoding anything else (drivers peek at SWIM headers to check who sent them).
    pub fn swim_payload(bytes: &[u8]) -> Option<&[u8]> {
        match bytes {
            [m0, m1, m2, m3, VERSION, 0, rest @ ..] if [*m0, *m1, *m2, *m3] == MAGIC => Some(rest),
            _ => None,
        }
    }

    /// Decodes one whole message. Total: never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(bytes);
        if r.take(4).map_err(|_| WireError::Magic)? != MAGIC {
            return Err(WireError::Magic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(WireError::Version {
                got: v,
                ours: VERSION,
            });
        }
        let msg = match r.u8()? {
            0 => {
                let rest = r.take(r.remaining())?;
                Message::Swim(rest.to_vec())
            }
            1 => {
                let n = r.count(MAX_ITEMS)?;
                let mut recs = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    recs.push(Record::decode(&mut r)?);
                }
                Message::Push(recs)
            }
            2 => {
                let reply = get_bool(&mut r)?;
                Message::Digest {
                    reply,
                    digest: Digest::decode(&mut r)?,
                }
            }
            3 => {
                let complete = get_bool(&mut r)?;
                let n = r.count(MAX_ITEMS)?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let record = Record::decode(&mut r)?;
                    let m = r.count(MAX_ALSO)?;
                    let mut also = Vec::with_capacity(m.min(1024));
                    for _ in 0..m {
                        also.push(get_dot(&mut r)?);
                    }
                    items.push(Shipped { record, also });
                }
                Message::Records { complete, items }
            }
            4 => {
                let id = r.u64()?;
                let offset = r.varint()?;
                let total = r.varint()?;
                let data = r.bytes(MAX_SNAPSHOT_PIECE)?.to_vec();
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|e| e > total)
                {
                    return Err(DecodeError::Invalid("snapshot piece beyond its total").into());
                }
                Message::SnapChunk {
                    id,
                    offset,
                    total,
                    data,
                }
            }
            5 => Message::SnapReq {
                id: r.u64()?,
                offset: r.varint()?,
            },
            6 => Message::Summary {
                hash: r.u64()?,
                echo: get_bool(&mut r)?,
                view: r.u64()?,
            },
            7 => Message::Members {
                reply: get_bool(&mut r)?,
                list: r.bytes(MAX_MEMBER_BYTES)?.to_vec(),
            },
            8 => {
                let id = r.varint()?;
                let n = r.count(MAX_ITEMS)?;
                let mut records = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    records.push(Record::decode(&mut r)?);
                }
                Message::AckedPush { id, records }
            }
            9 => Message::PushAck { id: r.varint()? },
            t => return Err(WireError::Type(t)),
        };
        if !r.is_empty() {
            return Err(WireError::Trailing(r.remaining()));
        }
        Ok(msg)
    }
}

/// A deterministic 64-bit hash of a digest (version vector and cloud), for
/// [`Message::Summary`]. Not cryptographic: a collision only delays one anti-entropy round.
pub fn digest_hash(d: &Digest) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    };
    for (r, s) in &d.vv.0 {
        mix(r.0);
        mix(*s);
    }
    mix(u64::MAX);
    for (r, c) in &d.cloud {
        mix(r.0);
        for s in c {
            mix(*s);
        }
    }
    h
}

fn get_bool(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Invalid("bad boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::Kind;
    use crate::path::WPath;
    use crate::record::CtxEntry;
    use proptest::prelude::*;

    fn rec(p: &str, seq: u64) -> Record {
        Record {
            path: WPath::new(p.as_bytes()).unwrap(),
            entries: vec![CtxEntry {
                dot: Dot {
                    replica: ReplicaId(7),
                    seq,
                },
                live: Some(Kind::Rw),
            }],
        }
    }

    fn samples() -> Vec<Message> {
        let mut d = Digest::default();
        d.vv.0.insert(ReplicaId(7), 3);
        vec![
            Message::Swim(vec![1, 2, 3]),
            Message::Push(vec![rec("a/b", 1), rec("c", 2)]),
            Message::Digest {
                reply: true,
                digest: d,
            },
            Message::Records {
                complete: false,
                items: vec![Shipped {
                    record: rec("x", 9),
                    also: vec![Dot {
                        replica: ReplicaId(7),
                        seq: 4,
                    }],
                }],
            },
            Message::SnapChunk {
                id: 5,
                offset: 2,
                total: 10,
                data: vec![9; 8],
            },
            Message::SnapReq { id: 5, offset: 3 },
            Message::Summary {
                hash: 77,
                echo: true,
                view: 5,
            },
            Message::Members {
                reply: true,
                list: vec![1, 2, 3],
            },
            Message::AckedPush {
                id: 300,
                records: vec![rec("d", 3)],
            },
            Message::PushAck { id: 300 },
        ]
    }

    #[test]
    fn roundtrip_and_truncation() {
        for m in samples() {
            let b = m.encode();
            assert_eq!(Message::decode(&b).unwrap(), m);
            if !matches!(m, Message::Swim(_)) {
                for cut in 0..b.len() {
                    assert!(Message::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn unknown_version_is_refused_naming_both() {
        let mut b = Message::SnapReq { id: 1, offset: 0 }.encode();
        b[4] = 9;
        let e = Message::decode(&b).unwrap_err();
        assert_eq!(
            e,
            WireError::Version {
                got: 9,
                ours: VERSION
            }
        );
        assert!(
            e.to_string().contains("version 9")
                && e.to_string().contains(&format!("version {VERSION}"))
        );
        assert_eq!(Message::decode(b"HTTP/1.1"), Err(WireError::Magic));
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300), t in 0u8..11) {
            let mut b = MAGIC.to_vec();
            b.push(VERSION);
            b.push(t);
            b.extend_from_slice(&tail);
            let _ = Message::decode(&b);
            let _ = Message::decode(&tail);
        }
    }
}
