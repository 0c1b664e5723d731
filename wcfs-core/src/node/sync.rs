//! Eager push, anti-entropy, GC and snapshot transfer.
//!
//! - Local records are batched (by time and size) and pushed once to every live peer. A peer
//!   whose queue is full loses the push; nothing marks it delivered, so the next anti-entropy
//!   round with that peer repairs it.
//! - Anti-entropy: on a jittered interval a node sends its digest to a few peers (the one most
//!   behind first, then random ones). The receiver answers with its own digest (push-pull) and
//!   with the records the sender lacks in byte-bounded chunks; an incomplete chunk makes the
//!   sender ask again with its updated digest, so a big catch-up is self-clocked.
//! - A digest below our GC floor gets a snapshot instead (chunked, resumable by offset).
//! - GC: the floor is the meet of our version vector and those of every live member (from
//!   their digests); no GC while a live member's vector is unknown.

use std::net::SocketAddr;

use super::wire::Message;
use super::{Channel, Event, Node, SnapIn, SnapOut};
use crate::record::Record;
use crate::table::{Digest, Shipped, VersionVector};

/// Encoded size estimate of a pushed record.
fn record_size(r: &Record) -> usize {
    r.path.as_bytes().len() + 2 + r.entries.len() * 10
}

/// GC passes a grown-stale floor of the members is kept before it is recomputed.
const FLOOR_REFRESH_PASSES: u32 = 5;

/// Whether `a` has seen everything `b` has (pointwise `a >= b`). Both maps are sorted by
/// replica, so one walk does.
fn covers(a: &VersionVector, b: &VersionVector) -> bool {
    let mut ai = a.0.iter().peekable();
    b.0.iter().all(|(r, s)| {
        while ai.next_if(|(ar, _)| *ar < r).is_some() {}
        *s == 0
            || ai
                .next_if(|(ar, _)| *ar == r)
                .is_some_and(|(_, av)| av >= s)
    })
}

/// The meet of the members' version vectors, for GC.
pub(super) enum PeersFloor {
    /// Some member's vector is unknown: nothing may be collected.
    Unknown,
    /// No members: our own vector is the floor.
    Alone,
    /// Their meet.
    Known(VersionVector),
}

impl Node {
    /// Our digest as peers may see it: never claiming own mutations that are not durable
    /// yet. A peer that believed we had them could raise its GC floor past a seq that a crash
    /// makes us reuse, and then drop the new mutation as already collected.
    pub(super) fn my_digest(&mut self) -> Digest {
        self.my_digest_ref().0.clone()
    }

    /// The cached digest and its hash, rebuilt if something changed it (borrowed: summaries
    /// need only the hash, and cloning a digest per message was a tenth of the simulator).
    fn my_digest_ref(&mut self) -> &(Digest, u64) {
        if self.digest_cache.is_none() {
            let mut d = self.table.digest();
            let me = self.me.replica;
            if let Some(v) = d.vv.0.get_mut(&me) {
                *v = (*v).min(self.durable);
            }
            if let Some(c) = d.cloud.get_mut(&me) {
                c.retain(|s| *s <= self.durable);
            }
            d.cloud.retain(|_, c| !c.is_empty());
            let h = super::wire::digest_hash(&d);
            self.digest_cache = Some((d, h));
        }
        self.digest_cache.get_or_insert_default()
    }

    pub(super) fn queue_push(&mut self, rec: Record) {
        self.push_bytes += record_size(&rec);
        self.push_buf.push(rec);
        if self.push_deadline.is_none() {
            self.push_deadline = Some(self.now + self.cfg.push_delay);
        }
        if self.push_bytes >= self.cfg.push_max_bytes {
            self.flush_push();
        }
    }

    pub(super) fn flush_push(&mut self) {
        self.push_deadline = None;
        self.push_bytes = 0;
        if self.push_buf.is_empty() {
            return;
        }
        if self.cfg.push_acks {
            let records = std::mem::take(&mut self.push_buf);
            self.push_acked(records);
            return;
        }
        let bytes = Message::Push(std::mem::take(&mut self.push_buf)).encode();
        let to: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for addr in to {
            if !self.send(addr, Channel::Stream, bytes.clone()) {
                self.stats.pushes_dropped += 1;
            }
        }
    }

