//! Deciding a CONNECT: the protocol's checks, authentication (with the
//! per-address throttle), session ownership, and the session itself (new,
//! resumed, or taken over from another connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_codec::{Auth, Connect, MqttString, Properties, Protocol, QoS, ReasonCode};
use petrel_session::{Accept, Message};
use tokio::sync::oneshot;

use super::attach::{Attach, Attached};
use super::client::{Client, ConnInfo, Reach, Settled};
use super::rules::ListenerRules;
use super::{Engine, Security};
use crate::core::auth::throttle::{Admission, Ticket};
use crate::core::auth::{
    Access, AuthExchange, CertificateIdentity, Credentials, Exchange, Grant, Identity, Verdict,
};
use crate::core::queue::detach;
use crate::core::sessions::{ConnectionId, Handover, NEVER};
use crate::core::{is_sys, lock, own_connection_state, too_deep};
use crate::stats::Stats;

/// How long a connection waits for another to hand over the session it
/// takes over, beyond the connect timeout (the holder writes its
/// DISCONNECT within its close flush).
pub(super) const HANDOVER_SLACK: Duration = Duration::from_secs(4);

/// What the transport knows of the peer.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// Its address, for logs and the per-address throttle.
    pub addr: Option<SocketAddr>,
    /// The identity of the client certificate the transport verified.
    pub certificate: Option<CertificateIdentity>,
    /// What the listener it came through allows.
    pub rules: Arc<ListenerRules>,
    /// A connection the program made to itself, never one from the
    /// network (a bridge's local side, opened by [`crate::LocalConnector`]).
    pub internal: Option<Internal>,
}

/// What a connection the program made to itself is: a user authenticated
/// without credentials that may publish, subscribe and receive anything
/// (except publish to `$SYS`), and the bounds of its session's queue.
#[derive(Clone, Debug)]
pub struct Internal {
    /// Its user name (logs, the admin API).
    pub user: Arc<str>,
    /// Its session queue's own bounds, instead of the broker's.
    pub queue: Option<Arc<crate::stats::QueueBound>>,
}

/// The engine's answer to a CONNECT, or to an AUTH during its exchange.
#[derive(Debug)]
pub enum Step {
    /// Send AUTH 0x18 Continue Authentication with these properties; give
    /// the client's answer to [`Login::auth`].
    Continue(Properties),
    /// Accepted: give `accept` to the connection's session machine and keep
    /// the [`Client`].
    Accept(Box<Accepted>),
    /// Refused: reject the CONNECT with this reason (3.1.1 clients get the
    /// matching return code) and these CONNACK properties.
    Refuse(ReasonCode, Properties),
}

/// An accepted CONNECT.
#[derive(Debug)]
pub struct Accepted {
    /// The client, as the engine knows it from now on.
    pub client: Client,
    /// For [`petrel_session::Connection::accept`]: Session Present, the
    /// session's state and the CONNACK properties.
    pub accept: Accept,
}

enum State {
    New,
    /// An enhanced authentication exchange is under way.
    Exchange(Box<dyn AuthExchange>),
    /// Waiting for another connection to hand over the session.
    Waiting {
        connection: ConnectionId,
        rx: oneshot::Receiver<Handover>,
    },
    Done,
}

/// One CONNECT being decided. Dropped while it waits for a takeover (its
/// connection gave up), it gives up its place cleanly.
pub struct Login {
    engine: Arc<Engine>,
    connect: Connect,
    peer: Peer,
    state: State,
    /// Set once the protocol's checks pass.
    prepared: Option<Box<Prepared>>,
    /// The throttle's ticket for this attempt, until its outcome is told.
    ticket: Option<Ticket>,
}

impl Login {
    /// The peer's address, as its transport gave it.
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.connect.client_id.as_str())
            .field("peer", &self.peer.addr)
            .finish_non_exhaustive()
    }
}

/// What the protocol's checks settled before authentication.
struct Prepared {
    client_id: Arc<str>,
    expiry: u32,
    props: Properties,
    will: Option<(Message, Duration)>,
    security: Arc<Security>,
    reach: Arc<Reach>,
    /// After authentication: who the client is.
    access: Option<Arc<Access>>,
}

