//! # petrel-cluster
//!
//! Several Petrel brokers that clients see as one: a message published on
//! any node reaches the matching subscribers on every node.
//!
//! ## How it works
//! * **What must be agreed goes through [openraft]**: which node wants
//!   which topic filter (a node writes a route when its first local
//!   subscriber of a filter arrives and when its last one leaves, in
//!   batches), and the membership. The Raft log, vote and snapshot are kept
//!   in the broker's own durable store ([`petrel_broker::Table::Cluster`]),
//!   so a restarted node rejoins from its data directory.
//! * **Messages never go through consensus**: each node keeps a link to
//!   every other and sends a message published on it only to the nodes
//!   whose routes match its topic. The receiving node delivers it to its
//!   own subscribers and never forwards it again.
//! * **Retained messages are agreed**: a retained PUBLISH is written to
//!   the log ([`Command::Retain`]) and each node keeps it as it applies it
//!   (snapshots carry every retained message), so a node that was down
//!   finds what changed meanwhile.
//! * **A shared subscription is one group across the nodes**: the node a
//!   message is published on picks one node (of those with a member) for
//!   each group its topic matches, and tells each node which groups it
//!   serves.
//! * **Acknowledgements are promises on every node**: a SUBACK is sent once
//!   the route is committed and every node that answers has applied it,
//!   so a message published anywhere after the SUBACK reaches the new
//!   subscriber; a PUBACK (PUBREC) waits until every node the message went
//!   to has taken it (and stored it for its persistent sessions), or has
//!   been given up on: a node whose link failed, or that left it
//!   unanswered for `forward_timeout`, is taken as down for a while and
//!   the message counted as lost there (a node that answers it could not
//!   store it fails the acknowledgement).
//! * **Durability of the consensus state** follows the broker's: with
//!   `process` (the default) a vote and the log survive the process being
//!   killed, with `fsync` also a power loss, which Raft's promises assume
//!   for every node at once; a cluster refuses `durability = "none"`.
//!
//! * **Membership changes at run time** ([`Cluster::join`],
//!   [`Cluster::leave`]): a node joins as a learner with a full copy of the
//!   log, and learners that have caught up are made voters while the
//!   cluster has fewer than three (five once it has five nodes).
//! * **Each write is applied once**: it carries its node's run and number
//!   ([`Proposal`]), so one sent again, or arriving late, changes nothing.
//!
//! ## Limits of this version
//! A node that is down misses the messages published meanwhile for its
//! subscribers (counted as lost by the sender).
#![forbid(unsafe_code)]

mod net;
mod node;
mod store;
mod sync;
mod types;

pub use node::{Cluster, ClusterCounters, ClusterError};
pub use store::{LogStore, StateMachine};
pub use types::{Applied, Command, NodeId, Origin, Proposal, Routes, TypeConfig};
