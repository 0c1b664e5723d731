//! Membership anti-entropy. SWIM spreads news of a member by piggybacking it on a bounded
//! number of probes, which at a thousand nodes joining together leaves some pairs unaware of
//! each other for many seconds; a pusher does not push to a member it does not know, so those
//! members got fresh records only through data anti-entropy. Each anti-entropy summary
//! therefore carries a fingerprint of the sender's view (the set of members it sees up); two
//! nodes whose fingerprints differ swap member lists (as memberlist's push/pull sync does) and
//! feed what they lacked to foca.

use foca::{Codec, Member, State};

use super::membership::{Identity, SwimCodec, SwimDecodeError};
use super::wire::{MAX_MEMBER_BYTES, Message};
use super::{Channel, Node};

/// Most member lists sent per anti-entropy round (requests and answers together): a node
/// that every peer contacts at once (a new one) must not answer each with its whole list.
pub(super) const LISTS_PER_ROUND: u32 = 4;

/// This identity's contribution to a view fingerprint (XOR of these over the members).
pub(super) fn id_hash(id: &Identity) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    };
    match id.addr.ip() {
        std::net::IpAddr::V4(ip) => mix(u32::from(ip) as u64),
        std::net::IpAddr::V6(ip) => {
            let v = u128::from(ip);
            mix(v as u64);
            mix((v >> 64) as u64);
        }
    }
    mix(id.addr.port() as u64);
    mix(id.replica.0);
    mix(id.generation as u64);
    h
}

/// Encodes member records back to back with the SWIM codec.
pub(super) fn encode_list<'a>(members: impl Iterator<Item = &'a Member<Identity>>) -> Vec<u8> {
    let mut buf = Vec::new();
    for m in members {
        if buf.len() >= MAX_MEMBER_BYTES - 64 {
            break;
        }
        if SwimCodec.encode_member(m, &mut buf).is_err() {
            break;
        }
    }
    buf
}

/// Decodes a list made by [`encode_list`]; total on any bytes.
fn decode_list(mut bytes: &[u8]) -> Result<Vec<Member<Identity>>, SwimDecodeError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        out.push(SwimCodec.decode_member(&mut bytes)?);
    }
    Ok(out)
}

impl Node {
    /// The fingerprint of the members we see up, ourselves included.
    pub(super) fn view_fingerprint(&self) -> u64 {
        self.view_fp
    }

    /// A summary from `from` showed view `view`: if it differs from ours, send our list and
    /// ask for theirs.
    pub(super) fn on_peer_view(&mut self, from: std::net::SocketAddr, view: u64) {
        if view != self.view_fp {
            self.send_members(from, true);
        }
    }

    /// Sends our member list (every member foca holds, down ones too, and ourselves), within
    /// the per-round budget.
    pub(super) fn send_members(&mut self, to: std::net::SocketAddr, reply: bool) {
        if self.lists_left == 0 {
            return;
        }
        self.lists_left -= 1;
        let me = Member::new(self.me, 0, State::Alive);
        let list = encode_list(std::iter::once(&me).chain(self.swim.iter_membership_state()));
        let m = Message::Members { reply, list };
        self.stats.member_lists_sent += 1;
        self.send(to, Channel::Stream, m.encode());
    }

    /// A member list from `from`: feed foca what we lacked (members up that we do not list,
    /// members down that we list as up), then answer with ours if asked.
    pub(super) fn on_members(&mut self, from: std::net::SocketAddr, reply: bool, list: &[u8]) {
        let members = match decode_list(list) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                tracing::warn!(%from, error = %e, "member list refused");
                return;
            }
        };
        let me = self.me;
        let news: Vec<Member<Identity>> = members
            .into_iter()
            .filter(|m| {
                let id = m.id();
                if id.addr == me.addr {
                    return false;
                }
                let known_up = self.peers.get(&id.addr).is_some_and(|p| p.id == *id);
                match m.state() {
                    State::Alive | State::Suspect => !known_up,
                    State::Down => known_up,
                }
            })
            .collect();
        if !news.is_empty() {
            // Not re-broadcast over SWIM: the list exchanges spread it.
            if let Err(e) = self.swim.apply_many(news.into_iter(), false, &mut self.rt) {
                tracing::debug!(error = %e, "SWIM apply member list");
            }
            self.after_swim();
        }
        if reply {
            self.send_members(from, false);
        }
    }
}
