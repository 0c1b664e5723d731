//! A tiny in-process driver: perfect network with a fixed delay, to test the engine alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000))
}

struct Net {
    nodes: Vec<Node>,
    /// (deliver at, seq) -> (to, from, bytes)
    wire: BTreeMap<(Duration, u64), (usize, SocketAddr, Vec<u8>)>,
    seq: u64,
    now: Duration,
    cut: Option<usize>,
}

impl Net {
    fn new(n: usize, ae: bool) -> Net {
        let nodes = (0..n)
            .map(|i| {
                let mut cfg = Config::new(n as u32);
                cfg.seeds = vec![addr(0)];
                cfg.anti_entropy = ae;
                let id = Identity {
                    addr: addr(i),
                    name: NodeName::new(&format!("n{i}")).unwrap(),
                    replica: ReplicaId(100 + i as u64),
                    generation: 0,
                };
                Node::new(
                    cfg,
                    id,
                    Table::new(ReplicaId(100 + i as u64), i as u64),
                    i as u64,
                )
            })
            .collect();
        Net {
            nodes,
            wire: BTreeMap::new(),
            seq: 0,
            now: Duration::ZERO,
            cut: None,
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            let to = (t
                .to
                .ip()
                .to_string()
                .rsplit('.')
                .next()
                .unwrap()
                .parse::<usize>())
            .unwrap()
                - 1;
            if self.cut == Some(to) || self.cut == Some(i) {
                continue;
            }
            self.seq += 1;
            self.wire.insert(
                (self.now + Duration::from_micros(300), self.seq),
                (to, addr(i), t.bytes),
            );
        }
        while self.nodes[i].poll_event().is_some() {}
    }

    fn run_until(&mut self, end: Duration) {
        loop {
            let next_timer = (0..self.nodes.len())
                .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i)))
                .min();
            let next_msg = self.wire.first_key_value().map(|(k, _)| k.0);
            let t = match (next_timer, next_msg) {
                (Some((t, _)), Some(m)) => t.min(m),
                (Some((t, _)), None) => t,
                (None, Some(m)) => m,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            self.now = t;
            if next_msg == Some(t) {
                let (_, (to, from, bytes)) = self.wire.pop_first().unwrap();
                self.nodes[to].handle(t, from, &bytes);
                self.drain(to);
            } else {
                let i = next_timer.unwrap().1;
                self.nodes[i].handle_timeout(t);
                self.drain(i);
            }
        }
        self.now = end;
    }

    fn live(&self, i: usize) -> Vec<(String, Option<Kind>)> {
        let mut v: Vec<_> = self.nodes[i]
            .table()
            .records()
            .map(|r| (r.path.to_string(), r.live().map(|(_, k)| k).min()))
            .filter(|(_, k)| k.is_some())
            .collect();
        v.sort();
        v
    }
}

use crate::dot::Kind;

fn p(s: &str) -> WPath {
    WPath::new(s.as_bytes()).unwrap()
}

#[test]
fn members_join_and_a_push_reaches_everyone_fast() {
    let mut net = Net::new(4, true);
    net.run_until(Duration::from_secs(3));
    for n in &net.nodes {
        assert_eq!(
            n.members().len(),
            3,
            "{:?} sees {:?}",
            n.identity(),
            n.members()
        );
    }
    net.nodes[2].propose(&p("up/a.jpg"), Op::MarkRw).unwrap();
    net.nodes[2].mark_durable(u64::MAX);
    net.drain(2);
    let t0 = net.now;
    net.run_until(t0 + Duration::from_millis(3));
    for i in 0..4 {
        assert_eq!(
            net.nodes[i].table().resolve(&p("up/a.jpg")),
            crate::table::Resolution::Rw
        );
    }
}

