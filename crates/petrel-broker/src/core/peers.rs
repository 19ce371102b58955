//! The seam between one broker and the other nodes of a cluster.
//!
//! The engine knows nothing of how nodes find each other or agree; it
//! tells a [`Peers`] (the cluster layer, when there is one) two things and
//! waits on what it answers:
//!
//! * **interest**: this node's first subscription to a filter was made, or
//!   its last one removed. The cluster records that the node wants the
//!   filter, and the SUBACK waits until the other nodes know (so no
//!   message published elsewhere after the SUBACK can miss the new
//!   subscriber);
//! * **forward**: a message was published here. The cluster sends it to
//!   the nodes that want its topic, and the publisher's acknowledgement
//!   waits until they have taken it (a PUBACK is a promise on every node).
//!
//! A message that came from another node is delivered here with
//! [`Broker::deliver_forwarded`](crate::Broker::deliver_forwarded), which
//! never forwards it again: messages cross the cluster at most one hop.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use petrel_session::Message;

use super::router::SharedGroups;
use super::store::Commit;

/// What a [`Peers::claim`] answers, once the session is this node's: an
/// error refuses the CONNECT.
pub type Claim = Pin<Box<dyn Future<Output = Result<(), ClaimRefused>> + Send>>;

/// Why a [`Peers::claim`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRefused {
    /// The cluster could not agree (no majority): 0x88 Server unavailable
    /// (3.1.1: return code 3).
    Unavailable(String),
    /// The session belongs to another user (with `ownership` on): 0x87
    /// Not authorized (3.1.1: return code 5).
    NotYours,
}

/// What a [`Peers::forward`] did with a message.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// How many other nodes it went to.
    pub nodes: usize,
    /// When they have all taken it: the publisher's acknowledgement waits
    /// for it (an error refuses the message).
    pub commit: Commit,
    /// The shared groups this node serves for it: each group the message
    /// matches is served by one node of the cluster.
    pub here: SharedGroups,
    /// What is left to send: the engine runs it once this node has taken
    /// the message (stored its own copies), and never if it could not
    /// (the publisher is refused, and no other node has it). Its numbers
    /// add to `nodes` and `commit`.
    pub send: Option<Deferred>,
}

/// The sending part of a [`Forwarded`], run once this node has taken the
/// message: how many nodes it went to, and when they have taken it.
pub struct Deferred(pub Box<dyn FnOnce() -> (usize, Commit) + Send>);

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Deferred(..)")
    }
}

/// The other nodes of a cluster, as the engine sees them. Called on the
/// publish and subscribe paths (`interest` with the router's lock held):
/// quick, and never blocking (anything slow completes a [`Commit`] later).
pub trait Peers: Send + Sync + fmt::Debug + 'static {
    /// This node now has a subscription to `filter` (`wanted`), or no
    /// longer has any. Called once per change, in order, with the filter
    /// as subscribed (a shared subscription's `$share/GROUP/` prefix
    /// included). Its commit is when the other nodes know: a SUBACK waits
    /// for it; an unsubscribe does not.
    fn interest(&self, filter: &str, wanted: bool) -> Commit;

    /// Send `message`, published on this node, to the nodes that want its
    /// topic, and pick the node that serves each shared group it matches
    /// (telling each node its groups, and this one through
    /// [`Forwarded::here`]). Called before this node routes the message;
    /// the sending itself may wait in [`Forwarded::send`] until this node
    /// has taken it.
    /// Not called for `$SYS` topics (each node has its own) nor for
    /// messages that came from another node.
    fn forward(&self, message: &Message) -> Forwarded;

    /// Whether the cluster agrees retained messages ([`Peers::retain`]).
    /// If not (the default), each node keeps the retained messages that
    /// reach it.
    fn agrees_retained(&self) -> bool {
        false
    }

    /// With [`Peers::agrees_retained`]: `message`, published here with
    /// RETAIN (not on a `$SYS` topic), becomes its topic's retained
    /// message on every node (with an empty payload, the topic has none).
    /// The cluster agrees it and each node keeps it as it applies it, with
    /// [`Broker::set_retained`](crate::Broker::set_retained); no node
    /// keeps it as it arrives. The commit: when it is agreed (the
    /// publisher's acknowledgement waits for it).
    fn retain(&self, message: &Message) -> Commit {
        let _ = message;
        Commit::done()
    }

    /// Whether a new route can be agreed now (this node reaches a
    /// majority of the cluster). While it can't, a subscription that
    /// would need one is refused (5.0: 0x83 Implementation specific
    /// error; 3.1.1: 0x80 Failure), and subscriptions to filters this
    /// node routes already are granted.
    fn available(&self) -> bool {
        true
    }

    /// A CONNECT for `client_id` by `username` was authenticated on this
    /// node: make this node the owner of its session, bringing the
    /// session here (with
    /// [`Broker::import_session`](crate::Broker::import_session)) from the
    /// node that had it, or ending it there with `clean_start`. The
    /// CONNECT waits for the answer; an error refuses it.
    fn claim(&self, client_id: &str, clean_start: bool, username: Option<&str>) -> Claim {
        let _ = (client_id, clean_start, username);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The session of `client_id` ended on this node (its connection
    /// closed with no expiry, it expired, or it was discarded): this node
    /// no longer owns it. Not called for a session that moved away.
    fn released(&self, client_id: &str) {
        let _ = client_id;
    }
}
