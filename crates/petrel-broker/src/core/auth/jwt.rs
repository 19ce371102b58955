//! Tokens: a client whose password is a JSON Web Token is accepted if the
//! token is signed by a configured key (an HMAC secret, an RSA or EC public
//! key in PEM, or a JWK set file) and its claims hold: it has not expired
//! (`exp` is required), is already valid (`nbf`), and carries the
//! configured audience (`aud`) and issuer (`iss`).
//!
//! * With `username_claim` set, that claim names the user: a client that
//!   sent a different user name is refused, one that sent none is known by
//!   the claim. Without it, the token names nobody: the user name the
//!   client sent is not trusted, and ACL `user` rules and session
//!   ownership treat the client as anonymous.
//! * A claim (`acl` by default) may carry the client's permissions, as EMQX
//!   reads them: `{"pub": [filters], "sub": [filters], "all": [filters]}`,
//!   with `%c` and `%u` standing for the client id and user name. A client
//!   whose token carries them may do exactly what they say and nothing
//!   else; the ACL file does not apply to it.
//!
//! A password that is not a token is not this method's to judge. A token
//! that fails is refused with 0x86 Bad User Name or Password (3.1.1: 4).

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use petrel_codec::ReasonCode;
use serde_json::Value;

use super::filters::{covers, matches, substitute};
use super::{
    read_file, Action, AuthFileError, Authenticator, BoxFuture, Credentials, Decision, Grant,
    Identity, Permissions, Verdict,
};
use crate::config::JwtConfig;

/// The key families a token's algorithm may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm as A;
    match alg {
        A::HS256 | A::HS384 | A::HS512 => Family::Hmac,
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => Family::Rsa,
        A::ES256 | A::ES384 => Family::Ec,
        A::EdDSA => Family::Ed,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// Verifies tokens: an [`Authenticator`].
pub struct JwtAuthenticator {
    keys: Vec<Key>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
    username_claim: Option<String>,
    acl_claim: String,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("keys", &self.keys.len())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> AuthFileError {
    AuthFileError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl JwtAuthenticator {
    /// Load the keys `config` names.
    pub fn new(config: &JwtConfig) -> Result<Self, AuthFileError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.secret {
            keys.push(Key {
                kid: None,
                family: Family::Hmac,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = &config.public_key {
            let pem = read_file(path)?;
            let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (Family::Rsa, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (Family::Ec, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
                (Family::Ed, k)
            } else {
                return Err(invalid(path, "not an RSA, EC or Ed25519 public key in PEM"));
            };
            keys.push(Key {
                kid: None,
                family,
                key,
            });
        }
        if let Some(path) = &config.jwks {
            let text = read_file(path)?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .map_err(|e| invalid(path, format!("not a JWK set: {e}")))?;
            for jwk in &set.keys {
                use jsonwebtoken::jwk::AlgorithmParameters as P;
                let family = match &jwk.algorithm {
                    P::RSA(_) => Family::Rsa,
                    P::EllipticCurve(_) => Family::Ec,
                    P::OctetKeyPair(_) => Family::Ed,
                    P::OctetKey(_) => Family::Hmac,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| invalid(path, format!("unusable key: {e}")))?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    family,
                    key,
                });
            }
        }
        Ok(Self {
            keys,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway,
            username_claim: config.username_claim.clone(),
            acl_claim: config.acl_claim.clone(),
        })
    }

    /// Verify a token; its claims, or why not.
    fn verify(&self, token: &str) -> Result<serde_json::Map<String, Value>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            validation.set_issuer(&[i]);
        }
        let fam = family(header.alg);
        let mut last = String::from("no key for its algorithm");
        for k in self.keys.iter().filter(|k| {
            k.family == fam && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        }) {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &validation)
            {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// Whether a password looks like a compact JWS (three base64url parts).
fn looks_like_token(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

impl Authenticator for JwtAuthenticator {
    fn name(&self) -> &str {
        "jwt"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> BoxFuture<'a, Verdict> {
        let verdict = (|| {
            let password = credentials.password.as_ref()?;
            let token = std::str::from_utf8(password).ok()?;
            if !looks_like_token(token) {
                return None;
            }
            let bad = Verdict::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
            let claims = match self.verify(token) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(client_id = %credentials.client_id, error = %e, "token refused");
                    return Some(bad);
                }
            };
            // Only the token says who the client is: without a claim that
            // names it, the user name the client sent is not trusted.
            let mut username = None;
            if let Some(claim) = &self.username_claim {
                let Some(name) = claims.get(claim).and_then(Value::as_str) else {
                    tracing::debug!(client_id = %credentials.client_id, claim, "token without its user name claim");
                    return Some(bad);
                };
                if credentials.username.as_deref().is_some_and(|u| u != name) {
                    tracing::debug!(client_id = %credentials.client_id, claim, "user name differs from the token's");
                    return Some(bad);
                }
                username = Some(name.to_string());
            }
            let permissions = match claims.get(&self.acl_claim) {
                None => None,
                Some(v) => match ClaimPermissions::parse(v, &credentials.client_id, username.as_deref()) {
                    Ok(p) => Some(Arc::new(p) as Arc<dyn Permissions>),
                    Err(e) => {
                        tracing::debug!(client_id = %credentials.client_id, error = %e, "token permissions unreadable");
                        return Some(bad);
                    }
                },
            };
            Some(Verdict::Allow(Grant {
                identity: username.map_or(Identity::Nobody, Identity::Named),
                permissions,
            }))
        })()
        .unwrap_or(Verdict::Pass);
        Box::pin(std::future::ready(verdict))
    }
}

/// The permissions a token's claim carries.
#[derive(Debug, Default)]
pub(crate) struct ClaimPermissions {
    publish: Vec<Box<str>>,
    subscribe: Vec<Box<str>>,
}

impl ClaimPermissions {
    fn parse(v: &Value, client_id: &str, username: Option<&str>) -> Result<Self, String> {
        let obj = v.as_object().ok_or("not an object")?;
        let mut p = Self::default();
        for (key, list) in obj {
            let filters = list
                .as_array()
                .ok_or_else(|| format!("`{key}` is not a list"))?
                .iter()
                .map(|f| {
                    let f = f
                        .as_str()
                        .ok_or_else(|| format!("`{key}` holds a non-string"))?;
                    Ok(substitute(f, client_id, username))
                })
                .collect::<Result<Vec<Option<Box<str>>>, String>>()?;
            let filters = filters.into_iter().flatten();
            match key.as_str() {
                "pub" => p.publish.extend(filters),
                "sub" => p.subscribe.extend(filters),
                "all" => {
                    let all: Vec<Box<str>> = filters.collect();
                    p.publish.extend(all.iter().cloned());
                    p.subscribe.extend(all);
                }
                other => return Err(format!("unknown key `{other}` (expected pub, sub or all)")),
            }
        }
        Ok(p)
    }
}

impl Permissions for ClaimPermissions {
    fn check(&self, action: Action, topic: &str) -> Decision {
        let ok = match action {
            Action::Publish => self.publish.iter().any(|f| matches(f, topic)),
            Action::Receive => self.subscribe.iter().any(|f| matches(f, topic)),
            Action::Subscribe => self.subscribe.iter().any(|f| covers(f, topic)),
        };
        if ok {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    fn receives_all(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|f| covers(f, filter))
    }
}