#[test]
fn nothing_leaves_before_it_is_durable() {
    let mut net = Net::new(2, true);
    net.run_until(Duration::from_secs(3));
    net.nodes[0].propose(&p("a"), Op::MarkRw).unwrap();
    let t = net.now;
    net.run_until(t + Duration::from_secs(1));
    assert_eq!(
        net.nodes[1].table().resolve(&p("a")),
        crate::table::Resolution::Ro
    );
    net.nodes[0].mark_durable(1);
    net.drain(0);
    let t = net.now;
    net.run_until(t + Duration::from_millis(2));
    assert_eq!(
        net.nodes[1].table().resolve(&p("a")),
        crate::table::Resolution::Rw
    );
}

#[test]
fn anti_entropy_repairs_a_node_that_missed_pushes() {
    for ae in [true, false] {
        let mut net = Net::new(3, ae);
        net.run_until(Duration::from_secs(3));
        net.cut = Some(1);
        for k in 0..20 {
            net.nodes[0]
                .propose(&p(&format!("c/{k}")), Op::MarkRw)
                .unwrap();
        }
        net.nodes[0].mark_durable(u64::MAX);
        net.drain(0);
        let t = net.now;
        net.run_until(t + Duration::from_millis(50));
        net.nodes[2].propose(&p("c/0"), Op::Forget).unwrap();
        net.nodes[2].mark_durable(u64::MAX);
        net.drain(2);
        let t = net.now;
        net.run_until(t + Duration::from_millis(50));
        net.cut = None;
        let t = net.now;
        net.run_until(t + Duration::from_secs(2));
        assert_eq!(net.live(0), net.live(2));
        assert_eq!(net.live(0).len(), 19);
        assert_eq!(net.live(0) == net.live(1), ae, "anti-entropy {ae}");
    }
}

#[test]
fn claimed_sender_and_recipient_names() {
    let mut net = Net::new(3, true);
    net.run_until(Duration::from_secs(3));
    let name = |s: &str| Some(NodeName::new(s).unwrap());
    // A SWIM packet names its sender and recipient in its header.
    net.nodes[0].handle_timeout(net.now + Duration::from_secs(2));
    let mut swim = None;
    let mut sync = None;
    net.nodes[0].propose(&p("up/x"), Op::MarkRw).unwrap();
    net.nodes[0].mark_durable(u64::MAX);
    while let Some(t) = net.nodes[0].poll_transmit() {
        match t.channel {
            Channel::Datagram if t.to == addr(1) => swim = Some(t),
            Channel::Stream if t.to == addr(1) => sync = Some(t),
            _ => {}
        }
    }
    let swim = swim.expect("a SWIM packet to n1");
    assert_eq!(net.nodes[1].sender_name(addr(0), &swim.bytes), name("n0"));
    assert_eq!(
        net.nodes[0].recipient_name(addr(1), &swim.bytes),
        name("n1")
    );
    // Sync traffic names no one: the member known at the address is the claim.
    let sync = sync.expect("a push to n1");
    assert_eq!(net.nodes[1].sender_name(addr(0), &sync.bytes), name("n0"));
    assert_eq!(
        net.nodes[0].recipient_name(addr(1), &sync.bytes),
        name("n1")
    );
    // No member at that address: nothing to check.
    let stranger: SocketAddr = "10.9.9.9:7000".parse().unwrap();
    assert_eq!(net.nodes[1].sender_name(stranger, &sync.bytes), None);
    // Garbage claims nothing (the node refuses it anyway).
    let junk = [&b"WCFS"[..], &[super::wire::VERSION, 0], b"junk"].concat();
    assert_eq!(net.nodes[1].sender_name(addr(0), &junk), None);
}

#[test]
fn an_announce_to_a_seed_expects_no_name() {
    let mut net = Net::new(2, true);
    net.nodes[1].handle_timeout(Duration::ZERO);
    let t = net.nodes[1]
        .poll_transmit()
        .expect("an announce to the seed");
    assert_eq!(t.to, addr(0));
    assert_eq!(net.nodes[1].recipient_name(t.to, &t.bytes), None);
    assert_eq!(
        net.nodes[0].sender_name(addr(1), &t.bytes),
        Some(NodeName::new("n1").unwrap())
    );
}

