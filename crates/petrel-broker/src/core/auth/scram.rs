//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) over 5.0
//! enhanced authentication: the client proves it knows the password
//! without sending it, and the broker proves it knows the client's
//! credential in return.
//!
//! ```text
//! CONNECT  Authentication Method SCRAM-SHA-256, Data: n,,n=alice,r=<client nonce>
//! AUTH 0x18                           Data: r=<client+server nonce>,s=<salt>,i=4096
//! AUTH 0x18                           Data: c=biws,r=<nonce>,p=<proof>
//! CONNACK 0x00                        Data: v=<server signature>
//! ```
//!
//! The same exchange, started by an AUTH with reason 0x19, re-authenticates
//! a connected client (it must prove the same user name).
//!
//! The broker keeps no password, only each user's salted keys (StoredKey
//! and ServerKey), in a credentials file written by `petrel passwd
//! --scram`, one line per user and mechanism:
//!
//! ```text
//! alice:$scram-sha-256$4096$<salt>$<StoredKey>$<ServerKey>
//! ```
//!
//! Channel binding is not offered (the gs2 header must be `n` or `y`). An
//! unknown user gets a salt derived from its name and a secret, so the
//! exchange runs to its end and fails as a wrong password would: nobody
//! learns which user names exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use petrel_codec::ReasonCode;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::password::for_each_line;
use super::{
    read_file, AuthExchange, AuthFileError, AuthMethod, BoxFuture, Credentials, Exchange, Grant,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Iterations `petrel passwd --scram` uses (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The hash a SCRAM mechanism is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    /// Both mechanisms.
    pub const ALL: [Self; 2] = [Self::Sha256, Self::Sha512];

    /// The Authentication Method name.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Sha256 => "$scram-sha-256$",
            Self::Sha512 => "$scram-sha-512$",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Self::Sha512 => {
                let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out
            }
            Self::Sha512 => {
                let mut out = vec![0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// What the broker keeps of one user's password for one mechanism.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// The mechanism.
    pub hash: ScramHash,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScramCredential({})", self.hash.mechanism())
    }
}

impl ScramCredential {
    /// Derive the credential of `password` with a fresh salt.
    pub fn new(hash: ScramHash, password: &[u8], iterations: u32) -> Result<Self, String> {
        let mut salt = vec![0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
        let salted = hash.salted_password(password, &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        Ok(Self {
            hash,
            iterations,
            stored_key: hash.digest(&client_key),
            server_key: hash.hmac(&salted, b"Server Key"),
            salt,
        })
    }

    /// The encoded form, as it goes after `username:`.
    pub fn encode(&self) -> String {
        format!(
            "{}{}${}${}${}",
            self.hash.tag(),
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    /// Parse the encoded form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (hash, rest) = ScramHash::ALL
            .iter()
            .find_map(|h| s.strip_prefix(h.tag()).map(|r| (*h, r)))
            .ok_or("expected $scram-sha-256$ or $scram-sha-512$")?;
        let mut parts = rest.split('$');
        let (Some(i), Some(salt), Some(stored), Some(server), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("expected iterations$salt$StoredKey$ServerKey".into());
        };
        let iterations: u32 = i
            .parse()
            .ok()
            .filter(|&i| (1..=10_000_000).contains(&i))
            .ok_or("bad iteration count")?;
        let dec = |v: &str| B64.decode(v).map_err(|_| "not base64".to_string());
        let c = Self {
            hash,
            iterations,
            salt: dec(salt)?,
            stored_key: dec(stored)?,
            server_key: dec(server)?,
        };
        let len = hash.digest(b"").len();
        if c.stored_key.len() != len || c.server_key.len() != len || c.salt.is_empty() {
            return Err("keys of the wrong length".into());
        }
        Ok(c)
    }
}

/// A parsed SCRAM credentials file.
#[derive(Debug)]
pub struct ScramFile {
    path: Option<PathBuf>,
    users: HashMap<(String, ScramHash), ScramCredential>,
    /// For the salts of unknown users.
    secret: [u8; 32],
}

impl ScramFile {
    /// Read and parse a credentials file.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = read_file(path)?;
        let mut f = Self::parse(&text, path)?;
        f.path = Some(path.to_path_buf());
        Ok(f)
    }

    /// Parse credential lines; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthFileError> {
        let mut users = HashMap::new();
        for_each_line(text, path, |user, encoded| {
            let c = ScramCredential::parse(encoded)?;
            match users.insert((user.to_string(), c.hash), c) {
                Some(_) => Err(format!("user `{user}` appears twice for one mechanism")),
                None => Ok(()),
            }
        })?;
        let mut secret = [0u8; 32];
        // Without randomness the fake salts are merely predictable.
        let _ = getrandom::getrandom(&mut secret);
        Ok(Self {
            path: None,
            users,
            secret,
        })
    }

    /// How many credentials it holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file it was read from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// One SCRAM mechanism over a credentials file: an [`AuthMethod`].
#[derive(Clone, Debug)]
pub struct ScramMethod {
    hash: ScramHash,
    file: Arc<ScramFile>,
}

impl ScramMethod {
    /// `hash`'s mechanism, with the credentials of `file`.
    pub fn new(hash: ScramHash, file: Arc<ScramFile>) -> Self {
        Self { hash, file }
    }
}

impl AuthMethod for ScramMethod {
    fn name(&self) -> &str {
        self.hash.mechanism()
    }

    fn start(&self, credentials: &Credentials) -> Box<dyn AuthExchange> {
        Box::new(ScramExchange {
            method: self.clone(),
            connect_username: credentials.username.clone(),
            state: State::Start,
        })
    }
}

enum State {
    Start,
    /// server-first sent.
    Challenged {
        username: String,
        gs2_header: String,
        nonce: String,
        client_first_bare: String,
        server_first: String,
        credential: Option<ScramCredential>,
    },
    Done,
}

struct ScramExchange {
    method: ScramMethod,
    connect_username: Option<String>,
    state: State,
}

fn deny() -> Exchange {
    Exchange::Deny(ReasonCode::NOT_AUTHORIZED)
}

/// `=2C` and `=3D` back to `,` and `=` (RFC 5802 saslname); `None` if
/// malformed.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl ScramExchange {
    fn first(&mut self, data: &[u8]) -> Exchange {
        let Ok(msg) = std::str::from_utf8(data) else {
            return deny();
        };
        // gs2-header: cbind flag, authzid, then the bare message.
        let mut it = msg.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (it.next(), it.next(), it.next()) else {
            return deny();
        };
        if cbind != "n" && cbind != "y" {
            // Channel binding is not offered.
            return deny();
        }
        let mut attrs = bare.split(',');
        let (Some(n), Some(r)) = (attrs.next(), attrs.next()) else {
            return deny();
        };
        let (Some(name), Some(client_nonce)) = (n.strip_prefix("n="), r.strip_prefix("r=")) else {
            return deny();
        };
        let Some(username) = unescape(name) else {
            return deny();
        };
        if username.is_empty()
            || client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return deny();
        }
        if !authzid.is_empty()
            && authzid.strip_prefix("a=").and_then(unescape) != Some(username.clone())
        {
            return deny();
        }
        if self
            .connect_username
            .as_ref()
            .is_some_and(|u| *u != username)
        {
            // The CONNECT's User Name must be the one proven.
            return deny();
        }
        let hash = self.method.hash;
        let credential = self
            .method
            .file
            .users
            .get(&(username.clone(), hash))
            .cloned();
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => {
                let fake = hash.hmac(&self.method.file.secret, username.as_bytes());
                (fake[..16].to_vec(), DEFAULT_ITERATIONS)
            }
        };
        let mut server_nonce = [0u8; 18];
        if getrandom::getrandom(&mut server_nonce).is_err() {
            return Exchange::Deny(ReasonCode::UNSPECIFIED_ERROR);
        }
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        self.state = State::Challenged {
            username,
            gs2_header: format!("{cbind},{authzid},"),
            nonce,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            credential,
        };
        Exchange::Continue(Bytes::from(server_first))
    }

    fn last(&mut self, data: &[u8]) -> Exchange {
        let State::Challenged {
            username,
            gs2_header,
            nonce,
            client_first_bare,
            server_first,
            credential,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return deny();
        };
        let Ok(msg) = std::str::from_utf8(data) else {
            return deny();
        };
        let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
            return deny();
        };
        let mut attrs = without_proof.split(',');
        let (Some(c), Some(r)) = (attrs.next(), attrs.next()) else {
            return deny();
        };
        if c.strip_prefix("c=") != Some(&B64.encode(gs2_header.as_bytes()))
            || r.strip_prefix("r=") != Some(&nonce)
        {
            return deny();
        }
        let Ok(proof) = B64.decode(proof) else {
            return deny();
        };
        let Some(credential) = credential else {
            return deny();
        };
        let hash = self.method.hash;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hash.hmac(&credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return deny();
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if !bool::from(hash.digest(&client_key).ct_eq(&credential.stored_key)) {
            return deny();
        }
        let server_signature = hash.hmac(&credential.server_key, auth_message.as_bytes());
        Exchange::Success {
            grant: Grant::named(username),
            data: Some(Bytes::from(format!("v={}", B64.encode(server_signature)))),
        }
    }
}

impl AuthExchange for ScramExchange {
    fn step(&mut self, data: Option<Bytes>) -> BoxFuture<'_, Exchange> {
        let data = data.unwrap_or_default();
        let out = match self.state {
            State::Start => self.first(&data),
            State::Challenged { .. } => self.last(&data),
            State::Done => deny(),
        };
        Box::pin(std::future::ready(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, as RFC 5802 computes it.
    fn client_final(
        hash: ScramHash,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let attrs: HashMap<&str, &str> = server_first
            .split(',')
            .filter_map(|a| a.split_once('='))
            .collect();
        let salt = B64.decode(attrs["s"]).unwrap();
        let i: u32 = attrs["i"].parse().unwrap();
        let salted = hash.salted_password(password.as_bytes(), &salt, i);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored = hash.digest(&client_key);
        let without = format!("c=biws,r={}", attrs["r"]);
        let auth = format!("{client_first_bare},{server_first},{without}");
        let sig = hash.hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = hash.hmac(&salted, b"Server Key");
        (
            format!("{without},p={}", B64.encode(proof)),
            hash.hmac(&server_key, auth.as_bytes()),
        )
    }

    fn run(hash: ScramHash, file_password: &str, password: &str, user: &str) -> Exchange {
        let c = ScramCredential::new(hash, file_password.as_bytes(), 4096).unwrap();
        let line = format!("alice:{}\n", c.encode());
        let file = Arc::new(ScramFile::parse(&line, Path::new("scram")).unwrap());
        let method = ScramMethod::new(hash, file);
        let creds = Credentials {
            client_id: "c".into(),
            username: None,
            password: None,
            peer: None,
            protocol: petrel_codec::Protocol::V5,
            certificate: None,
        };
        let mut ex = method.start(&creds);
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let first = futures_lite(ex.step(Some(Bytes::from(format!("n,,{bare}")))));
        let Exchange::Continue(server_first) = first else {
            panic!("{first:?}")
        };
        let server_first = String::from_utf8(server_first.to_vec()).unwrap();
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let (fin, expected) = client_final(hash, password, &bare, &server_first);
        let out = futures_lite(ex.step(Some(Bytes::from(fin))));
        if let Exchange::Success { data, .. } = &out {
            assert_eq!(
                data.as_deref(),
                Some(format!("v={}", B64.encode(expected)).as_bytes())
            );
        }
        out
    }

    fn futures_lite<T>(f: BoxFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = f;
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("SCRAM never waits"),
        }
    }

    #[test]
    fn a_full_exchange_succeeds_and_proves_the_server() {
        for hash in ScramHash::ALL {
            let out = run(hash, "pencil", "pencil", "alice");
            assert!(
                matches!(&out, Exchange::Success { grant, .. } if grant.identity == crate::core::auth::Identity::Named("alice".into())),
                "{out:?}"
            );
        }
    }

    #[test]
    fn a_wrong_password_or_unknown_user_is_refused_at_the_end() {
        for hash in ScramHash::ALL {
            assert!(matches!(
                run(hash, "pencil", "pen", "alice"),
                Exchange::Deny(_)
            ));
            assert!(matches!(
                run(hash, "pencil", "pencil", "bob"),
                Exchange::Deny(_)
            ));
        }
    }

    #[test]
    fn credentials_round_trip_and_bad_lines_are_named() {
        let c = ScramCredential::new(ScramHash::Sha512, b"x", 4096).unwrap();
        assert_eq!(ScramCredential::parse(&c.encode()).unwrap(), c);
        let e =
            ScramFile::parse("a:$scram-sha-256$4096$AA==$AA==$AA==\n", Path::new("s")).unwrap_err();
        assert_eq!(e.to_string(), "s:1: keys of the wrong length");
        assert_eq!(unescape("a=2Cb=3D").as_deref(), Some("a,b="));
        assert_eq!(unescape("a=2"), None);
    }
}
