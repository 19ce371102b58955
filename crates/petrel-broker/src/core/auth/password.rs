//! The password file (`password_file`), in Mosquitto's format, so a file
//! written by `mosquitto_passwd` just works: one `username:hash` line per
//! user, `#` comments and blank lines ignored. The hashes understood:
//!
//! * `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512 (what Mosquitto 2.0
//!   writes by default);
//! * `$argon2id$v=19$m=…,t=…,p=…$salt$hash`: argon2id in the PHC string
//!   format (Mosquitto 2.1's default, and `petrel passwd`'s);
//! * `$6$salt$hash`: salted SHA-512 (Mosquitto 1.x).
//!
//! A line with a plain-text password or an unknown hash is an error naming
//! the file and the line (`petrel passwd -U` hashes plain-text files).
//!
//! Verifying a password is deliberately slow (argon2id takes tens of
//! milliseconds and tens of megabytes). It runs on threads of its own at
//! the lowest priority ([`VerifyPool`]), never on the async workers: a
//! storm of logins queues there and takes only the CPU the clients already
//! connected leave.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use petrel_codec::ReasonCode;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::{read_file, AuthFileError, Authenticator, BoxFuture, Credentials, Grant, Verdict};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64_NOPAD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// argon2id cost `petrel passwd` hashes with: 19 MiB, two passes, one
/// lane (the first of OWASP's recommended settings).
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

/// The most memory a hash in a file may ask argon2id for, and the most
/// PBKDF2 iterations: a typo must not make each login cost a gigabyte.
const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;
const PBKDF2_MAX_ITERATIONS: u32 = 10_000_000;

/// One user's password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512 of the password and the salt.
    Sha512 {
        /// The salt.
        salt: Vec<u8>,
        /// The digest.
        hash: Vec<u8>,
    },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// Iterations.
        iterations: u32,
        /// The salt.
        salt: Vec<u8>,
        /// The derived key.
        hash: Vec<u8>,
    },
    /// `$argon2id$`: argon2id, PHC string format.
    Argon2id {
        /// Version (0x13 or 0x10).
        version: u32,
        /// Memory in KiB.
        m: u32,
        /// Passes.
        t: u32,
        /// Lanes.
        p: u32,
        /// The salt.
        salt: Vec<u8>,
        /// The hash.
        hash: Vec<u8>,
    },
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hash itself in logs.
        let kind = match self {
            Self::Sha512 { .. } => "sha512",
            Self::Pbkdf2Sha512 { .. } => "pbkdf2-sha512",
            Self::Argon2id { .. } => "argon2id",
        };
        write!(f, "PasswordHash({kind})")
    }
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    B64.decode(s)
        .or_else(|_| B64_NOPAD.decode(s))
        .map_err(|_| format!("the {what} is not base64"))
}

