//! Who may connect, and what a client may publish, subscribe to and receive.
//!
//! ## Authentication
//! A CONNECT's credentials ([`Credentials`]: user name, password, the
//! certificate identity a TLS listener verified, the peer's address) go
//! through a chain of [`Authenticator`]s in configuration order. Each
//! answers [`Verdict::Allow`] (with a [`Grant`]: the user name the client is
//! known by, and permissions its credential carries), [`Verdict::Deny`]
//! with the CONNACK reason, or [`Verdict::Pass`] when the credentials are
//! not its to judge (a user name it does not know, a password that is not
//! a token). The first to allow or deny decides. When every method passes,
//! a client that presented credentials is refused with 0x86 Bad User Name
//! or Password (3.1.1: 4), and one that presented none is let in only if
//! anonymous access is allowed, else refused with 0x87 Not Authorized
//! (3.1.1: 5).
//!
//! Built in: the password file ([`password`], Mosquitto's format, hashing
//! off the async workers), tokens ([`jwt`]), the client certificate's
//! identity ([`CertificateAuthenticator`]). Embedding applications add
//! their own (a database, an HTTP service): the trait is async.
//!
//! 5.0 enhanced authentication ([`AuthMethod`]) is chosen by the
//! Authentication Method a CONNECT names: SCRAM-SHA-256 and SCRAM-SHA-512
//! are built in ([`scram`]), and the same exchange serves re-authentication.
//!
//! Failed attempts are logged with the peer's address and slowed per source
//! address ([`throttle`]).
//!
//! ## Authorisation
//! When a client connects, every [`Authorizer`] (the ACL file of [`acl`],
//! or an application's) resolves the [`Permissions`] that apply to it once:
//! its user's rules, patterns with its client id and user name filled in.
//! Permissions a credential carries (a token's claim) come first and, when
//! present, alone decide. Each publish, subscribe and delivery is checked
//! against them; the first rule set that allows or denies decides, and with
//! any authorizer configured what none allows is denied. Decisions are
//! cached per client, and a subscription whose filter is wholly readable
//! needs no check per delivery.

pub mod acl;
pub(crate) mod filters;
pub mod jwt;
pub mod password;
pub mod scram;
pub mod throttle;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use petrel_codec::{Protocol, ReasonCode};

/// A password, ACL or credentials file that can't be used, with the line at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file can't be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: std::path::PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The file is malformed as a whole (a JSON key set, a PEM key).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Read a file the broker was configured with.
pub(crate) fn read_file(path: &std::path::Path) -> Result<String, AuthFileError> {
    std::fs::read_to_string(path).map_err(|source| AuthFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A boxed future, as the async traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a client presented when it connected.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Its client identifier (assigned by the broker if it sent none).
    pub client_id: Arc<str>,
    /// The CONNECT's User Name.
    pub username: Option<String>,
    /// The CONNECT's Password.
    pub password: Option<Bytes>,
    /// The peer's address, where the transport knows it.
    pub peer: Option<SocketAddr>,
    /// The protocol version it speaks.
    pub protocol: Protocol,
    /// The identity of the client certificate the transport verified, if
    /// any.
    pub certificate: Option<CertificateIdentity>,
}

/// What a verified client certificate says about its holder, as the TLS
/// listener extracted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The subject, as an RFC 4514 string (`CN=alice,O=Example`).
    pub subject: String,
    /// The subject's Common Name.
    pub common_name: Option<String>,
    /// DNS names of the Subject Alternative Name extension.
    pub dns_names: Vec<String>,
    /// E-mail addresses (RFC 822 names) of the Subject Alternative Name
    /// extension.
    pub emails: Vec<String>,
}

/// An authenticator's answer.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// The client is who it says.
    Allow(Grant),
    /// Refused, with the CONNACK reason (0x86 Bad User Name or Password,
    /// 0x87 Not Authorized, 0x8A Banned, …; 3.1.1 clients get the matching
    /// return code).
    Deny(ReasonCode),
    /// Not this authenticator's to judge: ask the next.
    Pass,
}

