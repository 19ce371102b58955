//! Sessions by client identifier: new, resumed, taken over, expired.
//!
//! The registry is the one place that knows which connection holds a
//! session and which one waits to take it over. It is generic over what the
//! caller keeps with each session (`S`: the engine keeps the session's
//! queue and subscriptions) and with each connection (`C`: the engine keeps
//! how to tell the connection to let go, and how to hand it the session);
//! tests use `()` for both.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_session::SessionState;

/// One network connection's claim on a session. Numbers are never reused, so
/// a connection that was taken over can't release a session it no longer
/// holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(std::num::NonZeroU64);

/// The Session Expiry Interval that means "never" (5.0, 3.1.2.11.2), and what
/// a 3.1.x persistent session (Clean Session 0) gets.
pub const NEVER: u32 = u32::MAX;

/// What [`SessionRegistry::connect`] decided.
#[derive(Debug)]
pub enum Connected<C> {
    /// The session is this connection's now.
    Ready(Handover),
    /// Another connection holds the session: close it (5.0 DISCONNECT 0x8E,
    /// [MQTT-3.1.4-3]) and give its state back with
    /// [`SessionRegistry::release`], which hands the session on to this
    /// connection.
    TakeOver {
        /// This connection.
        connection: ConnectionId,
        /// The handle of the connection to close.
        holder: C,
        /// The handle of a connection that was itself waiting to take over
        /// and now never will.
        superseded: Option<C>,
    },
}

/// A session given to a connection.
#[derive(Debug)]
pub struct Handover {
    /// The connection that now holds it.
    pub connection: ConnectionId,
    /// Whether an existing session continues (CONNACK Session Present).
    pub session_present: bool,
    /// Its state, for [`petrel_session::Accept`].
    pub state: SessionState,
}

/// What became of a session when its connection let go
/// ([`SessionRegistry::release`]).
#[derive(Debug)]
pub enum Released<S, C> {
    /// The connection did not hold the session (it was superseded, or
    /// released it already): nothing changed.
    NotHeld,
    /// A connection was waiting: the session is its now. Send it the
    /// handover through its handle; if that fails, release again for it.
    HandedOver(Handover, C),
    /// The session is kept for its expiry interval.
    Kept,
    /// The session ended with its connection (expiry 0); here is what the
    /// caller kept with it.
    Ended(S),
}

#[derive(Debug)]
struct Entry<S, C> {
    holder: Option<(ConnectionId, C)>,
    /// A connection waiting for the holder to let go.
    /// Boxed: rare, and every entry would pay for it.
    waiting: Option<Box<Waiting<C>>>,
    /// What a session no connection holds keeps (none: a new session's).
    /// A connected session's state lives in its connection, so most entries
    /// hold only this pointer.
    detached: Option<Box<Detached>>,
    /// Session Expiry Interval in seconds.
    expiry: u32,
    data: S,
}

#[derive(Debug)]
struct Waiting<C> {
    connection: ConnectionId,
    clean_start: bool,
    expiry: u32,
    handle: C,
}

#[derive(Debug)]
struct Detached {
    state: SessionState,
    /// When the session ends.
    expires_at: Option<Instant>,
    /// Its place in the registry's indices: since when it is offline, and
    /// a number that tells apart sessions detached at the same instant.
    since: (Instant, u64),
}

impl<S, C> Entry<S, C> {
    fn expires_at(&self) -> Option<Instant> {
        self.detached.as_ref().and_then(|d| d.expires_at)
    }
}

/// One session as [`SessionRegistry::sessions`] shows it.
#[derive(Debug)]
pub struct SessionView<'a, S, C> {
    /// Its client identifier.
    pub client_id: &'a Arc<str>,
    /// What the caller keeps with it.
    pub data: &'a S,
    /// The handle of the connection holding it, if one does.
    pub holder: Option<&'a C>,
    /// Its Session Expiry Interval, in seconds.
    pub expiry: u32,
    /// When it ends, if no connection holds it and it expires.
    pub expires_at: Option<Instant>,
}

