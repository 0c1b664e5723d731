//! Acknowledged pushes ([`Config::push_acks`](super::Config::push_acks)), for transports that
//! lose sync messages. Over QUIC streams a push arrives unless the connection breaks, and
//! anti-entropy covers that; over a lossy datagram-like path one push in five may vanish, and
//! anti-entropy alone takes a few rounds to notice and repair it. So each receiver acks the
//! batch, and the sender sends it again to a peer that has not acked within a timeout derived
//! from the measured round trip, a bounded number of times; past that anti-entropy repairs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::wire::Message;
use super::{Channel, Node};

/// Sends of one batch to one peer, first included, before it is left to anti-entropy.
const MAX_TRIES: u32 = 8;
/// Most (batch, peer) pairs awaiting an ack; past it new pushes are not tracked.
const MAX_PENDING: usize = 1 << 16;
/// Bounds of the retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(2);
const MAX_RTO: Duration = Duration::from_millis(200);

/// One batch sent to one peer and not acked yet.
struct Pending {
    sent_at: Duration,
    deadline: Duration,
    tries: u32,
}

/// The sender's side: what waits for acks, and the round-trip estimate.
#[derive(Default)]
pub(super) struct Acks {
    next_id: u64,
    /// Encoded batches with at least one pending peer, and how many.
    batches: BTreeMap<u64, (Vec<u8>, usize)>,
    pending: BTreeMap<(u64, SocketAddr), Pending>,
    /// Retransmission deadlines, earliest first.
    timers: BTreeSet<(Duration, u64, SocketAddr)>,
    /// Smoothed round trip of first sends (RFC 6298 style), and its variation.
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl Acks {
    fn rto(&self) -> Duration {
        let rto = match self.srtt {
            Some(s) => s + 4 * self.rttvar,
            None => Duration::from_millis(10),
        };
        // Whole microseconds: drivers with coarser clocks then see deadlines they can reach.
        Duration::from_micros(rto.clamp(MIN_RTO, MAX_RTO).as_micros() as u64)
    }

    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }

    /// The next retransmission deadline.
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        self.timers.first().map(|t| t.0)
    }
}

impl Node {
    /// Pushes `records` to every peer, tracking each for an ack.
    pub(super) fn push_acked(&mut self, records: Vec<crate::record::Record>) {
        self.acks.next_id += 1;
        let id = self.acks.next_id;
        let bytes = Message::AckedPush { id, records }.encode();
        let to: Vec<SocketAddr> = self.peers.keys().copied().collect();
        let rto = self.acks.rto();
        let now = self.now;
        let mut tracked = 0;
        for addr in to {
            if !self.send(addr, Channel::Stream, bytes.clone()) {
                self.stats.pushes_dropped += 1;
                continue;
            }
            if self.acks.pending.len() < MAX_PENDING {
                let deadline = now + rto;
                self.acks.pending.insert(
                    (id, addr),
                    Pending {
                        sent_at: now,
                        deadline,
                        tries: 1,
                    },
                );
                self.acks.timers.insert((deadline, id, addr));
                tracked += 1;
            }
        }
        if tracked > 0 {
            self.acks.batches.insert(id, (bytes, tracked));
        }
    }

    /// An ack from `from` for batch `id`.
    pub(super) fn on_push_ack(&mut self, from: SocketAddr, id: u64) {
        let Some(p) = self.acks.pending.remove(&(id, from)) else {
            return;
        };
        self.acks.timers.remove(&(p.deadline, id, from));
        if p.tries == 1 {
            // Karn: only unambiguous samples.
            self.acks.sample(self.now.saturating_sub(p.sent_at));
        }
        self.release_batch(id);
    }

    fn release_batch(&mut self, id: u64) {
        if let Some((_, n)) = self.acks.batches.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.acks.batches.remove(&id);
            }
        }
    }

    /// Sends again what is overdue; gives up on a peer after [`MAX_TRIES`] or once it is no
    /// longer a member.
    pub(super) fn retransmit_due(&mut self) {
        let now = self.now;
        while let Some(&(at, id, to)) = self.acks.timers.first() {
            if at > now {
                break;
            }
            self.acks.timers.pop_first();
            let Some(mut p) = self.acks.pending.remove(&(id, to)) else {
                continue;
            };
            let bytes = self.acks.batches.get(&id).map(|(b, _)| b.clone());
            let alive = self.peers.contains_key(&to);
            match bytes {
                Some(b) if alive && p.tries < MAX_TRIES => {
                    self.stats.push_retransmits += 1;
                    if !self.send(to, Channel::Stream, b) {
                        self.stats.pushes_dropped += 1;
                    }
                    // Back off gently (linearly): a peer that does not answer may be slow
                    // rather than lossy, but doubling would push the last tries past what
                    // anti-entropy does anyway.
                    let rto = self.acks.rto() * p.tries;
                    p.tries += 1;
                    p.deadline = now + rto.min(MAX_RTO);
                    self.acks.timers.insert((p.deadline, id, to));
                    self.acks.pending.insert((id, to), p);
                }
                _ => self.release_batch(id),
            }
        }
    }
}