    pub(super) fn on_message(&mut self, from: SocketAddr, msg: Message) {
        match msg {
            Message::Swim(_) => {}
            Message::Push(recs) => {
                for r in &recs {
                    self.merge_one(r, &[]);
                }
            }
            Message::AckedPush { id, records } => {
                // Acked before merging: a refused record must not cost the sender retries.
                self.send(from, Channel::Stream, Message::PushAck { id }.encode());
                for r in &records {
                    self.merge_one(r, &[]);
                }
            }
            Message::PushAck { id } => self.on_push_ack(from, id),
            Message::Digest { reply, digest } => self.on_digest(from, reply, digest),
            Message::Records { complete, items } => {
                for s in &items {
                    self.merge_one(&s.record, &s.also);
                }
                if self.pull.is_some_and(|(a, _)| a == from) {
                    self.pull = None;
                }
                if !complete && self.cfg.anti_entropy {
                    // Ask for the next chunk, from what we have now.
                    self.start_pull(from, false);
                }
            }
            Message::SnapChunk {
                id,
                offset,
                total,
                data,
            } => self.on_snap_chunk(from, id, offset, total, data),
            Message::SnapReq { id, offset } => self.serve_snapshot(from, Some((id, offset))),
            Message::Members { reply, list } => self.on_members(from, reply, &list),
            Message::Summary { hash, echo, view } => {
                if !echo {
                    self.on_peer_view(from, view);
                }
                let h = self.my_digest_ref().1;
                if h == hash {
                    // Same digest: nothing to exchange, and we now know its vector (GC needs
                    // every member's); echo once so the sender learns ours too.
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.behind = 0;
                        let vv = self.my_digest_ref().0.vv.clone();
                        self.set_peer_vv(from, vv);
                    }
                    if !echo {
                        let m = Message::Summary {
                            hash: h,
                            echo: true,
                            view: self.view_fingerprint(),
                        };
                        self.send(from, Channel::Stream, m.encode());
                    }
                } else if self.cfg.anti_entropy {
                    // It differs: pull from the sender (if no pull of ours is in flight) and
                    // invite it to pull from us; if we are busy pulling, at least let it know
                    // so it can pull from us.
                    if !self.start_pull(from, true) && !echo {
                        let m = Message::Summary {
                            hash: h,
                            echo: true,
                            view: self.view_fingerprint(),
                        };
                        self.send(from, Channel::Stream, m.encode());
                    }
                }
            }
        }
    }

    fn merge_one(&mut self, rec: &Record, also: &[crate::dot::Dot]) {
        let shipped;
        let res = if also.is_empty() {
            self.table.merge(rec)
        } else {
            shipped = Shipped {
                record: rec.clone(),
                also: also.to_vec(),
            };
            self.table.merge_shipped(&shipped)
        };
        match res {
            Ok(out) => {
                self.stats.records_merged += 1;
                if out.new_dots > 0 {
                    self.digest_cache = None;
                }
                if out.changed {
                    self.event(Event::PathChanged(rec.path.clone()));
                }
                if self.cfg.report_applied && out.new_dots > 0 {
                    let mut dots: Vec<_> = rec.entries.iter().map(|e| e.dot).collect();
                    dots.extend_from_slice(also);
                    self.event(Event::Applied(dots));
                }
                if self.cfg.report_merged && out.new_dots > 0 {
                    self.event(Event::Merged(rec.clone()));
                }
            }
            Err(e) => tracing::warn!(path = %rec.path, error = %e, "record refused"),
        }
    }

    fn on_digest(&mut self, from: SocketAddr, reply: bool, digest: Digest) {
        let behind = self
            .my_digest_ref()
            .0
            .vv
            .total()
            .saturating_sub(digest.vv.total());
        if reply && self.cfg.anti_entropy {
            self.start_pull(from, false);
        }
        let chunk = if self.table.needs_reset(&digest) {
            None
        } else {
            Some(self.table.records_since(&digest, self.cfg.chunk_bytes))
        };
        if let Some(p) = self.peers.get_mut(&from) {
            p.behind = behind;
            self.set_peer_vv(from, digest.vv);
        }
        let Some(mut chunk) = chunk else {
            self.serve_snapshot(from, None);
            return;
        };
        let (me, durable) = (self.me.replica, self.durable);
        chunk.items.retain(|s| {
            s.record
                .entries
                .iter()
                .all(|e| e.dot.replica != me || e.dot.seq <= durable)
        });
        // Sent even when empty: it ends the peer's pull.
        let m = Message::Records {
            complete: chunk.complete,
            items: chunk.items,
        };
        self.send(from, Channel::Stream, m.encode());
    }

    /// Asks `from` for what we lack by sending our digest, unless a pull of ours is already
    /// in flight: records reach a node only at the pace it asks for them, so a slow node
    /// is never flooded by peers that all noticed it is behind. `reply` invites the peer to
    /// pull from us in turn.
    pub(super) fn start_pull(&mut self, from: SocketAddr, reply: bool) -> bool {
        let now = self.now;
        let timeout = self.cfg.ae_interval / 4;
        if self.pull.is_some_and(|(_, since)| now < since + timeout) {
            return false;
        }
        self.pull = Some((from, now));
        let m = Message::Digest {
            reply,
            digest: self.my_digest(),
        };
        self.send(from, Channel::Stream, m.encode());
        true
    }

    pub(super) fn anti_entropy_round(&mut self) {
        if self.peers.is_empty() {
            return;
        }
        let mut picks: Vec<SocketAddr> = Vec::new();
        // The peer most behind (unknown counts as most), ties broken by address.
        if let Some((addr, _)) = self
            .peers
            .iter()
            .max_by(|a, b| a.1.behind.cmp(&b.1.behind).then(b.0.cmp(a.0)))
        {
            picks.push(*addr);
        }
        // Then peers in turn, so every member's version vector (for GC) is refreshed within
        // members / fanout rounds.
        let want = self.cfg.ae_fanout.min(self.peers.len());
        let mut tries = 0;
        while picks.len() < want && tries < 2 * want + 2 {
            tries += 1;
            let next = match self.ae_cursor {
                Some(c) => self
                    .peers
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .next()
                    .or_else(|| self.peers.iter().next()),
                None => self.peers.iter().next(),
            }
            .map(|(a, _)| *a);
            let Some(a) = next else { break };
            self.ae_cursor = Some(a);
            if !picks.contains(&a) {
                picks.push(a);
            }
        }
        // Now and then a member declared down within the grace period too: if it is back (a
        // healed partition) the data heals without waiting for membership to.
        if !self.departed.is_empty() && self.rng.below(4) == 0 {
            let k = self.rng.below(self.departed.len() as u64) as usize;
            if let Some(a) = self.departed.keys().nth(k) {
                picks.push(*a);
            }
        }
        let bytes = Message::Summary {
            hash: self.my_digest_ref().1,
            echo: false,
            view: self.view_fingerprint(),
        }
        .encode();
        for a in picks {
            self.send(a, Channel::Stream, bytes.clone());
        }
    }

    pub(super) fn gc(&mut self) {
        let (now, grace) = (self.now, self.cfg.gc_grace);
        let before = self.departed.len();
        self.departed.retain(|_, (since, _)| now < *since + grace);
        if self.departed.len() != before {
            self.peers_floor = None;
        }
        // What every member (and every member departed within the grace) has seen. Vectors
        // only grow, so a floor computed earlier is still below all of them (it only collects
        // less): it is kept for a few passes while vectors grow, and dropped at once when
        // membership changes or a vector goes down. At a hundred members recomputing it on
        // every pass of every node was a fifth of the simulator's time.
        let refresh = self.peers_floor.is_none()
            || (self.floor_stale
                && now >= self.floor_computed + self.cfg.gc_interval * FLOOR_REFRESH_PASSES);
        if refresh {
            self.peers_floor = Some(self.compute_peers_floor());
            self.floor_computed = now;
            self.floor_stale = false;
        }
        let Some(peers_floor) = &self.peers_floor else {
            return;
        };
        let own = self.table.version_vector();
        let floor = match peers_floor {
            // A member's vector is unknown: no GC yet.
            PeersFloor::Unknown => return,
            PeersFloor::Alone => own,
            PeersFloor::Known(f) => VersionVector::meet([&own, f]),
        };
        let freed = self.table.gc(&floor);
        self.stats.paths_collected += freed as u64;
    }

    /// Records `from`'s latest version vector.
    fn set_peer_vv(&mut self, from: SocketAddr, vv: VersionVector) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        if p.vv.as_ref().is_some_and(|old| covers(&vv, old)) {
            self.floor_stale = true;
        } else {
            self.peers_floor = None;
        }
        p.vv = Some(vv);
    }

    fn compute_peers_floor(&self) -> PeersFloor {
        let mut vvs: Vec<&VersionVector> = Vec::with_capacity(self.peers.len());
        let vectors = self
            .peers
            .values()
            .map(|p| p.vv.as_ref())
            .chain(self.departed.values().map(|(_, v)| v.as_ref()));
        for v in vectors {
            match v {
                Some(v) => vvs.push(v),
                None => return PeersFloor::Unknown,
            }
        }
        if vvs.is_empty() {
            PeersFloor::Alone
        } else {
            PeersFloor::Known(VersionVector::meet(vvs))
        }
    }

    /// Sends snapshot pieces to `from`: from the start of a fresh transfer (`req` = `None`,
    /// or a request for a transfer we no longer hold), or from the requested offset.
    pub(super) fn serve_snapshot(&mut self, to: SocketAddr, req: Option<(u64, u64)>) {
        let now = self.now;
        let resume = match (req, &self.snap_out) {
            (Some((id, off)), Some(s)) if s.id == id => Some(off),
            _ => None,
        };
        let offset = match resume {
            Some(off) => off,
            None => {
                if let Some(p) = self.peers.get(&to)
                    && p.snap_started
                        .is_some_and(|t| now < t + self.cfg.snapshot_timeout)
                {
                    // A transfer to this peer just started; its requests drive it.
                    return;
                }
                if !self.undurable.is_empty() {
                    // The snapshot would carry own mutations not durable yet; the peer asks
                    // again at its next anti-entropy round.
                    return;
                }
                let stale = self
                    .snap_out
                    .as_ref()
                    .is_none_or(|s| now >= s.created + self.cfg.snapshot_max_age);
                if stale {
                    let id = self.rng.next_word();
                    self.snap_out = Some(SnapOut {
                        id,
                        bytes: crate::snapshot::encode(&self.table),
                        created: now,
                    });
                }
                if let Some(p) = self.peers.get_mut(&to) {
                    p.snap_started = Some(now);
                }
                self.stats.snapshots_sent += 1;
                0
            }
        };
        let Some(s) = &self.snap_out else { return };
        let total = s.bytes.len() as u64;
        let id = s.id;
        let piece = self.cfg.snapshot_piece.max(1) as u64;
        let mut msgs = Vec::new();
        let mut off = offset.min(total);
        for _ in 0..self.cfg.snapshot_window.max(1) {
            let end = (off + piece).min(total);
            msgs.push(
                Message::SnapChunk {
                    id,
                    offset: off,
                    total,
                    data: s.bytes[off as usize..end as usize].to_vec(),
                }
                .encode(),
            );
            off = end;
            if off >= total {
                break;
            }
        }
        for m in msgs {
            self.send(to, Channel::Stream, m);
        }
    }

    fn on_snap_chunk(&mut self, from: SocketAddr, id: u64, offset: u64, total: u64, data: Vec<u8>) {
        if total as usize > self.cfg.snapshot_max_bytes {
            tracing::warn!(%from, total, "snapshot too large, refused");
            return;
        }
        let now = self.now;
        let window = (self.cfg.snapshot_piece * self.cfg.snapshot_window.max(1)) as u64;
        let same = self
            .snap_in
            .as_ref()
            .is_some_and(|s| s.id == id && s.from == from);
        if !same {
            let busy = self
                .snap_in
                .as_ref()
                .is_some_and(|s| now < s.last_progress + self.cfg.snapshot_timeout);
            if offset != 0 || busy {
                return;
            }
            self.snap_in = Some(SnapIn {
                from,
                id,
                total,
                buf: Vec::new(),
                next_req_at: window,
                last_progress: now,
                retries: 0,
            });
        }
        let Some(s) = self.snap_in.as_mut() else {
            return;
        };
        if offset != s.buf.len() as u64 {
            return;
        }
        s.buf.extend_from_slice(&data);
        s.last_progress = now;
        s.retries = 0;
        if s.buf.len() as u64 >= s.total {
            let Some(done) = self.snap_in.take() else {
                return;
            };
            self.install_snapshot(&done.buf);
        } else if s.buf.len() as u64 >= s.next_req_at {
            s.next_req_at = s.buf.len() as u64 + window;
            let m = Message::SnapReq {
                id,
                offset: s.buf.len() as u64,
            };
            self.send(from, Channel::Stream, m.encode());
        }
    }

    pub(super) fn snapshot_tick(&mut self) {
        let now = self.now;
        let Some(s) = self.snap_in.as_mut() else {
            return;
        };
        if now < s.last_progress + self.cfg.snapshot_timeout {
            return;
        }
        s.retries += 1;
        if s.retries > 5 {
            tracing::info!(from = %s.from, "snapshot transfer abandoned");
            self.snap_in = None;
            return;
        }
        s.last_progress = now;
        let (from, m) = (
            s.from,
            Message::SnapReq {
                id: s.id,
                offset: s.buf.len() as u64,
            },
        );
        self.send(from, Channel::Stream, m.encode());
    }

    fn install_snapshot(&mut self, bytes: &[u8]) {
        let snap = match crate::snapshot::decode(bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot refused");
                return;
            }
        };
        // Below our GC floor we compacted away the contexts that say what was superseded, so
        // a snapshot holding a live entry our floor knows is dead (we saw it and no longer
        // have it live) is staler than us there: installing it would bring that entry back.
        let floor = self.table.floor();
        let stale = snap.records().find_map(|rec| {
            let ours = self.table.get(&rec.path);
            rec.live()
                .find(|(d, _)| {
                    d.seq <= floor.get(d.replica)
                        && !ours
                            .as_ref()
                            .is_some_and(|o| o.live().any(|(od, _)| od == *d))
                })
                .map(|(d, _)| (rec.path.clone(), d))
        });
        if let Some((path, dot)) = stale {
            tracing::info!(%path, ?dot, "snapshot staler than our floor, refused");
            self.stats.snapshots_refused += 1;
            return;
        }
        // reset_from carries over everything we hold that the snapshot has not seen.
        let res = self.table.reset_from(snap).map_err(|e| e.to_string());
        match res {
            Ok(reproposed) => {
                self.digest_cache = None;
                self.stats.resets += 1;
                self.event(Event::Reset);
                let (me, durable) = (self.me.replica, self.durable);
                for r in reproposed {
                    // Not yet durable ones go out with their `mark_durable`.
                    if r.entries
                        .iter()
                        .all(|e| e.dot.replica != me || e.dot.seq <= durable)
                    {
                        self.queue_push(r);
                    }
                }
                // Our vector moved: whatever we knew of who is behind is stale.
                for p in self.peers.values_mut() {
                    p.behind = u64::MAX;
                }
            }
            Err(e) => tracing::warn!(error = %e, "snapshot refused"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::ReplicaId;
    use proptest::prelude::*;

    fn vv(m: std::collections::BTreeMap<u64, u64>) -> VersionVector {
        VersionVector(m.into_iter().map(|(r, s)| (ReplicaId(r), s)).collect())
    }

    proptest! {
        #[test]
        fn covers_is_pointwise_at_least(
            a in proptest::collection::btree_map(0u64..10, 0u64..4, 0..8),
            b in proptest::collection::btree_map(0u64..10, 0u64..4, 0..8),
        ) {
            let (a, b) = (vv(a), vv(b));
            let want = b.0.iter().all(|(r, s)| a.get(*r) >= *s);
            prop_assert_eq!(covers(&a, &b), want);
        }
    }
}