/// Every session, by client identifier: decisions about one client id
/// (connect, takeover, release, expiry) happen here, one at a time.
#[derive(Debug)]
pub struct SessionRegistry<S = (), C = ()> {
    sessions: HashMap<Arc<str>, Entry<S, C>>,
    next_connection: u64,
    /// Sessions no connection holds, longest offline first (to evict).
    offline: BTreeMap<(Instant, u64), Arc<str>>,
    /// Those that expire, soonest first (so expiry never scans them all).
    expiring: BTreeMap<(Instant, u64), Arc<str>>,
    next_detached: u64,
}

impl<S, C> Default for SessionRegistry<S, C> {
    fn default() -> Self {
        Self {
            sessions: HashMap::new(),
            next_connection: 0,
            offline: BTreeMap::new(),
            expiring: BTreeMap::new(),
            next_detached: 0,
        }
    }
}

impl<S, C: Clone> SessionRegistry<S, C> {
    /// No sessions.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions exist, connected or not.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `client_id` has a session, connected or not.
    pub fn exists(&self, client_id: &str) -> bool {
        self.sessions.contains_key(client_id)
    }

    /// Whether `connection` holds `client_id`'s session.
    pub fn holds(&self, client_id: &str, connection: ConnectionId) -> bool {
        self.sessions
            .get(client_id)
            .is_some_and(|e| e.holder.as_ref().is_some_and(|h| h.0 == connection))
    }

