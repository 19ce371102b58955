//! # petrel-broker
//!
//! The broker. This release holds the first pieces of its core, the two
//! indexes every PUBLISH and every SUBSCRIBE go through:
//!
//! * [`SubscriptionTree`]: topic filters in a per-level trie, matched against
//!   a topic name with the 4.7 rules (`+`, `#`, `sport/#` matching `sport`,
//!   `$`-topics unmatched by leading wildcards) and 4.8.2 shared
//!   subscriptions grouped per share name. Matching walks only the branches a
//!   topic can reach, so its cost follows the topic's depth and the number of
//!   matches, not the number of subscriptions.
//! * [`RetainedTree`]: retained messages by topic, looked up with a filter by
//!   walking the same kind of trie, never scanning every retained topic.
//! * [`Router`]: the subscription index plus the rules that turn a match into
//!   deliveries — granted QoS, No Local, Retain As Published, Subscription
//!   Identifiers, one copy per subscriber for overlapping subscriptions, one
//!   member per shared group.
//! * [`SessionRegistry`]: sessions by client identifier — new, resumed with
//!   their [`petrel_session::SessionState`], taken over by a new connection
//!   (the old one is told to close and hands the state on), kept for their
//!   expiry interval and ended when it passes.
//! * [`WillQueue`]: wills waiting for their delay or their session's end.
//!
//! `$SYS`, the tokio server and the `petrel broker` binary build on these.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;

pub use crate::core::retained::RetainedTree;
pub use crate::core::router::{Delivery, Routed, Router, Subscription};
pub use crate::core::sessions::{Connected, ConnectionId, Handover, SessionRegistry, NEVER};
pub use crate::core::subscriptions::{Matched, SubscriptionTree};
pub use crate::core::wills::WillQueue;
