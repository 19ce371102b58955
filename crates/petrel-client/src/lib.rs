//! # petrel-client
//!
//! An async MQTT client on tokio, built on `petrel-codec` and
//! `petrel-session`: MQTT 3.1.1 and 5.0 over TCP, TLS (rustls with the
//! *ring* provider), WebSocket, secure WebSocket, QUIC (quinn) or a Unix
//! socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), petrel_client::ClientError> {
//! use petrel_client::{connect, ConnectOptions, QoS};
//!
//! let (client, mut messages) = connect(ConnectOptions::new("127.0.0.1", 1883, "demo")).await?;
//! client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
//! let ack = client.publish_to("sensors/kitchen", "21.5", QoS::AtLeastOnce).await?;
//! assert!(!ack.reason_code.is_error());
//! while let Some(m) = messages.recv().await {
//!     println!("{} {:?}", m.topic.as_str(), m.payload);
//!     // Publishing from the task that reads messages never deadlocks.
//!     client.publish_to("sensors/seen", m.payload, QoS::AtLeastOnce).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Transports
//! [`ConnectOptions::from_url`] reads `mqtt://`, `mqtts://`, `ws://`,
//! `wss://`, `quic://` and `unix://` URLs; or set
//! [`ConnectOptions::transport`] and [`ConnectOptions::tls`] yourself.
//! TLS is configured by [`TlsOptions`] (CA file or directory, client
//! certificate, versions, cipher suites) or by a rustls
//! [`ClientConfig`](rustls::ClientConfig) of your own
//! ([`ConnectOptions::tls_config`]; [`rustls`] is re-exported so that the
//! versions match).
//!
//! ```no_run
//! # async fn demo() -> Result<(), petrel_client::ClientError> {
//! use petrel_client::{connect, ConnectOptions};
//!
//! let options = ConnectOptions::from_url("wss://user:secret@broker.example/mqtt", "demo")?
//!     .retry_first_connect(true);
//! let (client, messages) = connect(options).await?;
//! # Ok(()) }
//! ```
//!
//! ## How it works
//! [`connect`] spawns one connection task that owns the socket and a
//! client-role [`petrel_session::Connection`], and returns a cloneable,
//! `Send` [`Client`] that talks to the task over a bounded channel, and the
//! [`Messages`] stream. The user never polls an event loop.
//!
//! * **Acknowledgements.** [`Client::publish`] completes when the broker
//!   acknowledged the message as its QoS requires (PUBACK, or PUBCOMP), with
//!   the 5.0 reason code and properties; `subscribe` and `unsubscribe` return
//!   the SUBACK and UNSUBACK with one reason code per filter.
//! * **No deadlock.** The task never waits for the application: it always
//!   reads the socket and hands received messages to the bounded
//!   [`Messages`] buffer (`max_incoming` messages, at most 256). A QoS 1/2
//!   message is acknowledged as it enters that buffer — before the
//!   application reads it — and one that finds the buffer full waits in the
//!   task unacknowledged, so a slow reader holds back the broker (through
//!   its in-flight window), not the client. A handler may publish and await
//!   the acknowledgement from inside the loop that reads [`Messages`].
//! * **Reconnect.** A lost connection is re-established with exponential
//!   backoff and jitter. The session resumes: QoS 1/2 messages in flight are
//!   resent with DUP; if the broker kept no session, unacknowledged messages
//!   are sent again as new and the client restores its subscriptions.
//! * **Backpressure, never an unbounded queue.** Publishes made while
//!   disconnected, or while the in-flight window (the broker's Receive
//!   Maximum) is full, wait in the session up to `max_pending`; past that
//!   `publish` waits and [`Client::try_publish`] reports
//!   [`ClientError::Full`].
//! * **5.0 flow control.** Receive Maximum, Maximum Packet Size and topic
//!   aliases are honoured both ways by the session machine.
//!
//! ## Cancel safety
//! Every call is cancel-safe. Dropping a call's future before it queued the
//! request leaves nothing sent; dropping it afterwards only discards the
//! answer — a publish is still delivered and acknowledged. All protocol
//! state lives in the connection task, never in a future.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
mod options;
mod request;
mod scram;
mod stream;
mod task;
mod transport;

pub use client::{connect, Client, Messages};
pub use error::{BoxError, ClientError};
pub use options::{
    Authenticator, ConnectOptions, LastWill, Reconnect, TlsOptions, TlsVersion, Transport,
};
pub use petrel_codec::{
    MqttString, Properties, Protocol, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscription, SubscriptionId, SubscriptionOptions, TopicFilter, TopicName, UnsubAck,
    UserProperty,
};
pub use petrel_session::Message;
pub use request::{Ack, AckToken, Status};
/// The rustls this crate is built with, for [`ConnectOptions::tls_config`]
/// and [`TlsOptions::cipher_suites`].
pub use rustls;
pub use scram::{ScramAuthenticator, ScramMechanism};
pub use stream::{Connector, Io, Opening};
pub use transport::open_stream;