#[test]
fn a_member_list_teaches_unknown_members_and_pushes_reach_them() {
    let mut cfg = Config::new(3);
    cfg.seeds = Vec::new();
    let me = Identity {
        addr: addr(0),
        replica: ReplicaId(100),
        generation: 0,
        name: NodeName::new("n0").unwrap(),
    };
    let mut a = Node::new(cfg, me, Table::new(ReplicaId(100), 0), 1);
    let other = |i: usize| {
        foca::Member::new(
            Identity {
                addr: addr(i),
                replica: ReplicaId(100 + i as u64),
                generation: 0,
                name: NodeName::new(&format!("n{i}")).unwrap(),
            },
            0,
            foca::State::Alive,
        )
    };
    let list = super::view::encode_list([other(1), other(2)].iter());
    let t = Duration::from_millis(1);
    a.handle(t, addr(1), &Message::Members { reply: true, list }.encode());
    let known: Vec<SocketAddr> = a.members().iter().map(|m| m.addr).collect();
    assert_eq!(known, vec![addr(1), addr(2)]);
    // Asked for ours: answered with a list.
    let mut answered = false;
    while let Some(tx) = a.poll_transmit() {
        if tx.to == addr(1)
            && matches!(
                Message::decode(&tx.bytes),
                Ok(Message::Members { reply: false, .. })
            )
        {
            answered = true;
        }
    }
    assert!(answered, "no member list sent back");
    a.propose(&p("x"), Op::MarkRw).unwrap();
    a.mark_durable(1);
    let mut pushed = Vec::new();
    while let Some(tx) = a.poll_transmit() {
        if matches!(Message::decode(&tx.bytes), Ok(Message::Push(_))) {
            pushed.push(tx.to);
        }
    }
    assert_eq!(pushed, vec![addr(1), addr(2)]);
}

#[test]
fn member_lists_stop_once_views_agree() {
    let mut net = Net::new(4, true);
    net.run_until(Duration::from_secs(5));
    for i in 0..4 {
        assert_eq!(net.nodes[i].members().len(), 3, "node {i} knows everyone");
    }
    let before: u64 = net.nodes.iter().map(|n| n.stats().member_lists_sent).sum();
    net.run_until(Duration::from_secs(10));
    let after: u64 = net.nodes.iter().map(|n| n.stats().member_lists_sent).sum();
    assert_eq!(
        before, after,
        "member lists keep flowing between agreeing views"
    );
}

#[test]
fn an_acked_push_lost_on_the_way_is_sent_again() {
    for acks in [true, false] {
        // No anti-entropy: only retransmission can repair the loss.
        let mut net = Net::new(3, false);
        for n in &mut net.nodes {
            n.cfg.push_acks = acks;
        }
        net.run_until(Duration::from_secs(3));
        net.cut = Some(2);
        net.nodes[0].propose(&p("a"), Op::MarkRw).unwrap();
        net.nodes[0].mark_durable(1);
        net.drain(0);
        let t = net.now;
        net.run_until(t + Duration::from_millis(1));
        net.cut = None;
        net.run_until(t + Duration::from_millis(100));
        let want = if acks {
            crate::table::Resolution::Rw
        } else {
            crate::table::Resolution::Ro
        };
        assert_eq!(
            net.nodes[1].table().resolve(&p("a")),
            crate::table::Resolution::Rw
        );
        assert_eq!(net.nodes[2].table().resolve(&p("a")), want, "acks={acks}");
        if acks {
            assert!(net.nodes[0].stats().push_retransmits >= 1);
            // Everything acked: nothing left to send again.
            assert!(net.nodes[0].acks.next_deadline().is_none());
        }
    }
}
