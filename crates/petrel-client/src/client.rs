//! The handle applications hold, and the stream of messages they receive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use petrel_codec::{
    Properties, Publish, QoS, ReasonCode, SubAck, Subscription, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck,
};
use petrel_session::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::request::{Ack, AckToken, Command, Control, Status};
use crate::task::Task;

/// Commands waiting for the connection task at most; past it, calls wait
/// (and `try_` calls report full) — on top of the task's own `max_pending`.
const COMMAND_QUEUE: usize = 64;

/// A connected client: cheap to clone, `Send`, usable from any task —
/// including the one reading [`Messages`], since the connection task never
/// waits for the application (see the crate documentation).
///
/// Every call is cancel-safe: dropping a call's future before it returns
/// either leaves the request unsent, or sent and handled by the connection
/// task as usual (a dropped `publish` is still delivered; only its answer
/// is lost). No protocol state lives in the future.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    control: mpsc::Sender<Control>,
    status: watch::Receiver<Status>,
    assigned: watch::Receiver<Option<String>>,
}

/// The messages the broker delivers, in order. QoS 1 and 2 messages are
/// acknowledged to the broker (PUBACK, or PUBREC) as they enter this
/// stream's bounded buffer (`max_incoming` messages, at most 256), before
/// the application reads them; those that find it full wait in the
/// connection task unacknowledged, so a reader that falls behind holds
/// back the broker's sending (its in-flight window), never the client's
/// own publishes. A message acknowledged but not read yet is lost if the
/// process ends. Dropping the stream discards (and acknowledges) what
/// arrives. Ends when the client is closed.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<(Publish, Option<AckToken>)>,
}

impl Messages {
    /// The next message, or `None` once the client is closed. (With
    /// [`crate::ConnectOptions::manual_acks`], a QoS 1/2 message read this
    /// way is never acknowledged: use [`Messages::recv_ack`].)
    pub async fn recv(&mut self) -> Option<Publish> {
        self.rx.recv().await.map(|(p, _)| p)
    }

    /// The next message and, with [`crate::ConnectOptions::manual_acks`]
    /// and QoS 1 or 2, what acknowledges it ([`Client::ack`]); `None` once
    /// the client is closed.
    pub async fn recv_ack(&mut self) -> Option<(Publish, Option<AckToken>)> {
        self.rx.recv().await
    }
}

impl Stream for Messages {
    type Item = Publish;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Publish>> {
        self.rx.poll_recv(cx).map(|m| m.map(|(p, _)| p))
    }
}

