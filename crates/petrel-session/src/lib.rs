//! # petrel-session
//!
//! The MQTT protocol's rules — connection lifecycle, keep alive, packet
//! identifiers, the QoS 1 and QoS 2 flows, 5.0 flow control and topic
//! aliases, session resumption — as a state machine with no I/O, no async
//! runtime and no clock. The client and the broker both drive it.
//!
//! ## Driving a [`Connection`]
//!
//! The caller owns the socket and the clock; the machine owns the rules.
//!
//! * **In:** decoded packets with [`Connection::handle_packet`] (or a codec
//!   error with [`Connection::handle_decode_error`]); the passage of time with
//!   [`Connection::handle_timeout`]; application commands
//!   ([`Connection::publish`], [`Connection::subscribe`],
//!   [`Connection::disconnect`], and on the server [`Connection::accept`],
//!   [`Connection::reject`], [`Connection::suback`], …). Every call takes
//!   `now`.
//! * **Out**, after each call: drain [`Connection::poll_transmit`] (packets to
//!   encode and write, in order), drain [`Connection::poll_event`] (what the
//!   application must know), and read [`Connection::poll_timeout`] (when to
//!   call `handle_timeout` next).
//!
//! A server machine starts with [`Connection::server`], reports
//! [`Event::ConnectRequest`], and waits for the application to accept or
//! reject — authentication is always the application's decision. A client
//! machine starts with [`Connection::client`], which queues the CONNECT.
//!
//! When the connection ends, [`Connection::take_state`] takes out the
//! [`SessionState`] (messages in flight both ways, QoS 2 identifiers awaiting
//! PUBREL, messages waiting to be sent); the next connection of the same
//! session starts from it, on either side. [`SessionState::snapshot`] turns it
//! into a serde value for storage.
//!
//! Because every protocol decision happens inside these synchronous calls, an
//! async driver can be cancelled at any await without losing an
//! acknowledgement: the machine has already recorded it.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use petrel_codec::{Connect, MqttString, Packet, Protocol, QoS, TopicName};
//! use petrel_session::{Accept, Config, Connection, Event, Message, SessionState};
//!
//! let now = Instant::now();
//! let connect = Connect::new(Protocol::V5, MqttString::from_static("c1"));
//! let mut client = Connection::client(Config::default(), connect, SessionState::new(), now).unwrap();
//! let mut server = Connection::server(Config::default(), now);
//!
//! // Ferry packets between the two machines (a real driver encodes them onto a socket).
//! fn pump(from: &mut Connection, to: &mut Connection, now: Instant) {
//!     while let Some(p) = from.poll_transmit() {
//!         to.handle_packet(now, p).unwrap();
//!     }
//! }
//! pump(&mut client, &mut server, now);
//! assert!(matches!(server.poll_event(), Some(Event::ConnectRequest(_))));
//! server.accept(now, Accept::default()).unwrap();
//! pump(&mut server, &mut client, now);
//! assert!(matches!(client.poll_event(), Some(Event::Connected { .. })));
//!
//! let msg = Message::new(TopicName::from_static("a/b"), Bytes::from_static(b"hi"), QoS::ExactlyOnce);
//! let id = client.publish(now, msg).unwrap();
//! pump(&mut client, &mut server, now); // PUBLISH
//! pump(&mut server, &mut client, now); // PUBREC
//! pump(&mut client, &mut server, now); // PUBREL
//! pump(&mut server, &mut client, now); // PUBCOMP
//! assert!(matches!(server.poll_event(), Some(Event::Message(_))));
//! assert!(matches!(client.poll_event(), Some(Event::Published { id: done, .. }) if done == id));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod connection;
mod error;
#[cfg(fuzzing)]
pub mod fuzz;
mod state;

pub use config::Config;
pub use connection::{
    Accept, Change, CloseReason, Connection, DropReason, Event, Hibernated, PeerLimits, Role,
};
pub use error::{ProtocolError, SendError};
pub use state::{Message, MessageId, SessionState, Snapshot};
