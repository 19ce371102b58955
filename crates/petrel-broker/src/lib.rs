//! # petrel-broker
//!
//! The broker. Its core holds the indexes and registries every PUBLISH,
//! SUBSCRIBE and CONNECT go through, without sockets:
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
//!
//! Around the core, the server:
//!
//! * [`Broker`] holds the shared state. Matching and fan-out run in each
//!   publisher's own task under a read lock of the subscription index, so
//!   publishers on different cores route at once; decisions about one client
//!   id (connect, takeover, release, expiry) are serialised by one mutex; no
//!   lock is held across an await.
//! * [`Server`] binds the configured listeners and runs one task per
//!   connection, driving `petrel-codec` and a server-role
//!   [`petrel_session::Connection`]. A payload is received once and shared
//!   (`Bytes`) by every subscriber; large ones are written from the
//!   publisher's buffer by vectored writes.
//! * Each session has a bounded queue (the offline queue too): a slow
//!   subscriber loses messages past its bound, counted, and never slows the
//!   publisher or other subscribers (see [`config::Limits`]).
//! * `$SYS/broker/...` topics as Mosquitto names them, every
//!   `sys_interval` seconds.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use petrel_broker::{Broker, BrokerConfig, Server};
//!
//! let broker = Broker::new(BrokerConfig::default()); // 127.0.0.1:1883
//! let server = Server::bind(broker.clone()).await?;
//! tokio::spawn(server.run());
//! // ... later
//! broker.shutdown();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
pub mod config;
mod connection;
pub mod core;
mod dormant;
mod mailbox;
mod outq;
mod persist;
mod server;
mod stats;
mod sys;

pub use crate::broker::Broker;
pub use crate::config::{BrokerConfig, ConfigError};
pub use crate::core::retained::RetainedTree;
pub use crate::core::router::{Delivery, Routed, Router, Subscription};
pub use crate::core::sessions::{Connected, ConnectionId, Handover, SessionRegistry, NEVER};
pub use crate::core::subscriptions::{Matched, SubscriptionTree};
pub use crate::core::wills::WillQueue;
pub use crate::server::Server;
pub use crate::stats::StatsSnapshot;