/// Who an accepted client is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// The user name it sent, which the method verified (a password file).
    #[default]
    AsSent,
    /// This user name (a certificate's name, a token's claim, SCRAM's user).
    Named(String),
    /// No user name: the method verified something else, and the user
    /// name the client sent (if any) is not to be trusted (a token that
    /// names nobody). ACL `user` rules and session ownership then treat
    /// it as anonymous.
    Nobody,
}

/// What an accepted client is granted.
#[derive(Clone, Debug, Default)]
pub struct Grant {
    /// Who it is from now on (ACL rules, session ownership, logs).
    pub identity: Identity,
    /// Permissions its credential carries. When set, they alone decide
    /// what it may publish, subscribe to and receive.
    pub permissions: Option<Arc<dyn Permissions>>,
}

impl Grant {
    /// A grant that keeps the client's (verified) user name and adds no
    /// permissions.
    pub fn plain() -> Self {
        Self::default()
    }

    /// A grant naming the client.
    pub fn named(username: impl Into<String>) -> Self {
        Self {
            identity: Identity::Named(username.into()),
            permissions: None,
        }
    }
}

/// Decides whether a client's credentials are good. Methods are chained in
/// configuration order (see the module docs); an embedding application adds
/// its own with [`crate::BrokerBuilder::authenticator`].
///
/// The future may take as long as it needs (a database, an HTTP service):
/// it runs in the connecting client's own task, and the broker bounds it
/// by the connect timeout.
pub trait Authenticator: Send + Sync + 'static {
    /// Its name, for logs.
    fn name(&self) -> &str;

    /// Judge `credentials`.
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> BoxFuture<'a, Verdict>;
}

/// A 5.0 enhanced authentication method (4.12), chosen by the
/// Authentication Method a CONNECT (or a re-authentication) names.
pub trait AuthMethod: Send + Sync + 'static {
    /// The Authentication Method it answers to (`SCRAM-SHA-256`).
    fn name(&self) -> &str;

    /// Begin an exchange with a client.
    fn start(&self, credentials: &Credentials) -> Box<dyn AuthExchange>;
}

/// One enhanced authentication exchange, step by step.
pub trait AuthExchange: Send + Sync {
    /// The client's next Authentication Data (the first comes with
    /// CONNECT, or with the AUTH that starts a re-authentication).
    fn step(&mut self, data: Option<Bytes>) -> BoxFuture<'_, Exchange>;
}

/// Where an enhanced authentication exchange stands.
#[derive(Clone, Debug)]
pub enum Exchange {
    /// Send the client this challenge (AUTH, Continue Authentication).
    Continue(Bytes),
    /// The client proved who it is; `data` goes to it in the CONNACK (or
    /// the AUTH that ends a re-authentication).
    Success {
        /// What it is granted.
        grant: Grant,
        /// The last Authentication Data, if the method has one.
        data: Option<Bytes>,
    },
    /// Refused, with this reason.
    Deny(ReasonCode),
}

/// What a client asks to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to a topic name (Mosquitto's `write`).
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
    /// Receive a message published to a topic name (Mosquitto's `read`).
    Receive,
}

/// A rule set's answer about one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// No rule here speaks of it: ask the next rule set.
    Pass,
}

/// Who a client is, for the rules that apply to it.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo<'a> {
    /// Its client identifier.
    pub client_id: &'a str,
    /// Its user name, as authentication settled it.
    pub username: Option<&'a str>,
}

/// Resolves the rules that apply to one client, once, when it connects
/// (and again when the rules are reloaded). An embedding application adds
/// its own with [`crate::BrokerBuilder::authorizer`].
pub trait Authorizer: Send + Sync + 'static {
    /// Its name, for logs.
    fn name(&self) -> &str;

    /// The permissions that apply to `client`.
    fn permissions(&self, client: &ClientInfo<'_>) -> Arc<dyn Permissions>;
}

