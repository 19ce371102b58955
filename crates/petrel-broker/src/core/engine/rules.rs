//! What one listener allows, beyond the broker's own rules: the part of
//! a listener's configuration the engine decides with, shared by its
//! connections (each one's record points at it).

use std::sync::Arc;

use petrel_codec::Protocol;

/// What one listener allows, beyond the broker's own rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerRules {
    /// Protocol versions accepted; empty: every one.
    pub protocols: Vec<Protocol>,
    /// Methods of authentication allowed, by name (an authenticator's or
    /// a 5.0 method's, or `anonymous`); none: every one.
    pub methods: Option<Vec<String>>,
    /// The listener's name in the admin API and metrics (`tcp
    /// 127.0.0.1:1883`); empty: not a listener (an embedding application's
    /// own transport).
    pub name: Arc<str>,
}

impl ListenerRules {
    /// The rules of a configured listener.
    pub fn of(listener: &crate::config::ListenerConfig) -> Self {
        let methods = listener.auth_methods.clone().or_else(|| {
            // Mosquitto's use_identity_as_username: the certificate is
            // how clients authenticate there.
            listener
                .use_identity_as_username
                .then(|| vec!["certificate".to_string()])
        });
        Self {
            name: listener.describe().into(),
            protocols: listener
                .protocols
                .iter()
                .flatten()
                .map(|p| p.protocol())
                .collect(),
            methods,
        }
    }

    /// Whether `protocol` is accepted.
    pub fn accepts(&self, protocol: Protocol) -> bool {
        self.protocols.is_empty() || self.protocols.contains(&protocol)
    }

    /// Whether the method called `name` may be used.
    pub fn allows(&self, name: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|n| n == name))
    }
}
