//! Sessions and retained messages kept across a graceful restart.
//!
//! With `persistence = "path"` in the configuration the broker writes, when
//! it shuts down (after every connection has handed its session back), each
//! session that outlives its connection — its in-flight messages both ways
//! ([`petrel_session::Snapshot`]), its subscriptions and its queued
//! messages — and every retained message, with the time each has left; and
//! reads them back when it starts. The file is written to a temporary name
//! and renamed, so a crash while saving leaves the previous one, and it is
//! renamed to `<file>.loaded` once read, so a crash later does not bring
//! back stale state at the next start. What happens between two saves is
//! lost by a crash (SIGKILL, power loss): this is a restart store, not a
//! write-ahead log. With the durable store (`data_dir`) the file is not
//! written; one found there (an older Petrel's) is imported into a store
//! that holds nothing yet.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{
    Limits, Properties, PropertyContext, QoS, RetainHandling, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName,
};
use petrel_session::{Message, Snapshot};
use serde::{Deserialize, Serialize};

use crate::core::engine::Broker;
use crate::core::router::Subscription;

/// Bumped when the layout changes; an unknown version is refused.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    sessions: Vec<StoredSession>,
    retained: Vec<StoredMessage>,
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    client_id: String,
    /// The user it belongs to.
    #[serde(default)]
    owner: Option<String>,
    expiry: u32,
    /// Seconds left before it expires (`None`: never).
    expires_in: Option<u64>,
    state: Snapshot,
    subscriptions: Vec<StoredSubscription>,
    queued: Vec<StoredMessage>,
}

#[derive(Serialize, Deserialize)]
struct StoredSubscription {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    identifier: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct StoredMessage {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    /// 5.0 PUBLISH properties as they lie on the wire.
    properties: Vec<u8>,
    /// Seconds since it was queued or stored (its expiry counts from then).
    age: u64,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl StoredMessage {
    fn new(m: &Message, at: Instant, now: Instant) -> Self {
        Self {
            topic: m.topic.as_str().to_string(),
            payload: m.payload.to_vec(),
            qos: m.qos as u8,
            retain: m.retain,
            properties: m.properties.as_wire().to_vec(),
            age: now.saturating_duration_since(at).as_secs(),
        }
    }

    fn restore(self, now: Instant) -> io::Result<(Message, Instant)> {
        let topic = TopicName::try_from(self.topic.as_str()).map_err(invalid)?;
        let qos = QoS::from_u8(self.qos).ok_or_else(|| invalid("bad QoS"))?;
        let properties = Properties::from_wire(
            Bytes::from(self.properties),
            PropertyContext::PUBLISH,
            &Limits::default(),
        )
        .map_err(invalid)?;
        let mut m = Message::new(topic, Bytes::from(self.payload), qos);
        m.retain = self.retain;
        m.properties = properties;
        let at = now
            .checked_sub(Duration::from_secs(self.age))
            .unwrap_or(now);
        Ok((m, at))
    }
}

impl StoredSubscription {
    fn new(filter: &str, s: &Subscription) -> Self {
        Self {
            filter: filter.to_string(),
            qos: s.options.qos as u8,
            no_local: s.options.no_local,
            retain_as_published: s.options.retain_as_published,
            retain_handling: s.options.retain_handling as u8,
            identifier: s.identifier.map(SubscriptionId::get),
        }
    }

    fn restore(self) -> io::Result<(TopicFilter, Subscription)> {
        // Whether each delivery needs authorising is decided again when
        // it is restored, from the rules then in force.
        let filter = TopicFilter::try_from(self.filter.as_str()).map_err(invalid)?;
        let mut options =
            SubscriptionOptions::qos(QoS::from_u8(self.qos).ok_or_else(|| invalid("bad QoS"))?);
        options.no_local = self.no_local;
        options.retain_as_published = self.retain_as_published;
        options.retain_handling = match self.retain_handling {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(invalid("bad retain handling")),
        };
        let identifier = match self.identifier {
            Some(i) => Some(SubscriptionId::new(i).ok_or_else(|| invalid("bad subscription id"))?),
            None => None,
        };
        Ok((
            filter,
            Subscription {
                options,
                identifier,
                authorize: true,
            },
        ))
    }
}

impl Broker {
    /// Save sessions that outlive their connection, and retained messages,
    /// to the configured `persistence` file (the server does it at
    /// shutdown). Returns how many of each were saved.
    pub fn save(&self) -> io::Result<(usize, usize)> {
        match &self.config().persistence {
            // The durable store holds all of it, always up to date.
            Some(_) if self.engine.has_store() => Ok((0, 0)),
            Some(path) => self.save_to(path),
            None => Ok((0, 0)),
        }
    }