impl PasswordHash {
    /// Parse an encoded hash as it stands after `username:`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("$6$") {
            let (salt, hash) = rest.split_once('$').ok_or("`$6$` needs `salt$hash`")?;
            let (salt, hash) = (b64(salt, "salt")?, b64(hash, "hash")?);
            if hash.len() != 64 {
                return Err("a `$6$` hash is 64 bytes".into());
            }
            return Ok(Self::Sha512 { salt, hash });
        }
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("`$7$` needs `iterations$salt$hash`".into());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|&i| (1..=PBKDF2_MAX_ITERATIONS).contains(&i))
                .ok_or("bad `$7$` iteration count")?;
            let (salt, hash) = (b64(salt, "salt")?, b64(hash, "hash")?);
            if hash.len() != 64 {
                return Err("a `$7$` hash is 64 bytes".into());
            }
            return Ok(Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        if let Some(rest) = s.strip_prefix("$argon2id$") {
            return Self::parse_argon2id(rest);
        }
        if s.starts_with('$') {
            return Err("unknown password hash (expected $7$, $6$ or $argon2id$)".into());
        }
        Err("the password is not hashed (run `petrel passwd -U` on the file)".into())
    }

    fn parse_argon2id(rest: &str) -> Result<Self, String> {
        let mut parts: Vec<&str> = rest.split('$').collect();
        let version = match parts.first() {
            Some(v) if v.starts_with("v=") => {
                let v = parts.remove(0);
                v[2..].parse().map_err(|_| "bad argon2id version")?
            }
            _ => 0x10,
        };
        if version != 0x13 && version != 0x10 {
            return Err("unknown argon2id version".into());
        }
        let [params, salt, hash] = parts[..] else {
            return Err("argon2id needs `m=…,t=…,p=…$salt$hash`".into());
        };
        let (mut m, mut t, mut p) = (None, None, None);
        for kv in params.split(',') {
            let (k, v) = kv.split_once('=').ok_or("bad argon2id parameters")?;
            let v: u32 = v.parse().map_err(|_| "bad argon2id parameters")?;
            match k {
                "m" => m = Some(v),
                "t" => t = Some(v),
                "p" => p = Some(v),
                _ => return Err(format!("unknown argon2id parameter `{k}`")),
            }
        }
        let (Some(m), Some(t), Some(p)) = (m, t, p) else {
            return Err("argon2id needs m, t and p".into());
        };
        if m > ARGON2_MAX_M_KIB {
            return Err("argon2id memory above 1 GiB".into());
        }
        let (salt, hash) = (b64(salt, "salt")?, b64(hash, "hash")?);
        argon2::Params::new(m, t, p, Some(hash.len()))
            .map_err(|e| format!("bad argon2id parameters: {e}"))?;
        if salt.len() < argon2::MIN_SALT_LEN {
            return Err("argon2id salt shorter than 8 bytes".into());
        }
        Ok(Self::Argon2id {
            version,
            m,
            t,
            p,
            salt,
            hash,
        })
    }

    /// Whether `password` is the one hashed. Slow by design: call it off
    /// the async workers ([`VerifyPool`]).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                bool::from(h.finalize().as_slice().ct_eq(hash))
            }
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.as_slice().ct_eq(hash))
            }
            Self::Argon2id {
                version,
                m,
                t,
                p,
                salt,
                hash,
            } => {
                let Ok(params) = argon2::Params::new(*m, *t, *p, Some(hash.len())) else {
                    return false;
                };
                let version = if *version == 0x13 {
                    argon2::Version::V0x13
                } else {
                    argon2::Version::V0x10
                };
                let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, version, params);
                let mut out = vec![0u8; hash.len()];
                a.hash_password_into(password, salt, &mut out).is_ok()
                    && bool::from(out.as_slice().ct_eq(hash))
            }
        }
    }

    /// Hash `password` with argon2id (`petrel passwd`'s default).
    pub fn argon2id(password: &[u8]) -> Result<Self, String> {
        let mut salt = vec![0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .map_err(|e| e.to_string())?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut hash = vec![0u8; 32];
        a.hash_password_into(password, &salt, &mut hash)
            .map_err(|e| e.to_string())?;
        Ok(Self::Argon2id {
            version: 0x13,
            m: ARGON2_M_KIB,
            t: ARGON2_T,
            p: ARGON2_P,
            salt,
            hash,
        })
    }

    /// Hash `password` with PBKDF2-HMAC-SHA512 as Mosquitto 2.0 does
    /// (`$7$`), for files Mosquitto 2.0 must read too.
    pub fn pbkdf2_sha512(password: &[u8], iterations: u32) -> Result<Self, String> {
        let mut salt = vec![0u8; 12];
        getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        Ok(Self::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        })
    }

    /// The encoded form, as it goes after `username:`.
    pub fn encode(&self) -> String {
        match self {
            Self::Sha512 { salt, hash } => format!("$6${}${}", B64.encode(salt), B64.encode(hash)),
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
            Self::Argon2id {
                version,
                m,
                t,
                p,
                salt,
                hash,
            } => format!(
                "$argon2id$v={version}$m={m},t={t},p={p}${}${}",
                B64_NOPAD.encode(salt),
                B64_NOPAD.encode(hash)
            ),
        }
    }
}

/// Read a `username:value` file (comments and blank lines skipped),
/// handing each user and value to `line`; an error, theirs or a malformed
/// line's, names the file and the line.
pub(crate) fn for_each_line(
    text: &str,
    path: &Path,
    mut line: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<(), AuthFileError> {
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let result = match trimmed.split_once(':') {
            None => Err("expected `username:value`".to_string()),
            Some(("", _)) => Err("empty user name".to_string()),
            Some((user, value)) => line(user, value),
        };
        result.map_err(|message| AuthFileError::Line {
            path: path.to_path_buf(),
            line: n + 1,
            message,
        })?;
    }
    Ok(())
}

/// A parsed password file: an [`Authenticator`].
#[derive(Debug, Default)]
pub struct PasswordFile {
    path: Option<PathBuf>,
    users: HashMap<String, Arc<PasswordHash>>,
}

impl PasswordFile {
    /// Read and parse a password file.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = read_file(path)?;
        let mut file = Self::parse(&text, path)?;
        file.path = Some(path.to_path_buf());
        Ok(file)
    }

    /// Parse password lines; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthFileError> {
        let mut users = HashMap::new();
        for_each_line(text, path, |user, encoded| {
            let hash = PasswordHash::parse(encoded)?;
            match users.insert(user.to_string(), Arc::new(hash)) {
                Some(_) => Err(format!("user `{user}` appears twice")),
                None => Ok(()),
            }
        })?;
        Ok(Self { path: None, users })
    }

    /// How many users it holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` has a line.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }
}

impl Authenticator for PasswordFile {
    fn name(&self) -> &str {
        "password_file"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let Some(user) = credentials.username.as_deref() else {
                return Verdict::Pass;
            };
            // Not a user of this file: another method may know it.
            let Some(hash) = self.users.get(user) else {
                return Verdict::Pass;
            };
            let Some(password) = credentials.password.clone() else {
                return Verdict::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
            };
            match VerifyPool::global().verify(hash.clone(), password).await {
                Ok(true) => Verdict::Allow(Grant::plain()),
                Ok(false) => Verdict::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
                Err(VerifyError::Busy) => Verdict::Deny(ReasonCode::SERVER_BUSY),
            }
        })
    }
}

