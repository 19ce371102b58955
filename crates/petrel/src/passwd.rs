//! `petrel passwd`: manage a password file with `mosquitto_passwd`'s flags.
//!
//! ```sh
//! petrel passwd -c passwd alice          # create the file, ask for alice's password
//! petrel passwd passwd bob               # add or update bob
//! petrel passwd -b passwd carol secret   # the password on the command line
//! petrel passwd -D passwd bob            # delete bob
//! petrel passwd -U passwd                # hash a file of plain-text passwords
//! petrel passwd --scram -c scram alice   # SCRAM-SHA-256 and -512 credentials
//! ```
//!
//! Hashes are argon2id by default; `-H sha512-pbkdf2` writes Mosquitto
//! 2.0's `$7$` (PBKDF2-SHA512) for a file Mosquitto 2.0 must read too. The
//! file is written whole to a temporary name and renamed, readable by its
//! owner only; other users' lines and comments are kept as they were.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use petrel_broker::core::auth::password::PasswordHash;
use petrel_broker::core::auth::scram::{ScramCredential, ScramHash, DEFAULT_ITERATIONS};

/// `petrel passwd` flags (as `mosquitto_passwd`'s).
#[derive(clap::Args, Debug)]
pub(crate) struct PasswdArgs {
    /// Create the file, replacing one that exists.
    #[arg(short = 'c')]
    create: bool,
    /// Batch mode: the password is the last argument.
    #[arg(short = 'b')]
    batch: bool,
    /// Delete the user.
    #[arg(short = 'D', conflicts_with_all = ["create", "batch", "upgrade"])]
    delete: bool,
    /// Hash every plain-text password in the file.
    #[arg(short = 'U', conflicts_with_all = ["create", "batch"])]
    upgrade: bool,
    /// Hash: argon2id (default) or sha512-pbkdf2 (Mosquitto 2.0's `$7$`).
    #[arg(short = 'H', value_name = "HASH", default_value = "argon2id")]
    hash: String,
    /// Iterations of sha512-pbkdf2 (default 101, as Mosquitto 2.0) or of
    /// SCRAM (default 4096).
    #[arg(short = 'I', value_name = "ITERATIONS")]
    iterations: Option<u32>,
    /// Write SCRAM-SHA-256 and SCRAM-SHA-512 credentials (the `[scram]`
    /// file) instead of password hashes.
    #[arg(long = "scram")]
    scram: bool,
    /// The password file.
    file: PathBuf,
    /// The user (not with -U).
    username: Option<String>,
    /// The password (with -b).
    password: Option<String>,
}

/// Run `petrel passwd`.
pub(crate) fn run(args: PasswdArgs) -> ExitCode {
    match passwd(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The encoded lines for one user's password.
fn encode(args: &PasswdArgs, password: &str) -> Result<Vec<String>, String> {
    if args.scram {
        let iterations = args.iterations.unwrap_or(DEFAULT_ITERATIONS);
        return ScramHash::ALL
            .iter()
            .map(|h| ScramCredential::new(*h, password.as_bytes(), iterations).map(|c| c.encode()))
            .collect();
    }
    let hash = match args.hash.as_str() {
        "argon2id" => PasswordHash::argon2id(password.as_bytes())?,
        "sha512-pbkdf2" => {
            PasswordHash::pbkdf2_sha512(password.as_bytes(), args.iterations.unwrap_or(101))?
        }
        other => return Err(format!("-H {other}: use argon2id or sha512-pbkdf2")),
    };
    Ok(vec![hash.encode()])
}

fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.contains(['\r', '\n']) {
        return Err(format!("invalid user name `{user}` (it can't hold `:`)"));
    }
    Ok(())
}

/// Ask for the password twice (hidden on a terminal), or read it once from
/// standard input when that is not a terminal.
fn ask_password() -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Reenter password: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("passwords do not match".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn passwd(args: &PasswdArgs) -> Result<(), String> {
    let path = &args.file;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) if !args.create => t,
        Ok(_) => String::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.create => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let lines: Vec<String> = if args.upgrade {
        if args.username.is_some() {
            return Err("-U takes only the file".into());
        }
        upgrade(args, &existing)?
    } else {
        let user = args.username.as_deref().ok_or("a user name is needed")?;
        check_username(user)?;
        let kept = existing
            .lines()
            .filter(|l| l.split_once(':').map(|(u, _)| u.trim()) != Some(user))
            .map(str::to_string);
        if args.delete {
            let kept: Vec<String> = kept.collect();
            if kept.len() == existing.lines().count() {
                return Err(format!("user {user} not found"));
            }
            kept
        } else {
            let password = match (&args.password, args.batch) {
                (Some(p), true) => p.clone(),
                (None, true) => return Err("-b needs the password".into()),
                (Some(_), false) => return Err("a password argument needs -b".into()),
                (None, false) => ask_password()?,
            };
            let mut out: Vec<String> = kept.collect();
            out.extend(
                encode(args, &password)?
                    .into_iter()
                    .map(|h| format!("{user}:{h}")),
            );
            out
        }
    };
    write(path, &lines)
}

/// Hash every plain-text password; lines already hashed stay.
fn upgrade(args: &PasswdArgs, text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push(line.to_string());
            continue;
        }
        let Some((user, rest)) = trimmed.split_once(':') else {
            return Err(format!("line {}: expected `username:password`", n + 1));
        };
        if rest.starts_with('$') {
            out.push(line.to_string());
        } else {
            out.extend(
                encode(args, rest)?
                    .into_iter()
                    .map(|h| format!("{user}:{h}")),
            );
        }
    }
    Ok(out)
}

/// Write the file whole: a temporary file, readable by its owner only,
/// renamed over the old one.
fn write(path: &Path, lines: &[String]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    for l in lines {
        writeln!(f, "{l}").map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