    /// Whether a connection holds `client_id`'s session.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.sessions
            .get(client_id)
            .is_some_and(|e| e.holder.is_some())
    }

    /// What the caller keeps with `client_id`'s session.
    pub fn data(&self, client_id: &str) -> Option<&S> {
        self.sessions.get(client_id).map(|e| &e.data)
    }

    /// Replace what the caller keeps with `client_id`'s session (a new
    /// session took the place of an old one); returns the old.
    pub fn replace_data(&mut self, client_id: &str, data: S) -> Option<S> {
        let entry = self.sessions.get_mut(client_id)?;
        Some(std::mem::replace(&mut entry.data, data))
    }

    /// Every session's data.
    pub fn all_data(&self) -> impl Iterator<Item = &S> {
        self.sessions.values().map(|e| &e.data)
    }

    fn next_id(&mut self) -> ConnectionId {
        self.next_connection += 1;
        ConnectionId(
            std::num::NonZeroU64::new(self.next_connection).unwrap_or(std::num::NonZeroU64::MIN),
        )
    }

    /// A CONNECT for `client_id` was accepted. With Clean Start the old
    /// session (if any) is discarded and a new one begins ([MQTT-3.1.2-4]);
    /// without, an existing session continues ([MQTT-3.1.2-5]) or a new one
    /// is created ([MQTT-3.1.2-6]), with the data `new` makes. `expiry` is
    /// the Session Expiry Interval the connection asked for (after any cap
    /// the broker applies); `handle` is how to reach this connection.
    ///
    /// Pass the client id as an `Arc<str>` to share it rather than copy it.
    pub fn connect(
        &mut self,
        client_id: impl AsRef<str> + Into<Arc<str>>,
        clean_start: bool,
        expiry: u32,
        handle: C,
        new: impl FnOnce() -> S,
    ) -> Connected<C> {
        let connection = self.next_id();
        let Some(entry) = self.sessions.get_mut(client_id.as_ref()) else {
            self.sessions.insert(
                client_id.into(),
                Entry {
                    holder: Some((connection, handle)),
                    waiting: None,
                    detached: None,
                    expiry,
                    data: new(),
                },
            );
            return Connected::Ready(Handover {
                connection,
                session_present: false,
                state: SessionState::new(),
            });
        };
        if let Some((_, holder)) = &entry.holder {
            let holder = holder.clone();
            let superseded = entry
                .waiting
                .replace(Box::new(Waiting {
                    connection,
                    clean_start,
                    expiry,
                    handle,
                }))
                .map(|w| w.handle);
            return Connected::TakeOver {
                connection,
                holder,
                superseded,
            };
        }
        entry.holder = Some((connection, handle));
        entry.expiry = expiry;
        let detached = entry.detached.take();
        let state = match detached {
            Some(d) => {
                self.offline.remove(&d.since);
                if let Some(at) = d.expires_at {
                    self.expiring.remove(&(at, d.since.1));
                }
                d.state
            }
            None => SessionState::new(),
        };
        Connected::Ready(if clean_start {
            Handover {
                connection,
                session_present: false,
                state: SessionState::new(),
            }
        } else {
            Handover {
                connection,
                session_present: true,
                state,
            }
        })
    }

    /// `connection` ended and gives back the session's state. The session
    /// goes to a connection waiting to take over, or is kept for its expiry
    /// interval ([MQTT-3.1.2-23]), or ends at once if that is 0. `expiry` is
    /// the interval in force at the end (a 5.0 DISCONNECT may change it).
    pub fn release(
        &mut self,
        client_id: &str,
        connection: ConnectionId,
        state: SessionState,
        expiry: u32,
        now: Instant,
    ) -> Released<S, C> {
        let Some(entry) = self.sessions.get_mut(client_id) else {
            return Released::NotHeld;
        };
        if entry.holder.as_ref().map(|h| h.0) != Some(connection) {
            return Released::NotHeld;
        }
        if let Some(w) = entry.waiting.take() {
            let Waiting {
                connection: next,
                clean_start,
                expiry: next_expiry,
                handle,
            } = *w;
            entry.holder = Some((next, handle.clone()));
            entry.expiry = next_expiry;
            // The session continues only if the new connection asks for it
            // and the old one did not end it (expiry 0: [MQTT-3.1.2-23] in
            // 5.0, Clean Session 1 in 3.1.1, [MQTT-3.1.2-6]).
            let continues = !clean_start && expiry > 0;
            return Released::HandedOver(
                Handover {
                    connection: next,
                    session_present: continues,
                    state: if continues {
                        state
                    } else {
                        SessionState::new()
                    },
                },
                handle,
            );
        }
        if expiry == 0 {
            return match self.sessions.remove(client_id) {
                Some(e) => Released::Ended(e.data),
                None => Released::NotHeld,
            };
        }
        entry.holder = None;
        entry.expiry = expiry;
        let expires_at = (expiry != NEVER).then(|| now + Duration::from_secs(u64::from(expiry)));
        let since = (now, self.next_detached);
        self.next_detached += 1;
        entry.detached = Some(Box::new(Detached {
            state,
            expires_at,
            since,
        }));
        let id: Arc<str> = Arc::from(client_id);
        self.index(since, expires_at, id);
        Released::Kept
    }

    /// A connection waiting to take over went away before it got the session.
    pub fn abandon(&mut self, client_id: &str, connection: ConnectionId) {
        if let Some(entry) = self.sessions.get_mut(client_id) {
            if entry
                .waiting
                .as_ref()
                .is_some_and(|w| w.connection == connection)
            {
                entry.waiting = None;
            }
        }
    }

    /// End every detached session whose expiry has passed; returns their
    /// client identifiers and data (so the caller can drop their
    /// subscriptions and publish wills still waiting).
    pub fn expire(&mut self, now: Instant) -> Vec<(Arc<str>, S)> {
        let mut ended = Vec::new();
        while let Some(entry) = self.expiring.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(data) = self.remove_detached(&id) {
                ended.push((id, data));
            }
        }
        ended
    }

    /// End the session that has been offline longest, to make room for a
    /// new one; none if every session is connected.
    pub fn evict_oldest(&mut self) -> Option<(Arc<str>, S)> {
        let id = self.offline.first_key_value()?.1.clone();
        let data = self.remove_detached(&id)?;
        Some((id, data))
    }

    /// Put a detached session in the indices.
    fn index(&mut self, since: (Instant, u64), expires_at: Option<Instant>, id: Arc<str>) {
        if let Some(at) = expires_at {
            self.expiring.insert((at, since.1), id.clone());
        }
        self.offline.insert(since, id);
    }

    /// Remove a session no connection holds, and its index entries.
    fn remove_detached(&mut self, client_id: &str) -> Option<S> {
        let e = self.sessions.get(client_id)?;
        if e.holder.is_some() || e.waiting.is_some() {
            return None;
        }
        let e = self.sessions.remove(client_id)?;
        if let Some(d) = &e.detached {
            self.offline.remove(&d.since);
            if let Some(at) = d.expires_at {
                self.expiring.remove(&(at, d.since.1));
            }
        }
        Some(e.data)
    }

    /// Every session, connected or not.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_, S, C>> {
        self.sessions.iter().map(|(id, e)| SessionView {
            client_id: id,
            data: &e.data,
            holder: e.holder.as_ref().map(|h| &h.1),
            expiry: e.expiry,
            expires_at: e.expires_at(),
        })
    }

    /// `client_id`'s session, connected or not.
    pub fn session(&self, client_id: &str) -> Option<SessionView<'_, S, C>> {
        let (id, e) = self.sessions.get_key_value(client_id)?;
        Some(SessionView {
            client_id: id,
            data: &e.data,
            holder: e.holder.as_ref().map(|h| &h.1),
            expiry: e.expiry,
            expires_at: e.expires_at(),
        })
    }

    /// End `client_id`'s session now if no connection holds it or waits
    /// for it; returns what the caller kept with it.
    pub fn discard(&mut self, client_id: &str) -> Option<S> {
        self.remove_detached(client_id)
    }

    /// Every session no connection holds: client id, state, Session Expiry
    /// Interval, when it expires, and its data (to store them).
    pub fn detached(
        &self,
    ) -> impl Iterator<Item = (&str, &SessionState, u32, Option<Instant>, &S)> {
        self.sessions
            .iter()
            .filter(|(_, e)| e.holder.is_none())
            .map(|(id, e)| {
                let state: &SessionState = match &e.detached {
                    Some(d) => &d.state,
                    None => empty_state(),
                };
                (&**id, state, e.expiry, e.expires_at(), &e.data)
            })
    }

    /// Add a detached session (restored from storage); replaces one of the
    /// same client id that no connection holds, and returns its data.
    /// Refused (`Err` with the data) if a connection holds one.
    pub fn insert_detached(
        &mut self,
        client_id: &str,
        state: SessionState,
        expiry: u32,
        expires_at: Option<Instant>,
        data: S,
    ) -> Result<Option<S>, S> {
        if self.is_connected(client_id) {
            return Err(data);
        }
        let old = self.remove_detached(client_id);
        // Restored at start: offline since now, as far as eviction goes.
        let since = (Instant::now(), self.next_detached);
        self.next_detached += 1;
        let id: Arc<str> = Arc::from(client_id);
        self.sessions.insert(
            id.clone(),
            Entry {
                holder: None,
                waiting: None,
                detached: Some(Box::new(Detached {
                    state,
                    expires_at,
                    since,
                })),
                expiry,
                data,
            },
        );
        self.index(since, expires_at, id);
        Ok(old)
    }

    /// When the next detached session expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiring.first_key_value().map(|(k, _)| k.0)
    }
}

/// The state of a session that has none yet.
fn empty_state() -> &'static SessionState {
    static EMPTY: std::sync::OnceLock<SessionState> = std::sync::OnceLock::new();
    EMPTY.get_or_init(SessionState::new)
}