    /// Read back what [`Broker::save`] wrote (the server does it when it
    /// binds). Returns how many sessions and retained messages were read.
    pub fn load(&self) -> io::Result<(usize, usize)> {
        match &self.config().persistence {
            Some(path) if self.engine.has_store() => {
                let counts = self.import(path)?;
                if counts != (0, 0) {
                    self.engine.restore()?;
                }
                Ok(counts)
            }
            Some(path) => self.load_from(path),
            None => Ok((0, 0)),
        }
    }

    /// Write every detached session and retained message to `path`.
    fn save_to(&self, path: &Path) -> io::Result<(usize, usize)> {
        let now = Instant::now();
        let engine = &self.engine;
        let mut sessions = Vec::new();
        engine.for_each_detached(|client_id, state, expiry, expires_at, key| {
            let subscriptions = key
                .filters()
                .iter()
                .map(|(f, s)| StoredSubscription::new(f, s))
                .collect();
            let queued = key
                .queued()
                .iter()
                .map(|(m, at)| StoredMessage::new(m, *at, now))
                .collect();
            sessions.push(StoredSession {
                client_id: client_id.to_string(),
                owner: key.access().username.as_deref().map(str::to_string),
                expiry,
                expires_in: expires_at.map(|at| at.saturating_duration_since(now).as_secs()),
                state: state.snapshot(now),
                subscriptions,
                queued,
            });
        });
        let retained = engine.retained_messages(now);
        let counts = (sessions.len(), retained.len());
        let stored = Stored {
            version: VERSION,
            sessions,
            retained: retained
                .into_iter()
                .map(|(m, at)| StoredMessage::new(&m, at, now))
                .collect(),
        };
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut w = io::BufWriter::new(file);
        serde_json::to_writer(&mut w, &stored).map_err(invalid)?;
        io::Write::flush(&mut w)?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(counts)
    }

    /// Read what [`Broker::save_to`] wrote, and consume it (it is renamed
    /// to `<file>.loaded`): a run that ends without saving (a crash) must
    /// not bring back, at the next start, the state of the shutdown before
    /// (retained messages deleted since, messages acknowledged since that
    /// would be sent again, sessions that ended). A missing file is an
    /// empty store.
    fn load_from(&self, path: &Path) -> io::Result<(usize, usize)> {
        let consumed = loaded_name(path);
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if consumed.exists() {
                    tracing::warn!(
                        file = %path.display(),
                        "the last run ended without saving (was it killed?): what it held is lost; \
                         the state it started from is in the .loaded file"
                    );
                }
                return Ok((0, 0));
            }
            Err(e) => return Err(e),
        };
        let stored: Stored = serde_json::from_reader(io::BufReader::new(file)).map_err(invalid)?;
        if stored.version != VERSION {
            return Err(invalid(format!("unknown store version {}", stored.version)));
        }
        let engine = &self.engine;
        let now = Instant::now();
        let counts = (stored.sessions.len(), stored.retained.len());
        for r in stored.retained {
            let (m, at) = r.restore(now)?;
            engine.restore_retained(m, at);
        }
        for s in stored.sessions {
            let state = s.state.restore(now).map_err(invalid)?;
            let expires_at = s.expires_in.map(|secs| now + Duration::from_secs(secs));
            let queued = s
                .queued
                .into_iter()
                .map(|m| m.restore(now).map(|(m, at)| (m, at, 0)))
                .collect::<io::Result<Vec<_>>>()?;
            let subscriptions = s
                .subscriptions
                .into_iter()
                .map(StoredSubscription::restore)
                .collect::<io::Result<Vec<_>>>()?;
            let owner = s.owner.map(std::sync::Arc::from);
            let Some(key) =
                engine.restore_session(&s.client_id, owner, state, s.expiry, expires_at)
            else {
                continue;
            };
            key.restore_queue(queued);
            let access = key.access();
            for (filter, mut subscription) in subscriptions {
                subscription.authorize = !access.receives_all(filter.as_str());
                engine.subscribe_within(&key, &filter, subscription, false);
            }
        }
        std::fs::rename(path, &consumed)?;
        Ok(counts)
    }
}