/// The rules that apply to one client.
pub trait Permissions: Send + Sync + fmt::Debug + 'static {
    /// Whether the client may do `action` with `topic` (a topic name for
    /// publish and receive, a topic filter for subscribe: a shared
    /// subscription's filter without its `$share/{group}/`).
    fn check(&self, action: Action, topic: &str) -> Decision;

    /// Whether every topic `filter` matches may be received, so deliveries
    /// through a subscription to it need no check of their own. `false`
    /// (the default) is always safe: each delivery is then checked.
    fn receives_all(&self, filter: &str) -> bool {
        let _ = filter;
        false
    }
}

/// Permissions that allow everything: a connection the program made to
/// itself (a bridge's local side).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unrestricted;

impl Permissions for Unrestricted {
    fn check(&self, _: Action, _: &str) -> Decision {
        Decision::Allow
    }

    fn receives_all(&self, _: &str) -> bool {
        true
    }
}

/// Accepts a client whose transport verified a client certificate, known
/// by its certificate's identity (Mosquitto's `use_identity_as_username`):
/// the Common Name, or the first DNS name or e-mail address of the Subject
/// Alternative Name, as configured. A client without a verified
/// certificate is not its to judge.
#[derive(Clone, Debug)]
pub struct CertificateAuthenticator {
    field: crate::config::CertificateField,
}

impl CertificateAuthenticator {
    /// Use `field` of the certificate as the user name.
    pub fn new(field: crate::config::CertificateField) -> Self {
        Self { field }
    }
}

impl Authenticator for CertificateAuthenticator {
    fn name(&self) -> &str {
        "certificate"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> BoxFuture<'a, Verdict> {
        use crate::config::CertificateField as F;
        let verdict = match &credentials.certificate {
            None => Verdict::Pass,
            Some(id) => {
                let name = match self.field {
                    F::Cn => id.common_name.clone(),
                    F::Subject => Some(id.subject.clone()),
                    F::Dns => id.dns_names.first().cloned(),
                    F::Email => id.emails.first().cloned(),
                };
                match name {
                    Some(n) if !n.is_empty() => Verdict::Allow(Grant::named(n)),
                    // A certificate without the field asked for says
                    // nobody's name.
                    _ => Verdict::Deny(ReasonCode::NOT_AUTHORIZED),
                }
            }
        };
        Box::pin(std::future::ready(verdict))
    }
}

/// What one client may do: the permissions of its credential, then those
/// every authorizer resolved for it.
#[derive(Debug)]
pub(crate) struct Access {
    /// The user name it is known by (None: anonymous).
    pub(crate) username: Option<Arc<str>>,
    /// Permissions its credential carried (kept to rebuild on reload).
    pub(crate) claims: Option<Arc<dyn Permissions>>,
    layers: Box<[Arc<dyn Permissions>]>,
    /// What no layer decides: allowed only when there are no rules at all.
    unrestricted: bool,
    /// Receive decisions by topic: deliveries are checked in publishers'
    /// tasks, hence the lock.
    receive_cache: std::sync::Mutex<DecisionCache>,
}

impl Access {
    /// Build a client's access from its identity and the authorizers.
    pub(crate) fn resolve(
        client_id: &str,
        username: Option<Arc<str>>,
        claims: Option<Arc<dyn Permissions>>,
        authorizers: &[Arc<dyn Authorizer>],
    ) -> Arc<Self> {
        if claims.is_none() && authorizers.is_empty() && username.is_none() {
            return anonymous();
        }
        let info = ClientInfo {
            client_id,
            username: username.as_deref(),
        };
        let layers: Box<[Arc<dyn Permissions>]> = match &claims {
            // A credential's own permissions alone decide.
            Some(c) => Box::new([c.clone()]),
            None => authorizers.iter().map(|a| a.permissions(&info)).collect(),
        };
        Arc::new(Self {
            unrestricted: layers.is_empty(),
            username,
            claims,
            layers,
            receive_cache: std::sync::Mutex::default(),
        })
    }

