//! The limits and timers one side of a connection runs with.

use std::num::NonZeroU16;
use std::time::Duration;

/// What this side of the connection accepts and how long it waits.
/// Every limit is finite; the defaults suit a broker or a client alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most unacknowledged QoS 1 and 2 PUBLISHes we accept from a 5.0 peer at
    /// once, sent to it as Receive Maximum; a peer that exceeds it is
    /// disconnected with 0x93. A 3.1.x client can't be told, but a server
    /// holds it to the same number of QoS 2 messages awaiting their PUBREL,
    /// and closes the connection past it. Default 128.
    pub receive_maximum: NonZeroU16,
    /// Most of our own QoS 1 and 2 PUBLISHes in flight at once, whatever the
    /// peer's Receive Maximum allows. Default 128.
    pub max_inflight: NonZeroU16,
    /// Messages accepted for sending while the in-flight window is full;
    /// past this, [`crate::SendError::QueueFull`]. Default 1000.
    pub max_pending: usize,
    /// SUBSCRIBE and UNSUBSCRIBE requests awaiting their acknowledgement
    /// (client role). Default 32.
    pub max_pending_subscriptions: usize,
    /// Largest packet we accept, told to a 5.0 peer as Maximum Packet Size
    /// and enforced by the decoder given [`Config::codec_limits`]. Default 1 MiB.
    pub maximum_packet_size: u32,
    /// Highest topic alias we accept from the peer (5.0). Default 16.
    pub topic_alias_maximum: u16,
    /// Server role: time a new connection has to send CONNECT. Default 10 s.
    pub connect_timeout: Duration,
    /// Client role: time to wait for CONNACK, and for PINGRESP after a
    /// PINGREQ, before declaring the link dead. Default 10 s.
    pub response_timeout: Duration,
    /// Acknowledge received QoS 1 and 2 messages (PUBACK, PUBREC) only when
    /// the application calls [`crate::Connection::ack`], in the order it
    /// took them ([MQTT-4.6.0-2]), instead of on receipt. A driver that hands
    /// messages to a bounded queue uses it so that the peer's own flow
    /// control (our Receive Maximum, its in-flight window) bounds what it
    /// holds, and it never has to stop reading the socket. Default false.
    pub manual_acks: bool,
}

impl Config {
    /// The codec limits that go with this configuration: a driver decodes
    /// with these, so the Maximum Packet Size we advertise is the one the
    /// decoder enforces.
    pub fn codec_limits(&self) -> petrel_codec::Limits {
        petrel_codec::Limits {
            max_packet_size: self.maximum_packet_size,
            ..petrel_codec::Limits::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            receive_maximum: NonZeroU16::new(128).unwrap_or(NonZeroU16::MIN),
            max_inflight: NonZeroU16::new(128).unwrap_or(NonZeroU16::MIN),
            max_pending: 1000,
            max_pending_subscriptions: 32,
            maximum_packet_size: 1024 * 1024,
            topic_alias_maximum: 16,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            manual_acks: false,
        }
    }
}