impl Broker {
    /// With a durable store: bring a snapshot that an older Petrel wrote
    /// (`persistence`, before the store existed) into a store that holds
    /// no session and no retained message yet, as the store would have
    /// recorded it: retained messages, and sessions with their owner,
    /// expiry, subscriptions, queue, messages in flight both ways and QoS 2
    /// identifiers awaiting PUBREL. The file is then renamed to
    /// `<file>.imported`. A store that holds state already keeps it, and
    /// the snapshot is left as it is (with a warning).
    fn import(&self, path: &Path) -> io::Result<(usize, usize)> {
        use crate::core::sessions::NEVER;
        use crate::core::store::{
            child_key, encode_delivery, encode_message, encode_subscription, Op, StoredSession,
            Table,
        };
        use std::time::SystemTime;
        let Some(store) = self.engine.store() else {
            return Ok((0, 0));
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(e),
        };
        if !store.scan(Table::Sessions)?.is_empty() || !store.scan(Table::Retained)?.is_empty() {
            tracing::warn!(file = %path.display(), "the durable store holds sessions or retained messages already: the persistence snapshot is not imported (it is left as it is)");
            return Ok((0, 0));
        }
        let stored: Stored = serde_json::from_reader(io::BufReader::new(file)).map_err(invalid)?;
        if stored.version != VERSION {
            return Err(invalid(format!("unknown store version {}", stored.version)));
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // When something `at` (an instant of this process) happened, on the
        // wall clock.
        let since = |at: Instant| wall - now.saturating_duration_since(at);
        let counts = (stored.sessions.len(), stored.retained.len());
        let mut ops = Vec::new();
        for r in stored.retained {
            let (m, at) = r.restore(now)?;
            ops.push(Op::Put {
                table: Table::Retained,
                key: m.topic.as_str().as_bytes().to_vec(),
                value: encode_message(&m, since(at)),
            });
        }
        // What stands for a QoS 2 message whose PUBREC came: only its
        // PUBREL is ever sent again, never the message.
        let released = Message::new(
            TopicName::try_from("$petrel/released").map_err(invalid)?,
            Bytes::new(),
            QoS::ExactlyOnce,
        );
        for s in stored.sessions {
            let id = s.client_id.as_str();
            let state = s.state.restore(now).map_err(invalid)?;
            // Its expiry counts from when its connection ended.
            let gone_for = match s.expires_in {
                Some(left) if s.expiry != NEVER => u64::from(s.expiry).saturating_sub(left),
                _ => 0,
            };
            ops.push(Op::Put {
                table: Table::Sessions,
                key: id.as_bytes().to_vec(),
                value: StoredSession {
                    expiry: s.expiry,
                    detached: Some(wall_ms.saturating_sub(gone_for * 1000)),
                    owner: s.owner.clone(),
                }
                .encode(),
            });
            for sub in s.subscriptions {
                let (filter, subscription) = sub.restore()?;
                ops.push(Op::Put {
                    table: Table::Subscriptions,
                    key: child_key(id, filter.as_str().as_bytes()),
                    value: encode_subscription(
                        &subscription.options,
                        subscription.identifier.map(SubscriptionId::get),
                    ),
                });
            }
            // In flight first, in the order first sent, then what waited
            // for the window, then the broker's queue: the order they go
            // out in.
            let mut seq = 0u64;
            // A message the session state holds, with the expiry it has left.
            let with_left = |m: &Message, expires_at: Option<Instant>| {
                let mut m = m.clone();
                if let Some(t) = expires_at {
                    let left = t.saturating_duration_since(now).as_secs();
                    m.properties
                        .set_message_expiry_interval(Some(u32::try_from(left).unwrap_or(u32::MAX)));
                }
                m
            };
            let mut queue = |ops: &mut Vec<Op>, m: &Message, stored: SystemTime| {
                seq += 1;
                ops.push(Op::Put {
                    table: Table::Queue,
                    key: child_key(id, &seq.to_be_bytes()),
                    value: encode_message(m, stored),
                });
                seq
            };
            for (packet_id, held) in state.outgoing_in_order() {
                let (n, was_released) = match held {
                    Some((m, expires_at)) if m.qos == QoS::ExactlyOnce => {
                        (queue(&mut ops, &with_left(m, expires_at), wall), false)
                    }
                    // QoS 1 in flight is sent again as a new delivery.
                    Some((m, expires_at)) => {
                        queue(&mut ops, &with_left(m, expires_at), wall);
                        continue;
                    }
                    None => (queue(&mut ops, &released, wall), true),
                };
                ops.push(Op::Put {
                    table: Table::Delivery,
                    key: child_key(id, &n.to_be_bytes()),
                    value: encode_delivery(packet_id, was_released),
                });
            }
            for (m, expires_at) in state.pending_messages() {
                queue(&mut ops, &with_left(m, expires_at), wall);
            }
            for q in s.queued {
                let (m, at) = q.restore(now)?;
                queue(&mut ops, &m, since(at));
            }
            for packet_id in state.incoming_ids() {
                ops.push(Op::Put {
                    table: Table::Incoming,
                    key: child_key(id, &packet_id.to_be_bytes()),
                    value: Vec::new(),
                });
            }
        }
        store.commit(ops)?;
        store.flush()?;
        let mut imported = path.as_os_str().to_os_string();
        imported.push(".imported");
        std::fs::rename(path, &imported)?;
        tracing::info!(
            sessions = counts.0,
            retained = counts.1,
            file = %path.display(),
            "imported the persistence snapshot of an older Petrel into the durable store"
        );
        Ok(counts)
    }
}

/// Where a snapshot goes once it has been read.
fn loaded_name(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".loaded");
    std::path::PathBuf::from(name)
}
