//! # petrel-broker
//!
//! The broker, in two layers:
//!
//! * **[`core`]** decides, without sockets. Its [`engine`](core::engine) is
//!   the one place a transport, a test, an embedding application (and
//!   later a bridge or a cluster node) asks: [`Broker::login`] decides a
//!   CONNECT (authentication, session ownership, takeover) and gives a
//!   [`Client`], which decides each PUBLISH, SUBSCRIBE and UNSUBSCRIBE
//!   (authorisation, retained messages, routing) and hands out the messages
//!   waiting for its session; [`Broker::tick`] expires sessions, publishes
//!   delayed wills and `$SYS`. Below the engine: the subscription trie
//!   ([`SubscriptionTree`]: 4.7 matching, `$share` groups), the
//!   [`Router`] (granted QoS, No Local, Retain As Published, Subscription
//!   Identifiers), the [`RetainedTree`], the [`SessionRegistry`] (new,
//!   resumed, taken over, expired) and the [`WillQueue`]; and
//!   [`core::auth`]: the password file, the ACL file, SCRAM, tokens, and the
//!   [`Authenticator`] / [`Authorizer`] traits an application implements.
//! * **[`Server`]** moves bytes: tokio listeners and one connection driver
//!   per connection, which decodes, drives a server-role
//!   [`petrel_session::Connection`], asks the engine and writes what it
//!   answers. Quiet connections hibernate. A payload is received once and
//!   shared (`Bytes`) by every subscriber; large ones are written from the
//!   publisher's buffer by vectored writes.
//!
//! Each session has a bounded queue (the offline queue too): a slow
//! subscriber loses messages past its bound, counted, and never slows the
//! publisher or other subscribers (see [`config::Limits`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use petrel_broker::{Broker, BrokerConfig, Server};
//!
//! let broker = Broker::new(BrokerConfig::default())?; // 127.0.0.1:1883
//! let server = Server::bind(broker.clone()).await?;
//! tokio::spawn(server.run());
//! // ... later
//! broker.shutdown();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod durable;
pub mod journal;
mod persist;
mod server;
mod stats;

pub use crate::config::{BrokerConfig, ConfigError, Durability, LogFormat};
pub use crate::core::auth::{
    Action, AuthExchange, AuthMethod, Authenticator, Authorizer, BoxFuture, CertificateIdentity,
    ClientInfo, Credentials, Decision, Exchange, Grant, Identity, Permissions, Verdict,
};
pub use crate::core::engine::{
    Accepted, Broker, BrokerBuilder, BuildError, Client, ClientSummary, Discard, Drain, Exported,
    Imported, Internal, Kick, ListenerConnections, ListenerRules, Login, MetricsSnapshot, Outbound,
    Peer, ReauthStep, Reconfigured, Reloaded, SessionSummary, Step, SubscriptionSummary,
};

pub use crate::core::peers::{Claim, ClaimRefused, Deferred, Forwarded, Peers};
pub use crate::core::retained::RetainedTree;
pub use crate::core::router::{Delivery, Routed, Router, SharedGroups, Subscription};
pub use crate::core::sessions::{
    Connected, ConnectionId, Handover, Released, SessionRegistry, SessionView, NEVER,
};
pub use crate::core::store::{Commit, MemoryStore, Op, Store, Table, Ticket};
pub use crate::core::subscriptions::{Matched, SubscriptionTree};
pub use crate::core::wills::WillQueue;
pub use crate::durable::DiskStore;
pub use crate::server::{Certificates, LocalConnector, Server};
pub use crate::stats::{
    BridgeCounters, BridgeSnapshot, DisconnectReason, HistogramSnapshot, LatencyHistogram,
    QueueBound, StatsSnapshot, LATENCY_BOUNDS_US,
};
