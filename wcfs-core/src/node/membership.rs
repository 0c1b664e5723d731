//! Membership and failure detection: SWIM via `foca`, driven sans-IO through its `Runtime`
//! trait. Identities carry the address the driver routes by, the stable [`ReplicaId`] and a
//! generation bumped on every restart, so a restarted node is a new member that replaces its
//! old self (same address, higher generation wins). They also carry the node's name, the one
//! its TLS certificate was issued for, so the driver can check that a packet's claimed sender is
//! the peer the connection authenticated.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{Header, Incarnation, Member, Message as FMsg, Notification, State, Timer};

use crate::dot::ReplicaId;

/// The longest node name: one DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// A node's name: a lowercase DNS label (1–63 of `[a-z0-9-]`, starting with a letter, not
/// ending with `-`), or empty for "not known yet" (a seed placeholder). Stored inline so that
/// [`Identity`] stays `Copy` and allocation-free.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName {
    len: u8,
    bytes: [u8; MAX_NAME_LEN],
}

/// Why a string is not a node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid node name {0:?}: use 1-63 of [a-z0-9-], starting with a letter, not ending with '-'"
)]
pub struct BadName(pub String);

impl NodeName {
    /// The empty name: a member whose name is not known yet (a seed placeholder).
    pub const UNKNOWN: NodeName = NodeName {
        len: 0,
        bytes: [0; MAX_NAME_LEN],
    };

    /// Whether `b` is a valid (non-empty) node name.
    pub fn is_valid(b: &[u8]) -> bool {
        !b.is_empty()
            && b.len() <= MAX_NAME_LEN
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    }

    /// The name `s`, if it is a valid node name (never [`NodeName::UNKNOWN`]).
    pub fn new(s: &str) -> Result<NodeName, BadName> {
        Self::from_bytes(s.as_bytes()).ok_or_else(|| BadName(s.to_string()))
    }

