//! The simulated network: one directed link per ordered pair of servers,
//! each with its own faults.
//!
//! What it does: decides, for every packet sent, whether it is dropped,
//! duplicated, and when each copy arrives (random delays reorder packets).
//! Faults are per direction, so one-way links, asymmetric loss and
//! message-type-selective loss on one link are all expressible.
//!
//! What it does not do: deliver packets (the simulator's event queue does)
//! or know anything about Raft beyond a packet's kind.

use crate::raft::{Message, MessageKind};
use crate::sim::app::AppState;
use rand::Rng;
use ringlog::{NodeId, Term};

/// Everything that travels between simulated servers.
#[derive(Clone, Debug)]
pub enum Packet {
    Raft(Message),
    /// A whole state-machine snapshot (the simulated application's state is
    /// small, so it travels as one packet).
    Snapshot {
        from: NodeId,
        to: NodeId,
        /// The sender's term (it sent the snapshot as leader of it).
        term: Term,
        state: AppState,
    },
}

/// Packet kinds for selective loss: Raft message kinds plus snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Raft(MessageKind),
    Snapshot,
}

impl Packet {
    pub fn from(&self) -> NodeId {
        match self {
            Packet::Raft(m) => m.from,
            Packet::Snapshot { from, .. } => *from,
        }
    }
    pub fn to(&self) -> NodeId {
        match self {
            Packet::Raft(m) => m.to,
            Packet::Snapshot { to, .. } => *to,
        }
    }
    pub fn kind(&self) -> PacketKind {
        match self {
            Packet::Raft(m) => PacketKind::Raft(m.kind()),
            Packet::Snapshot { .. } => PacketKind::Snapshot,
        }
    }
}

/// The faults of one directed link.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// The link carries nothing (partitions, one-way links).
    pub blocked: bool,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    pub delay_us_min: u64,
    pub delay_us_max: u64,
    /// Packet kinds this link loses, always.
    pub drop_kinds: Vec<PacketKind>,
}

impl Link {
    pub const DELAY_US_MIN: u64 = 50;
    pub const DELAY_US_MAX: u64 = 1_500;

    pub fn healthy() -> Link {
        Link {
            blocked: false,
            loss: 0.0,
            duplicate: 0.0,
            delay_us_min: Link::DELAY_US_MIN,
            delay_us_max: Link::DELAY_US_MAX,
            drop_kinds: Vec::new(),
        }
    }
}

/// All directed links between `nodes` servers, ids `1..=nodes`.
pub struct Network {
    nodes: usize,
    links: Vec<Link>,
    pub sent: u64,
    pub dropped: u64,
}

impl Network {
    pub fn new(nodes: usize) -> Network {
        Network {
            nodes,
            links: vec![Link::healthy(); (nodes + 1) * (nodes + 1)],
            sent: 0,
            dropped: 0,
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn link(&self, from: NodeId, to: NodeId) -> &Link {
        &self.links[from as usize * (self.nodes + 1) + to as usize]
    }

    pub fn link_mut(&mut self, from: NodeId, to: NodeId) -> &mut Link {
        assert!(from as usize <= self.nodes && to as usize <= self.nodes);
        &mut self.links[from as usize * (self.nodes + 1) + to as usize]
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        1..=self.nodes as NodeId
    }

    /// Heals every link.
    pub fn heal_all(&mut self) {
        for link in &mut self.links {
            *link = Link::healthy();
        }
    }

    /// Sets both directions between `a` and `b` blocked or open.
    pub fn set_blocked_both(&mut self, a: NodeId, b: NodeId, blocked: bool) {
        self.link_mut(a, b).blocked = blocked;
        self.link_mut(b, a).blocked = blocked;
    }

    /// Blocks every link except those within each group (clean partition).
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for a in 1..=self.nodes as NodeId {
            for b in 1..=self.nodes as NodeId {
                if a != b {
                    let same = group_of(a).is_some() && group_of(a) == group_of(b);
                    self.link_mut(a, b).blocked = !same;
                }
            }
        }
    }

    /// Whether `a` and `b` exchange packets in both directions without
    /// total blocking (they may still lose some).
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        !self.link(a, b).blocked && !self.link(b, a).blocked
    }

    /// Decides the fate of one packet: the delays (from now) of each copy
    /// that will arrive, empty if it is lost.
    pub fn route(&mut self, packet: &Packet, rng: &mut impl Rng) -> Vec<u64> {
        self.route_parts(packet.from(), packet.to(), packet.kind(), rng)
    }

    /// `route` for anything with a source, a destination and a kind.
    pub fn route_parts(
        &mut self,
        from: NodeId,
        to: NodeId,
        kind: PacketKind,
        rng: &mut impl Rng,
    ) -> Vec<u64> {
        self.sent += 1;
        let link = self.link(from, to);
        if link.blocked
            || link.drop_kinds.contains(&kind)
            || rng.gen_bool(link.loss.clamp(0.0, 1.0))
        {
            self.dropped += 1;
            return Vec::new();
        }
        let range = link.delay_us_min..=link.delay_us_max.max(link.delay_us_min);
        let duplicate = link.duplicate;
        let mut copies = vec![rng.gen_range(range.clone())];
        if rng.gen_bool(duplicate.clamp(0.0, 1.0)) {
            copies.push(rng.gen_range(range));
        }
        copies
    }
}