fn refuse(reason: ReasonCode) -> Step {
    Step::Refuse(reason, Properties::new())
}

impl super::Broker {
    /// Begin deciding a CONNECT that arrived from `peer`.
    pub fn login(&self, connect: Connect, peer: Peer) -> Login {
        Login {
            engine: self.engine.clone(),
            connect,
            peer,
            state: State::New,
            prepared: None,
            ticket: None,
        }
    }
}

impl Login {
    /// The client identifier the CONNECT carried.
    pub fn client_id(&self) -> &str {
        self.connect.client_id.as_str()
    }

    /// Decide the CONNECT: call once, first.
    pub async fn start(&mut self) -> Step {
        let step = self.begin().await;
        self.counted(step)
    }

    /// Count the CONNACK a step sends.
    fn counted(&self, step: Step) -> Step {
        match &step {
            Step::Accept(_) => self.engine.stats.connack(0),
            Step::Refuse(rc, _) => self.engine.stats.connack(rc.0),
            Step::Continue(_) => {}
        }
        step
    }

    async fn begin(&mut self) -> Step {
        if !matches!(self.state, State::New) {
            return refuse(ReasonCode::PROTOCOL_ERROR);
        }
        self.state = State::Done;
        if !self.peer.rules.accepts(self.connect.protocol) {
            tracing::info!(client_id = %self.connect.client_id.as_str(), protocol = self.connect.protocol.version(), "protocol version not accepted on this listener");
            return self.refused(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        }
        if let Some(step) = self.drained() {
            return step;
        }
        let prepared = match self.prepare() {
            Ok(p) => p,
            Err(reason) => return self.refused(reason),
        };
        self.prepared = Some(Box::new(prepared));
        let credentials = self.credentials();
        // The throttle first: a flood from one address costs nothing more.
        if let Some(ip) = self.peer.addr.map(|a| a.ip()) {
            let (admission, ticket) = lock(&self.engine.throttle).admit(
                ip,
                credentials.username.as_deref(),
                Instant::now(),
            );
            self.ticket = ticket;
            match admission {
                Admission::Now => {}
                Admission::After(wait) => tokio::time::sleep(wait).await,
                Admission::Refuse => {
                    Stats::add(&self.engine.stats.auth_failures, 1);
                    tracing::warn!(peer = %ip, client_id = %credentials.client_id, "login refused: too many failures from this address");
                    return self.refused(ReasonCode::SERVER_BUSY);
                }
            }
        }
        let security = self.security();
        if let Some(name) = self.connect.properties.authentication_method() {
            // 5.0 enhanced authentication ([MQTT-4.12.0-1]: an unknown
            // method is refused with 0x8C, then the connection closes).
            let method = security
                .method(name.as_str())
                .filter(|_| self.peer.rules.allows(name.as_str()));
            let Some(method) = method else {
                return self.failed(
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    "no such authentication method",
                );
            };
            let mut exchange = method.start(&credentials);
            let step = exchange
                .step(self.connect.properties.authentication_data())
                .await;
            return self.exchange_step(exchange, step).await;
        }
        if let Some(internal) = &self.peer.internal {
            let name = internal.user.to_string();
            return self
                .authenticated(Grant {
                    identity: Identity::Named(name),
                    permissions: Some(Arc::new(crate::core::auth::Unrestricted)),
                })
                .await;
        }
        let mut verdict = Verdict::Pass;
        let rules = self.peer.rules.clone();
        let authenticators = || {
            security
                .authenticators
                .iter()
                .filter(|a| rules.allows(a.name()))
        };
        for a in authenticators() {
            verdict = a.authenticate(&credentials).await;
            if !matches!(verdict, Verdict::Pass) {
                break;
            }
        }
        match verdict {
            Verdict::Allow(grant) => self.authenticated(grant).await,
            Verdict::Deny(reason) => self.failed(reason, "credentials refused"),
            Verdict::Pass => {
                let presented = credentials.username.is_some() || credentials.password.is_some();
                if presented && authenticators().next().is_some() {
                    // Nobody knows these credentials.
                    self.failed(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "unknown user")
                } else if security.allow_anonymous && rules.allows("anonymous") {
                    // With no method configured, credentials are not checked
                    // (as Mosquitto without a password file): the client is
                    // anonymous, whatever user name it sent.
                    self.authenticated(Grant {
                        identity: Identity::Nobody,
                        permissions: None,
                    })
                    .await
                } else {
                    self.failed(
                        ReasonCode::NOT_AUTHORIZED,
                        "anonymous access is not allowed",
                    )
                }
            }
        }
    }

    /// The client's AUTH during an enhanced authentication exchange.
    pub async fn auth(&mut self, auth: Auth) -> Step {
        let step = self.continue_auth(auth).await;
        self.counted(step)
    }

    async fn continue_auth(&mut self, auth: Auth) -> Step {
        let State::Exchange(mut exchange) = std::mem::replace(&mut self.state, State::Done) else {
            return refuse(ReasonCode::PROTOCOL_ERROR);
        };
        if auth.reason_code != ReasonCode::CONTINUE_AUTHENTICATION {
            // [MQTT-4.12.0-3]: the client's answer carries 0x18.
            return self.failed(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH other than 0x18 during CONNECT",
            );
        }
        let step = exchange.step(auth.properties.authentication_data()).await;
        self.exchange_step(exchange, step).await
    }

    async fn exchange_step(&mut self, exchange: Box<dyn AuthExchange>, step: Exchange) -> Step {
        let method = self.connect.properties.authentication_method();
        match step {
            Exchange::Continue(data) => {
                self.state = State::Exchange(exchange);
                let mut props = Properties::new();
                props.set_authentication_method(method);
                props.set_authentication_data(Some(data));
                Step::Continue(props)
            }
            Exchange::Success { grant, data } => {
                if let Some(p) = &mut self.prepared {
                    // The CONNACK names the method and carries its last data.
                    p.props.set_authentication_method(method);
                    p.props.set_authentication_data(data);
                }
                self.authenticated(grant).await
            }
            Exchange::Deny(reason) => self.failed(reason, "enhanced authentication failed"),
        }
    }

    /// While the broker is drained: the refusal that sends the client
    /// elsewhere (a 5.0 client's Server Reference says where, 4.11 Server
    /// redirection). A connection the program made to itself is let in.
    fn drained(&self) -> Option<Step> {
        if !self.engine.drained() || self.peer.internal.is_some() {
            return None;
        }
        Stats::add(&self.engine.stats.connections_refused, 1);
        if !self.connect.protocol.is_v5() {
            return Some(refuse(ReasonCode::SERVER_UNAVAILABLE));
        }
        let mut props = Properties::new();
        props.set_server_reference(self.engine.server_reference());
        Some(Step::Refuse(ReasonCode::USE_ANOTHER_SERVER, props))
    }

    fn security(&self) -> Arc<Security> {
        self.prepared
            .as_ref()
            .map_or_else(|| self.engine.security(), |p| p.security.clone())
    }

    fn credentials(&self) -> Credentials {
        let c = &self.connect;
        Credentials {
            client_id: self
                .prepared
                .as_ref()
                .map_or_else(|| Arc::from(c.client_id.as_str()), |p| p.client_id.clone()),
            username: c.username.as_ref().map(|u| u.as_str().to_string()),
            password: c.password.clone(),
            peer: self.peer.addr,
            protocol: c.protocol,
            certificate: self.peer.certificate.clone(),
        }
    }

    fn refused(&self, reason: ReasonCode) -> Step {
        Stats::add(&self.engine.stats.connections_refused, 1);
        refuse(reason)
    }

    /// Authentication failed: logged with the peer's address, counted
    /// against it.
    fn failed(&mut self, reason: ReasonCode, why: &str) -> Step {
        Stats::add(&self.engine.stats.auth_failures, 1);
        let peer = self
            .peer
            .addr
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::warn!(
            peer,
            client_id = %self.connect.client_id.as_str(),
            username = self.connect.username.as_ref().map_or("", |u| u.as_str()),
            reason = %reason,
            why,
            "authentication failed"
        );
        // No credentials, no guess: such a refusal does not count.
        let guessed = self.presented_credentials();
        self.told_throttle(guessed.then_some(false));
        self.refused(reason)
    }

    /// Tell the throttle how the attempt it admitted ended: its credentials
    /// good (`Some(true)`), wrong (`Some(false)`), or no verdict on any
    /// (`None`: none were presented, or the attempt was given up).
    fn told_throttle(&mut self, verdict: Option<bool>) {
        if let Some(ticket) = self.ticket.take() {
            let mut t = lock(&self.engine.throttle);
            let now = Instant::now();
            match verdict {
                Some(true) => t.succeeded(ticket, now),
                Some(false) => t.failed(ticket, now),
                None => t.abandoned(ticket, now),
            }
        }
    }

    /// Whether the client presented anything to check.
    fn presented_credentials(&self) -> bool {
        let c = &self.connect;
        c.username.is_some()
            || c.password.is_some()
            || c.properties.authentication_method().is_some()
    }

    /// The protocol's checks, before anyone's credentials are looked at.
    fn prepare(&mut self) -> Result<Prepared, ReasonCode> {
        let engine = &self.engine;
        let c = &mut self.connect;
        let limits = engine.limits();
        let v5 = c.protocol.is_v5();
        let max_qos = QoS::from_u8(limits.max_qos).unwrap_or(QoS::ExactlyOnce);
        let mut props = Properties::new();
        let client_id: Arc<str> = if c.client_id.is_empty() {
            // [MQTT-3.1.3-8]: 3.1.1 allows a zero-length id only with Clean
            // Session 1; MQTT 3.1 needs one.
            if !v5 && (!c.clean_start || c.protocol == Protocol::V3_1) {
                return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            // [MQTT-3.1.3-6], [MQTT-3.2.2-16]: assign a unique one, and
            // tell a 5.0 client.
            let id = engine.assign_client_id();
            if v5 {
                if let Ok(s) = MqttString::try_from(id.as_str()) {
                    props.set_assigned_client_identifier(Some(s));
                }
            }
            Arc::from(id)
        } else {
            Arc::from(c.client_id.as_str())
        };
        if client_id.len() > limits.max_client_id_length {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if let Some(w) = &c.will {
            if v5 && w.qos > max_qos {
                // [MQTT-3.2.2-12]
                return Err(ReasonCode::QOS_NOT_SUPPORTED);
            }
            if w.retain && !limits.retain_available && self.peer.internal.is_none() {
                // [MQTT-3.2.2-13]
                return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
            }
            if is_sys(w.topic.as_str()) && !own_connection_state(w.topic.as_str(), &client_id) {
                // $SYS is the broker's: no client writes there, will
                // included (but for a bridge's own link state).
                return Err(ReasonCode::NOT_AUTHORIZED);
            }
            if too_deep(w.topic.as_str(), limits.max_topic_levels) {
                return Err(ReasonCode::TOPIC_NAME_INVALID);
            }
        }
        // Session expiry: 5.0 asks; 3.1.x Clean Session 0 means "keep".
        let requested = if v5 {
            c.properties.session_expiry_interval().unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            NEVER
        };
        let expiry = requested.min(limits.max_session_expiry);
        if v5 && expiry != requested {
            // The client learns the interval the server uses (3.2.2.3.2).
            props.set_session_expiry_interval(Some(expiry));
        }
        if v5
            && (c.keep_alive > limits.max_keepalive
                || (c.keep_alive == 0 && limits.max_keepalive < u16::MAX))
        {
            // [MQTT-3.2.2-21]: the client must use the Server Keep Alive.
            props.set_server_keep_alive(Some(limits.max_keepalive));
        }
        if v5 && max_qos != QoS::ExactlyOnce {
            props.set_maximum_qos(Some(max_qos));
        }
        if v5 && self.peer.internal.is_none() {
            // What the broker does without is told; what it has goes
            // unsaid (absent means available). A bridge's local side is
            // the operator's own and has it all.
            let absent = |on: bool| (!on).then_some(false);
            props.set_retain_available(absent(limits.retain_available));
            props.set_wildcard_subscription_available(absent(limits.wildcard_subscriptions));
            props.set_shared_subscription_available(absent(limits.shared_subscriptions));
        }
        let will = c.will.take().map(|w| {
            let delay = if v5 {
                w.properties.will_delay_interval().unwrap_or(0)
            } else {
                0
            };
            let mut m = Message::new(w.topic, w.payload, w.qos);
            m.retain = w.retain;
            // Will properties go out as PUBLISH properties, less the delay
            // ([MQTT-3.1.3-10]).
            m.properties = w
                .properties
                .without(&[petrel_codec::properties::id::WILL_DELAY_INTERVAL]);
            // Kept for the connection's life: its own bytes.
            detach(&mut m);
            (m, Duration::from_secs(u64::from(delay)))
        });
        Ok(Prepared {
            client_id,
            expiry,
            props,
            will,
            security: engine.security(),
            reach: Arc::new(Reach::default()),
            access: None,
        })
    }

    /// The client is who it says: check its will against its permissions,
    /// then take its session.
    async fn authenticated(&mut self, grant: Grant) -> Step {
        // A verified name clears its own failures; a client let in without
        // one (anonymous, a token naming nobody) proves nothing.
        let verified = !matches!(grant.identity, Identity::Nobody) && self.presented_credentials();
        self.told_throttle(verified.then_some(true));
        let engine = self.engine.clone();
        let Some(p) = self.prepared.as_mut() else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR);
        };
        Stats::add(&engine.stats.auth_successes, 1);
        let username: Option<Arc<str>> = match grant.identity {
            Identity::AsSent => self
                .connect
                .username
                .as_ref()
                .map(|u| Arc::from(u.as_str())),
            Identity::Named(n) => Some(Arc::from(n)),
            Identity::Nobody => None,
        };
        let access = Access::resolve(
            &p.client_id,
            username,
            grant.permissions,
            &p.security.authorizers,
        );
        if let Some(w) = &p.will {
            let topic = w.0.topic.as_str();
            if !own_connection_state(topic, &p.client_id)
                && !access.check(crate::core::auth::Action::Publish, topic)
            {
                // A will is a publish like any other.
                Stats::add(&engine.stats.denied_publish, 1);
                return self.refused(ReasonCode::NOT_AUTHORIZED);
            }
        }
        p.access = Some(access.clone());
        // (A connection the program made to itself is this node's own, and
        // a client id this node assigned, 128 random bits, is no other
        // node's.)
        let own = self.peer.internal.is_some() || self.connect.client_id.is_empty();
        if let Some(peers) = engine.peers.clone().filter(|_| !own) {
            // In a cluster the session is this node's first: brought from
            // the node that had it, or ended there with Clean Start.
            let client_id = p.client_id.clone();
            let claim = peers.claim(
                &client_id,
                self.connect.clean_start,
                access.username.as_deref(),
            );
            match claim.await {
                Ok(()) => {}
                Err(crate::core::peers::ClaimRefused::Unavailable(e)) => {
                    tracing::warn!(client_id = %client_id, error = %e, "the cluster could not give this node the session; refused");
                    return self.refused(ReasonCode::SERVER_UNAVAILABLE);
                }
                Err(crate::core::peers::ClaimRefused::NotYours) => {
                    tracing::warn!(client_id = %client_id, username = access.username.as_deref().unwrap_or(""), "session belongs to another user (on another node); refused");
                    return self.refused(ReasonCode::NOT_AUTHORIZED);
                }
            }
        }
        // Drained while it authenticated or waited for its session.
        if let Some(step) = self.drained() {
            return step;
        }
        let Some(p) = self.prepared.as_mut() else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR);
        };
        let now = Instant::now();
        match engine.attach(
            &p.client_id,
            self.connect.clean_start,
            p.expiry,
            &p.reach,
            &access,
            p.security.ownership,
            now,
        ) {
            Attach::Ready(a) => self.accepted(a),
            Attach::Full => {
                tracing::warn!(client_id = %p.client_id, "max_sessions reached; refused");
                let reason = if self.connect.protocol.is_v5() {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    ReasonCode::SERVER_UNAVAILABLE
                };
                self.refused(reason)
            }
            Attach::Owned => {
                tracing::warn!(
                    client_id = %p.client_id,
                    username = access.username.as_deref().unwrap_or(""),
                    "session belongs to another user; refused"
                );
                self.refused(ReasonCode::NOT_AUTHORIZED)
            }
            Attach::Wait(connection, rx) => {
                self.state = State::Waiting { connection, rx };
                self.wait_handover().await
            }
        }
    }

    /// The holder was kicked and lets go within its close flush; bounded
    /// anyway.
    async fn wait_handover(&mut self) -> Step {
        let limit = Duration::from_secs(self.engine.limits().connect_timeout) + HANDOVER_SLACK;
        let State::Waiting { rx, .. } = &mut self.state else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR);
        };
        let handover = tokio::time::timeout(limit, &mut *rx)
            .await
            .ok()
            .and_then(Result::ok);
        let State::Waiting { connection, mut rx } = std::mem::replace(&mut self.state, State::Done)
        else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR);
        };
        // Timed out: a handover that arrived meanwhile must not be lost
        // (the registry already counts this connection as its holder).
        let handover = handover.or_else(|| {
            rx.close();
            rx.try_recv().ok()
        });
        let Some(p) = self.prepared.as_ref() else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR);
        };
        let access = p
            .access
            .clone()
            .unwrap_or_else(crate::core::auth::anonymous);
        match handover {
            Some(h) => {
                let a =
                    self.engine
                        .take_handover(&p.client_id, h, &access, p.expiry, Instant::now());
                self.accepted(a)
            }
            None => {
                self.engine
                    .abandon(&p.client_id, connection, None, p.expiry, Instant::now());
                self.refused(ReasonCode::SERVER_UNAVAILABLE)
            }
        }
    }

    fn accepted(&mut self, a: Attached) -> Step {
        let Some(p) = self.prepared.take() else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR);
        };
        let Prepared {
            client_id,
            expiry,
            props,
            will,
            reach,
            access,
            ..
        } = *p;
        let access = access.unwrap_or_else(crate::core::auth::anonymous);
        a.key
            .set_bound(self.peer.internal.as_ref().and_then(|i| i.queue.clone()));
        reach.set_info(ConnInfo::new(
            access.username.clone(),
            self.peer.addr,
            self.peer.rules.clone(),
            self.connect.protocol,
            super::attach::now_millis(),
            self.connect.keep_alive,
            self.connect.clean_start,
            expiry,
        ));
        tracing::info!(
            client_id = %client_id,
            username = access.username.as_deref().unwrap_or(""),
            peer = %self.peer.addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
            protocol = self.connect.protocol.version(),
            session_present = a.session_present,
            "client connected"
        );
        let client = Client::new(
            self.engine.clone(),
            Settled {
                key: a.key,
                connection: a.connection,
                reach,
                access,
                generation: self.engine.generation(),
                expiry,
                protocol: self.connect.protocol,
                will,
                bridge: self.connect.bridge,
                internal: self.peer.internal.is_some(),
            },
        );
        Step::Accept(Box::new(Accepted {
            client,
            accept: Accept {
                session_present: a.session_present,
                state: a.state,
                properties: props,
            },
        }))
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        self.told_throttle(None);
        if let State::Waiting { connection, mut rx } =
            std::mem::replace(&mut self.state, State::Done)
        {
            // A handover that arrived meanwhile goes back.
            rx.close();
            let late = rx.try_recv().ok();
            if let Some(p) = &self.prepared {
                self.engine
                    .abandon(&p.client_id, connection, late, p.expiry, Instant::now());
            }
        }
    }
}