/// Where slow password hashes are checked: threads of their own, half the
/// cores' worth (at least one), running at the lowest priority (nice 19),
/// so that a storm of logins takes what the cores have left over and never
/// the time of the clients already connected. At most `QUEUED` checks
/// wait; past that a login is refused as the server being busy.
#[derive(Debug)]
pub struct VerifyPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

/// Checks waiting for a hashing thread at most.
const QUEUED: usize = 1024;

type Job = (Arc<PasswordHash>, Bytes, tokio::sync::oneshot::Sender<bool>);

/// Why a password could not be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// Too many checks wait already.
    Busy,
}

impl VerifyPool {
    /// The process's pool, its threads started on first use.
    pub fn global() -> &'static Self {
        static POOL: OnceLock<VerifyPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUED);
            let rx = Arc::new(std::sync::Mutex::new(rx));
            for i in 0..cores.div_ceil(2) {
                let rx = rx.clone();
                let started = std::thread::Builder::new()
                    .name(format!("petrel-passwords-{i}"))
                    .spawn(move || {
                        // Lowest priority: only what the cores have left.
                        if let Err(e) = thread_priority::set_current_thread_priority(
                            thread_priority::ThreadPriority::Min,
                        ) {
                            tracing::debug!(error = ?e, "password thread keeps its priority");
                        }
                        loop {
                            let job = crate::core::lock(&rx).recv();
                            let Ok((hash, password, reply)) = job else {
                                return;
                            };
                            let _ = reply.send(hash.verify(&password));
                        }
                    });
                if let Err(e) = started {
                    tracing::error!(error = %e, "a password thread did not start");
                }
            }
            Self { jobs }
        })
    }

    /// Check `password` against `hash` on the pool's threads.
    pub async fn verify(
        &self,
        hash: Arc<PasswordHash>,
        password: Bytes,
    ) -> Result<bool, VerifyError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send((hash, password, tx))
            .map_err(|_| VerifyError::Busy)?;
        rx.await.map_err(|_| VerifyError::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_pbkdf2_line_verifies() {
        // Written by mosquitto_passwd 2.0.11 (`-b`, password "secret").
        let line = "alice:$7$101$3zDI7hp/BWqxgpJB$65pLa3P2ZXy9RN570Xoywy5brtgJq/0x/MaqDKFKbeiZFxs8qRAOM0vvv6OCDFPo6hvrHrdoUza1FPblAsQUWg==";
        let f = PasswordFile::parse(line, Path::new("pw")).unwrap();
        let h = &f.users["alice"];
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert_eq!(h.encode(), line.split_once(':').unwrap().1);
    }

    #[test]
    fn argon2id_and_sha512_round_trip() {
        let h = PasswordHash::argon2id(b"pw").unwrap();
        let again = PasswordHash::parse(&h.encode()).unwrap();
        assert_eq!(h, again);
        assert!(again.verify(b"pw") && !again.verify(b"pW"));
        // A PHC string with Mosquitto 2.1's 64-byte salt and hash.
        let salt = [7u8; 64];
        let params = argon2::Params::new(64, 1, 1, Some(64)).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 64];
        a.hash_password_into(b"x", &salt, &mut out).unwrap();
        let encoded = format!(
            "$argon2id$v=19$m=64,t=1,p=1${}${}",
            B64_NOPAD.encode(salt),
            B64_NOPAD.encode(out)
        );
        let h = PasswordHash::parse(&encoded).unwrap();
        assert!(h.verify(b"x") && !h.verify(b"y"));
        let mut digest = Sha512::new();
        digest.update(b"pw");
        digest.update(b"saltsaltsalt");
        let six = format!(
            "$6${}${}",
            B64.encode(b"saltsaltsalt"),
            B64.encode(digest.finalize())
        );
        assert!(PasswordHash::parse(&six).unwrap().verify(b"pw"));
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let e = PasswordFile::parse("# users\nalice:plain\n", Path::new("pw")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pw:2: the password is not hashed"),
            "{e}"
        );
        let e = PasswordFile::parse("bob\n", Path::new("pw")).unwrap_err();
        assert_eq!(e.to_string(), "pw:1: expected `username:value`");
        let e = PasswordFile::parse("a:$9$x\n", Path::new("pw")).unwrap_err();
        assert!(e.to_string().contains("unknown password hash"), "{e}");
        let e = PasswordFile::parse("a:$7$0$AA==$AA==\n", Path::new("pw")).unwrap_err();
        assert!(e.to_string().contains("iteration"), "{e}");
        let e = PasswordFile::parse(
            "a:$argon2id$v=19$m=99999999,t=1,p=1$AAAAAAAAAAA$AAAA\n",
            Path::new("pw"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("1 GiB"), "{e}");
    }
}