    fn from_bytes(b: &[u8]) -> Option<NodeName> {
        if !Self::is_valid(b) {
            return None;
        }
        let mut bytes = [0; MAX_NAME_LEN];
        bytes[..b.len()].copy_from_slice(b);
        Some(NodeName {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The name as text (empty for [`NodeName::UNKNOWN`]).
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked on construction and decoding).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// Whether this is [`NodeName::UNKNOWN`].
    pub fn is_unknown(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A member's identity as SWIM sees it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Identity {
    /// Where the driver reaches the member.
    pub addr: SocketAddr,
    /// The node's name, as in its certificate ([`NodeName::UNKNOWN`] in a seed placeholder).
    pub name: NodeName,
    /// The member's stable replica id (0 in a seed placeholder: unknown yet).
    pub replica: ReplicaId,
    /// Bumped on every restart of the member.
    pub generation: u32,
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Identity {
            generation: self.generation.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.generation, self.replica) > (other.generation, other.replica)
    }
}

/// Why a SWIM packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwimDecodeError {
    /// The packet ended early.
    #[error("SWIM packet truncated")]
    Truncated,
    /// A field had an impossible value.
    #[error("SWIM packet invalid: {0}")]
    Invalid(&'static str),
    /// Encoding: the packet buffer has no room left (foca then stops adding members).
    #[error("no room left in the SWIM packet")]
    NoRoom,
}

/// Encoded size of an identity, at most.
const ID_MAX: usize = 1 + 16 + 2 + 8 + 4 + 1 + MAX_NAME_LEN;

fn room(buf: &impl BufMut, n: usize) -> Result<(), SwimDecodeError> {
    if buf.remaining_mut() < n {
        Err(SwimDecodeError::NoRoom)
    } else {
        Ok(())
    }
}

/// A compact hand-written codec for foca's headers and members; total on any input.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwimCodec;

fn need(buf: &impl Buf, n: usize) -> Result<(), SwimDecodeError> {
    if buf.remaining() < n {
        Err(SwimDecodeError::Truncated)
    } else {
        Ok(())
    }
}

fn put_id(id: &Identity, buf: &mut impl BufMut) {
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16_le(id.addr.port());
    buf.put_u64_le(id.replica.0);
    buf.put_u32_le(id.generation);
    buf.put_u8(id.name.len);
    buf.put_slice(&id.name.bytes[..id.name.len as usize]);
}

fn get_id(buf: &mut impl Buf) -> Result<Identity, SwimDecodeError> {
    need(buf, 1)?;
    let ip = match buf.get_u8() {
        4 => {
            need(buf, 4)?;
            let mut o = [0u8; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0u8; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(SwimDecodeError::Invalid("address family")),
    };
    need(buf, 14)?;
    let port = buf.get_u16_le();
    let replica = ReplicaId(buf.get_u64_le());
    let generation = buf.get_u32_le();
    need(buf, 1)?;
    let len = buf.get_u8() as usize;
    let name = if len == 0 {
        NodeName::UNKNOWN
    } else {
        if len > MAX_NAME_LEN {
            return Err(SwimDecodeError::Invalid("name length"));
        }
        need(buf, len)?;
        let mut b = [0u8; MAX_NAME_LEN];
        buf.copy_to_slice(&mut b[..len]);
        NodeName::from_bytes(&b[..len]).ok_or(SwimDecodeError::Invalid("node name"))?
    };
    Ok(Identity {
        addr: SocketAddr::new(ip, port),
        name,
        replica,
        generation,
    })
}

impl foca::Codec<Identity> for SwimCodec {
    type Error = SwimDecodeError;

    fn encode_header(
        &mut self,
        h: &Header<Identity>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        room(&buf, 3 * ID_MAX + 4)?;
        put_id(&h.src, &mut buf);
        buf.put_u16_le(h.src_incarnation);
        put_id(&h.dst, &mut buf);
        match &h.message {
            FMsg::Ping(n) => buf.put_slice(&[0, *n]),
            FMsg::Ack(n) => buf.put_slice(&[1, *n]),
            FMsg::PingReq {
                target,
                probe_number,
            } => {
                buf.put_u8(2);
                put_id(target, &mut buf);
                buf.put_u8(*probe_number);
            }
            FMsg::IndirectPing {
                origin,
                probe_number,
            } => {
                buf.put_u8(3);
                put_id(origin, &mut buf);
                buf.put_u8(*probe_number);
            }
            FMsg::IndirectAck {
                target,
                probe_number,
            } => {
                buf.put_u8(4);
                put_id(target, &mut buf);
                buf.put_u8(*probe_number);
            }
            FMsg::ForwardedAck {
                origin,
                probe_number,
            } => {
                buf.put_u8(5);
                put_id(origin, &mut buf);
                buf.put_u8(*probe_number);
            }
            FMsg::Announce => buf.put_u8(6),
            FMsg::Feed => buf.put_u8(7),
            FMsg::Gossip => buf.put_u8(8),
            FMsg::Broadcast => buf.put_u8(9),
            FMsg::TurnUndead => buf.put_u8(10),
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<Identity>, Self::Error> {
        let src = get_id(&mut buf)?;
        need(&buf, 2)?;
        let src_incarnation: Incarnation = buf.get_u16_le();
        let dst = get_id(&mut buf)?;
        need(&buf, 1)?;
        let tag = buf.get_u8();
        let num = |buf: &mut dyn Buf| -> Result<u8, SwimDecodeError> {
            if buf.remaining() < 1 {
                return Err(SwimDecodeError::Truncated);
            }
            Ok(buf.get_u8())
        };
        let message = match tag {
            0 => FMsg::Ping(num(&mut buf)?),
            1 => FMsg::Ack(num(&mut buf)?),
            2..=5 => {
                let id = get_id(&mut buf)?;
                let probe_number = num(&mut buf)?;
                match tag {
                    2 => FMsg::PingReq {
                        target: id,
                        probe_number,
                    },
                    3 => FMsg::IndirectPing {
                        origin: id,
                        probe_number,
                    },
                    4 => FMsg::IndirectAck {
                        target: id,
                        probe_number,
                    },
                    _ => FMsg::ForwardedAck {
                        origin: id,
                        probe_number,
                    },
                }
            }
            6 => FMsg::Announce,
            7 => FMsg::Feed,
            8 => FMsg::Gossip,
            9 => FMsg::Broadcast,
            10 => FMsg::TurnUndead,
            _ => return Err(SwimDecodeError::Invalid("message type")),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        m: &Member<Identity>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        room(&buf, ID_MAX + 3)?;
        put_id(m.id(), &mut buf);
        buf.put_u16_le(m.incarnation());
        buf.put_u8(match m.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<Identity>, Self::Error> {
        let id = get_id(&mut buf)?;
        need(&buf, 3)?;
        let inc = buf.get_u16_le();
        let state = match buf.get_u8() {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(SwimDecodeError::Invalid("member state")),
        };
        Ok(Member::new(id, inc, state))
    }
}

/// A small deterministic RNG (xorshift64*), seeded by the caller. Not cryptographic: it only
/// picks probe targets, gossip peers and jitter.
#[derive(Clone, Debug)]
pub struct SimpleRng(u64);

impl SimpleRng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> SimpleRng {
        let mut r = SimpleRng(seed ^ 0x9E37_79B9_7F4A_7C15);
        if r.0 == 0 {
            r.0 = 1;
        }
        r.next_word();
        r
    }
    /// The next 64 random bits.
    pub fn next_word(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`; 0 if `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((self.next_word() as u128 * n as u128) >> 64) as u64
    }
}

impl rand::TryRng for SimpleRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next_word() >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next_word())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for c in dst.chunks_mut(8) {
            let v = self.next_word().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        Ok(())
    }
}

/// A membership change for the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Up(Identity),
    Down(Identity),
}

/// Collects foca's outputs during one call: packets, timers, notifications. Timers are kept
/// in a `BTreeMap` keyed by (deadline, sequence) so they fire in a deterministic order.
#[derive(Default)]
pub(crate) struct SwimRuntime {
    pub now: Duration,
    pub sends: VecDeque<(Identity, Vec<u8>)>,
    pub timers: BTreeMap<(Duration, u64), Timer<Identity>>,
    pub timer_seq: u64,
    pub changes: VecDeque<Change>,
}

/// Most foca timers kept pending; foca keeps only a handful per member, so this bound is only
/// a guard against a bug turning into unbounded memory.
const MAX_TIMERS: usize = 1 << 20;
/// Most SWIM packets waiting to be polled.
const MAX_SENDS: usize = 1 << 16;

impl foca::Runtime<Identity> for SwimRuntime {
    fn notify(&mut self, n: Notification<'_, Identity>) {
        match n {
            Notification::MemberUp(id) => self.changes.push_back(Change::Up(*id)),
            Notification::MemberDown(id) => self.changes.push_back(Change::Down(*id)),
            Notification::Rename(old, new) => {
                self.changes.push_back(Change::Down(*old));
                self.changes.push_back(Change::Up(*new));
            }
            _ => {}
        }
    }

    fn send_to(&mut self, to: Identity, data: &[u8]) {
        if self.sends.len() < MAX_SENDS {
            self.sends.push_back((to, data.to_vec()));
        }
    }

    fn submit_after(&mut self, event: Timer<Identity>, after: Duration) {
        if self.timers.len() < MAX_TIMERS {
            self.timer_seq += 1;
            self.timers
                .insert((self.now + after, self.timer_seq), event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;
    use proptest::prelude::*;

    fn id(n: u8) -> Identity {
        Identity {
            addr: SocketAddr::from(([10, 0, 0, n], 7000)),
            name: NodeName::new(&format!("node-{n}")).unwrap(),
            replica: ReplicaId(n as u64),
            generation: 3,
        }
    }

    #[test]
    fn header_roundtrip() {
        let h = Header {
            src: id(1),
            src_incarnation: 5,
            dst: id(2),
            message: FMsg::PingReq {
                target: id(3),
                probe_number: 4,
            },
        };
        let mut buf = Vec::new();
        SwimCodec.encode_header(&h, &mut buf).unwrap();
        assert_eq!(SwimCodec.decode_header(&buf[..]).unwrap(), h);
        for cut in 0..buf.len() {
            assert!(SwimCodec.decode_header(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn renewed_identity_wins() {
        use foca::Identity as _;
        let a = id(1);
        let b = a.renew().unwrap();
        assert!(b.win_addr_conflict(&a) && !a.win_addr_conflict(&b));
    }

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "n17", "web-01", &"x".repeat(63)] {
            assert_eq!(NodeName::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "1a", "a-", "A", "a.b", "a_b", "é", &"x".repeat(64)] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(NodeName::UNKNOWN.is_unknown() && NodeName::UNKNOWN.as_str().is_empty());
    }

    #[test]
    fn member_with_each_name_shape_roundtrips() {
        for name in [NodeName::UNKNOWN, NodeName::new(&"z".repeat(63)).unwrap()] {
            let m = Member::new(Identity { name, ..id(9) }, 7, State::Suspect);
            let mut buf = Vec::new();
            SwimCodec.encode_member(&m, &mut buf).unwrap();
            assert!(buf.len() <= ID_MAX + 3);
            assert_eq!(SwimCodec.decode_member(&buf[..]).unwrap(), m);
        }
    }

    #[test]
    fn invalid_names_on_the_wire_are_refused() {
        let m = Member::new(id(1), 1, State::Alive);
        let mut buf = Vec::new();
        SwimCodec.encode_member(&m, &mut buf).unwrap();
        // The name "node-1" starts after family, 4 address bytes, port, replica, generation
        // and its length byte.
        let at = 1 + 4 + 2 + 8 + 4 + 1;
        assert_eq!(&buf[at..at + 6], b"node-1");
        let mut upper = buf.clone();
        upper[at] = b'N';
        assert_eq!(
            SwimCodec.decode_member(&upper[..]),
            Err(SwimDecodeError::Invalid("node name"))
        );
        let mut long = buf.clone();
        long[at - 1] = 64;
        assert_eq!(
            SwimCodec.decode_member(&long[..]),
            Err(SwimDecodeError::Invalid("name length"))
        );
    }

    proptest! {
        #[test]
        fn swim_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = SwimCodec.decode_header(&bytes[..]);
            let _ = SwimCodec.decode_member(&bytes[..]);
        }
    }
}