/// Connect to the broker and start the connection task. Returns once the
/// first CONNACK accepted the connection, or with the reason it did not
/// (after retrying, if [`ConnectOptions::retry_first_connect`] is set and
/// the failure may pass); from then on the task reconnects by itself as
/// `options.reconnect` says.
pub async fn connect(options: ConnectOptions) -> Result<(Client, Messages), ClientError> {
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (control, control_rx) = mpsc::channel(8);
    let (messages_tx, messages_rx) = mpsc::channel(options.max_incoming.clamp(1, 256));
    let (status_tx, status) = watch::channel(Status::Connecting);
    let (assigned_tx, assigned) = watch::channel(None);
    let (first_tx, first_rx) = oneshot::channel();
    let task = Task::new(
        options,
        command_rx,
        control_rx,
        messages_tx,
        status_tx,
        assigned_tx,
    )?;
    tokio::spawn(task.run(first_tx));
    match first_rx.await {
        Ok(Ok(())) => Ok((
            Client {
                commands,
                control,
                status,
                assigned,
            },
            Messages { rx: messages_rx },
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Closed),
    }
}

impl Client {
    /// Publish a message. Completes when the broker has acknowledged it as
    /// its QoS requires (PUBACK for QoS 1, PUBCOMP for QoS 2), or for QoS 0
    /// once it is queued for the socket. While disconnected, messages wait
    /// (up to `max_pending`); past that, this call waits for room.
    pub async fn publish(&self, message: Message) -> Result<Ack, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish { message, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Queue a message for publishing, waiting only for room to queue it
    /// (as [`Client::publish`] does); the returned future gives the
    /// acknowledgement. Messages queued one after another are sent in that
    /// order, however their acknowledgements are awaited: a forwarder can
    /// keep many in flight and still keep their order.
    pub async fn publish_queued(
        &self,
        message: Message,
    ) -> Result<impl std::future::Future<Output = Result<Ack, ClientError>>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish { message, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(async move { rx.await.map_err(|_| ClientError::Closed)? })
    }

    /// Acknowledge a received message (with
    /// [`crate::ConnectOptions::manual_acks`]): PUBACK, or PUBREC for QoS 2.
    /// Acknowledge in the order the messages arrived. A QoS 1 message that
    /// arrived on a connection that has since been lost is not acknowledged
    /// (the broker sends it again); a QoS 2 one is, on the next connection.
    pub async fn ack(&self, token: AckToken) -> Result<(), ClientError> {
        self.control
            .send(Control::Ack(token))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Publish `payload` to `topic`, not retained, no properties.
    pub async fn publish_to(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<Ack, ClientError> {
        let topic = TopicName::try_from(topic).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.publish(Message::new(topic, payload.into(), qos)).await
    }

    /// Like [`Client::publish`], but never waits to queue: reports
    /// [`ClientError::Full`] instead — once the connection task holds
    /// `max_pending` messages and the hand-off to it (64 requests) is full
    /// too. The returned future gives the acknowledgement.
    pub fn try_publish(
        &self,
        message: Message,
    ) -> Result<impl std::future::Future<Output = Result<Ack, ClientError>>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .try_send(Command::Publish { message, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ClientError::Full,
                mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
            })?;
        Ok(async move { rx.await.map_err(|_| ClientError::Closed)? })
    }

    /// Subscribe to one filter at `qos`; returns the SUBACK (check its
    /// reason code: the granted QoS, or an error).
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<SubAck, ClientError> {
        let filter =
            TopicFilter::try_from(filter).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.subscribe_many(
            vec![Subscription {
                filter,
                options: SubscriptionOptions::qos(qos),
            }],
            Properties::new(),
        )
        .await
    }

    /// Subscribe to several filters with their options and 5.0 SUBSCRIBE
    /// properties (Subscription Identifier, User Properties); returns the
    /// SUBACK with one reason code per filter. Subscriptions are restored by
    /// the client if a reconnect finds that the broker kept no session.
    pub async fn subscribe_many(
        &self,
        subscriptions: Vec<Subscription>,
        properties: Properties,
    ) -> Result<SubAck, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                subscriptions,
                properties,
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Unsubscribe; returns the UNSUBACK with one reason code per filter.
    pub async fn unsubscribe(&self, filters: &[&str]) -> Result<UnsubAck, ClientError> {
        let filters = filters
            .iter()
            .map(|f| TopicFilter::try_from(*f).map_err(|e| ClientError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Unsubscribe {
                filters,
                properties: Properties::new(),
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Disconnect normally (the will is discarded) and stop the task.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, Properties::new())
            .await
    }

    /// Disconnect with a 5.0 reason code (0x04 asks the broker to publish
    /// the will) and properties (Session Expiry Interval, Reason String,
    /// User Properties). Heard even while other calls wait for room, and
    /// while disconnected. QoS 1/2 messages not yet acknowledged are
    /// answered with [`ClientError::Closed`]; a persistent session on the
    /// broker keeps what it acknowledged. A reason code or property the
    /// protocol does not allow is refused with the error, and nothing
    /// changes.
    pub async fn disconnect_with(
        &self,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        if self
            .control
            .send(Control::Disconnect {
                reason_code,
                properties,
                reply,
            })
            .await
            .is_err()
        {
            // Already closed: nothing left to disconnect.
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// 5.0 re-authentication (4.12.1): prove who the client is again, with
    /// the authenticator and method it connected with, without closing the
    /// connection. Resolves when the broker answers AUTH Success (and the
    /// authenticator accepts its last data); a broker that refuses closes
    /// the connection (which then reconnects as usual) and this reports
    /// the error.
    pub async fn reauthenticate(&self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Reauthenticate { reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Where the connection stands now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Wait until the status satisfies `f` (e.g. connected again).
    pub async fn wait_for(&self, f: impl FnMut(&Status) -> bool) -> Status {
        let mut status = self.status.clone();
        let result = match status.wait_for(f).await {
            Ok(s) => s.clone(),
            Err(_) => Status::Closed,
        };
        result
    }

    /// The client identifier the broker assigned (5.0, empty client id).
    pub fn assigned_client_id(&self) -> Option<String> {
        self.assigned.borrow().clone()
    }
}