    /// Whether the client may do `action` with `topic`. Writing to `$SYS`
    /// is the broker's alone, whatever the rules say. A shared
    /// subscription (`$share/{group}/{filter}`) is judged by its filter:
    /// it receives what that filter matches.
    pub(crate) fn check(&self, action: Action, topic: &str) -> bool {
        if action == Action::Publish && super::is_sys(topic) {
            return false;
        }
        let topic = match action {
            Action::Subscribe => unshared(topic),
            Action::Publish | Action::Receive => topic,
        };
        for layer in self.layers.iter() {
            match layer.check(action, topic) {
                Decision::Allow => return true,
                Decision::Deny => return false,
                Decision::Pass => {}
            }
        }
        self.unrestricted
    }

    /// Whether the client may receive a message published to `topic`
    /// (decisions cached).
    pub(crate) fn may_receive(&self, topic: &str) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        super::lock(&self.receive_cache).get(topic, || self.check(Action::Receive, topic))
    }

    /// Whether everything `filter` matches may be received.
    pub(crate) fn receives_all(&self, filter: &str) -> bool {
        let filter = unshared(filter);
        match &*self.layers {
            [] => self.unrestricted,
            [only] => only.receives_all(filter),
            // Which layer decides may differ topic by topic.
            _ => false,
        }
    }

    /// Whether no rule restricts the client.
    pub(crate) fn is_unrestricted(&self) -> bool {
        self.layers.is_empty() && self.unrestricted
    }
}

/// The topic filter of a shared subscription (`$share/{group}/{filter}`),
/// or the filter itself.
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// The access of an anonymous client when no rules exist: shared, so such
/// clients allocate nothing for it.
pub(crate) fn anonymous() -> Arc<Access> {
    static ANON: OnceLock<Arc<Access>> = OnceLock::new();
    ANON.get_or_init(|| {
        Arc::new(Access {
            username: None,
            claims: None,
            layers: Box::new([]),
            unrestricted: true,
            receive_cache: std::sync::Mutex::default(),
        })
    })
    .clone()
}

/// Decisions already made for one client, by topic, so that a client
/// publishing to the same topics does not rescan the rules each time.
/// Bounded by bytes: topics longer than [`CACHED_TOPIC`] are decided each
/// time, and a cache that reaches [`CACHE_BYTES`] starts over, so a client
/// making up topics costs a few kilobytes at most.
#[derive(Debug, Default)]
pub(crate) struct DecisionCache {
    map: HashMap<Box<str>, bool>,
    bytes: usize,
}

/// Longest topic a decision is cached for.
pub(crate) const CACHED_TOPIC: usize = 256;
/// Most bytes one cache holds (topics, and a rough per-entry cost).
const CACHE_BYTES: usize = 8 * 1024;
/// What an entry costs besides its topic.
const ENTRY_COST: usize = 40;

impl DecisionCache {
    /// The decision for `topic`, made by `decide` if not cached.
    pub(crate) fn get(&mut self, topic: &str, decide: impl FnOnce() -> bool) -> bool {
        if let Some(&d) = self.map.get(topic) {
            return d;
        }
        let d = decide();
        if topic.len() <= CACHED_TOPIC {
            let cost = topic.len() + ENTRY_COST;
            if self.bytes + cost > CACHE_BYTES {
                self.map = HashMap::new();
                self.bytes = 0;
            }
            self.map.insert(topic.into(), d);
            self.bytes += cost;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_cache_is_bounded_by_bytes() {
        let mut c = DecisionCache::default();
        let mut asked = 0;
        for i in 0..10_000 {
            c.get(&format!("made/up/{i}"), || {
                asked += 1;
                true
            });
            assert!(c.bytes <= CACHE_BYTES);
        }
        assert_eq!(asked, 10_000);
        // A long topic is decided each time, never kept.
        let long = "x".repeat(CACHED_TOPIC + 1);
        let before = c.bytes;
        for _ in 0..3 {
            c.get(&long, || {
                asked += 1;
                false
            });
        }
        assert_eq!((asked, c.bytes), (10_003, before));
        // A repeated short one is decided once.
        c.get("t", || true);
        assert!(c.get("t", || unreachable!()));
        assert_eq!(unshared("$share/g/a/#"), "a/#");
        assert_eq!(unshared("a/#"), "a/#");
    }
}
