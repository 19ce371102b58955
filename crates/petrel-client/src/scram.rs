//! The client's side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC
//! 7677) over 5.0 enhanced authentication: it proves it knows the password
//! without sending it, and checks that the broker knows the user's
//! credential in return (a broker that can't is refused).

use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::options::Authenticator;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The gs2 header: no channel binding, no authorisation identity.
const GS2: &str = "n,,";

/// Which SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// The Authentication Method name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism an Authentication Method names, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
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

/// Where one exchange stands.
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// client-first sent.
    Started {
        client_first_bare: String,
        nonce: String,
    },
    /// client-final sent: the broker's signature to expect.
    Proved { server_signature: Vec<u8> },
}

/// A SCRAM [`Authenticator`]. Set it in
/// [`crate::ConnectOptions::authenticator`] (the Authentication Method
/// follows from it); it runs again on every connection and for
/// [`crate::Client::reauthenticate`].
pub struct ScramAuthenticator {
    mechanism: ScramMechanism,
    username: String,
    password: Vec<u8>,
    /// The most iterations accepted from a broker (a hostile one could ask
    /// for billions).
    max_iterations: u32,
    state: Mutex<State>,
}

impl std::fmt::Debug for ScramAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramAuthenticator")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `,` and `=` escaped as RFC 5802's saslname asks.
fn escape(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

impl ScramAuthenticator {
    /// Authenticate as `username` with `password`.
    pub fn new(
        mechanism: ScramMechanism,
        username: impl Into<String>,
        password: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            mechanism,
            username: username.into(),
            password: password.into(),
            max_iterations: 1_000_000,
            state: Mutex::new(State::Idle),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Authenticator for ScramAuthenticator {
    fn method(&self) -> Option<&str> {
        Some(self.mechanism.name())
    }

    fn initial_data(&self) -> Option<Bytes> {
        let mut raw = [0u8; 18];
        // Without randomness a nonce would repeat; refuse to start then.
        getrandom::getrandom(&mut raw).ok()?;
        let nonce = B64.encode(raw);
        let client_first_bare = format!("n={},r={nonce}", escape(&self.username));
        let first = format!("{GS2}{client_first_bare}");
        *self.lock() = State::Started {
            client_first_bare,
            nonce,
        };
        Some(Bytes::from(first))
    }

    fn respond(&self, challenge: Option<&Bytes>) -> Result<Bytes, String> {
        let mut state = self.lock();
        let State::Started {
            client_first_bare,
            nonce,
        } = std::mem::take(&mut *state)
        else {
            return Err("a SCRAM challenge out of turn".into());
        };
        let server_first = challenge
            .and_then(|c| std::str::from_utf8(c).ok())
            .ok_or("the broker's SCRAM challenge is not text")?;
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => r = Some(v),
                Some(("s", v)) => s = Some(v),
                Some(("i", v)) => i = Some(v),
                Some(("m", _)) => return Err("the broker asks for a SCRAM extension".into()),
                _ => {}
            }
        }
        let (Some(r), Some(s), Some(i)) = (r, s, i) else {
            return Err("the broker's SCRAM challenge lacks r, s or i".into());
        };
        if !r.starts_with(&nonce) || r.len() == nonce.len() {
            return Err("the broker's nonce does not extend ours".into());
        }
        let salt = B64.decode(s).map_err(|_| "the salt is not base64")?;
        let iterations: u32 = i
            .parse()
            .ok()
            .filter(|&i| (1..=self.max_iterations).contains(&i))
            .ok_or("unacceptable SCRAM iteration count")?;
        let m = self.mechanism;
        let salted = m.salted_password(&self.password, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.digest(&client_key);
        let without_proof = format!("c={},r={r}", B64.encode(GS2));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = m.hmac(&salted, b"Server Key");
        *state = State::Proved {
            server_signature: m.hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(Bytes::from(format!(
            "{without_proof},p={}",
            B64.encode(proof)
        )))
    }

    fn finish(&self, data: Option<&Bytes>) -> Result<(), String> {
        let State::Proved { server_signature } = std::mem::take(&mut *self.lock()) else {
            return Err("the broker accepted before SCRAM finished".into());
        };
        let last = data
            .and_then(|d| std::str::from_utf8(d).ok())
            .ok_or("the broker sent no SCRAM proof")?;
        if let Some(e) = last.strip_prefix("e=") {
            return Err(format!("the broker reports a SCRAM error: {e}"));
        }
        let v = last
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or("the broker's SCRAM proof is malformed")?;
        if bool::from(v.ct_eq(&server_signature)) {
            Ok(())
        } else {
            Err("the broker could not prove it knows the credential".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (SCRAM-SHA-256, user "user", password
    /// "pencil"), with the client's nonce set as the RFC's.
    #[test]
    fn rfc_7677_example() {
        let a = ScramAuthenticator::new(ScramMechanism::Sha256, "user", "pencil");
        *a.lock() = State::Started {
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        let server_first = Bytes::from_static(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        );
        let last = a.respond(Some(&server_first)).unwrap();
        assert_eq!(
            &last[..],
            &b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="[..]
        );
        let v = Bytes::from_static(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert_eq!(a.finish(Some(&v)), Ok(()));
    }

    #[test]
    fn a_wrong_server_signature_is_refused() {
        let a = ScramAuthenticator::new(ScramMechanism::Sha256, "user", "pencil");
        *a.lock() = State::Proved {
            server_signature: vec![1, 2, 3],
        };
        assert!(a.finish(Some(&Bytes::from_static(b"v=AAAA"))).is_err());
        assert!(a.finish(None).is_err(), "nothing to finish any more");
        assert_eq!(escape("a,b=c"), "a=2Cb=3Dc");
    }
}
