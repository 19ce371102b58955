//! Mosquitto's ACL file (`acl_file`), read unchanged:
//!
//! ```text
//! # Rules before the first `user` line apply to anonymous clients.
//! topic read $SYS/#
//!
//! user alice
//! topic readwrite home/#
//! topic deny home/secret
//!
//! # Patterns apply to every client: %c is its client id, %u its user name.
//! pattern write devices/%c/status
//! pattern read users/%u/#
//! ```
//!
//! A rule is `topic` or `pattern`, an optional access (`read`, `write`,
//! `readwrite`, the default, or `deny`) and a topic filter. For a client,
//! its user's rules are read first, then the patterns; within each, a
//! matching `deny` wins over everything else, then any matching rule that
//! grants the access asked for allows it. What no rule allows is denied.
//! A topic starting with `$` is matched only by rules that start with `$`
//! too ([MQTT-4.7.2-1]), so `topic read #` does not open `$SYS`.
//!
//! * **Publish** needs `write` on the topic.
//! * **Receive** (each delivery, retained messages included) needs `read`
//!   on the topic.
//! * **Subscribe** to a filter needs a `read` rule whose filter covers it
//!   (every topic the subscription can match, as Mosquitto 2.1 checks; 2.0
//!   let every SUBSCRIBE through and filtered only deliveries), and no
//!   `deny` rule that covers it. A `deny` rule that covers part of it
//!   filters those deliveries.
//! * In patterns, `%c` and `%u` are replaced by the client id and user
//!   name. A pattern does not apply to a client without a user name (for
//!   `%u`), or whose client id or user name holds `/`, `+` or `#`: such a
//!   name could widen the rule.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::filters::{covers, intersect, matches, substitute};
use super::{read_file, Action, AuthFileError, Authorizer, ClientInfo, Decision, Permissions};

const READ: u8 = 1;
const WRITE: u8 = 2;
/// `deny`: no access, and it wins.
const DENY: u8 = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    access: u8,
    filter: Box<str>,
}

/// A parsed ACL file: an [`Authorizer`].
#[derive(Debug, Default)]
pub struct AclFile {
    path: Option<PathBuf>,
    anonymous: Arc<[Rule]>,
    users: HashMap<String, Arc<[Rule]>>,
    patterns: Arc<[Rule]>,
    count: usize,
}

/// Check a rule's topic is a usable filter: `#` only as the last level,
/// `+` and `#` only as whole levels.
fn valid_filter(f: &str) -> Result<(), String> {
    if f.is_empty() {
        return Err("an empty topic".into());
    }
    if f.contains('\0') {
        return Err("a topic with a NUL character".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{f}`: `#` must be the whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{f}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

impl AclFile {
    /// Read and parse an ACL file.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = read_file(path)?;
        let mut acl = Self::parse(&text, path)?;
        acl.path = Some(path.to_path_buf());
        Ok(acl)
    }

    /// Parse ACL rules; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthFileError> {
        let mut anonymous = Vec::new();
        let mut users: HashMap<String, Vec<Rule>> = HashMap::new();
        let mut patterns = Vec::new();
        let mut user: Option<String> = None;
        let mut count = 0;
        for (n, raw) in text.lines().enumerate() {
            let err = |message: String| AuthFileError::Line {
                path: path.to_path_buf(),
                line: n + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, r)| (k, r.trim()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some(("read", f)) => (READ, f.trim()),
                        Some(("write", f)) => (WRITE, f.trim()),
                        Some(("readwrite", f)) => (READ | WRITE, f.trim()),
                        Some(("deny", f)) => (DENY, f.trim()),
                        _ => (READ | WRITE, rest),
                    };
                    if matches!(filter, "read" | "write" | "readwrite" | "deny") {
                        return Err(err(format!("`{keyword} {filter}` needs a topic")));
                    }
                    valid_filter(filter).map_err(err)?;
                    let rule = Rule {
                        access,
                        filter: filter.into(),
                    };
                    count += 1;
                    if keyword == "pattern" {
                        patterns.push(rule);
                    } else {
                        match &user {
                            Some(u) => users.entry(u.clone()).or_default().push(rule),
                            None => anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword `{other}` (expected `topic`, `pattern` or `user`)"
                    )))
                }
            }
        }
        Ok(Self {
            path: None,
            anonymous: anonymous.into(),
            users: users.into_iter().map(|(u, r)| (u, r.into())).collect(),
            patterns: patterns.into(),
            count,
        })
    }

    /// How many rules the file holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds none (then it denies everything).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The file it was read from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Authorizer for AclFile {
    fn name(&self) -> &str {
        "acl_file"
    }

    fn permissions(&self, client: &ClientInfo<'_>) -> Arc<dyn Permissions> {
        let rules = match client.username {
            None => self.anonymous.clone(),
            Some(u) => self.users.get(u).cloned().unwrap_or_else(|| Arc::new([])),
        };
        let patterns = self
            .patterns
            .iter()
            .filter_map(|r| {
                Some(Rule {
                    access: r.access,
                    filter: substitute(&r.filter, client.client_id, client.username)?,
                })
            })
            .collect();
        Arc::new(AclPermissions { rules, patterns })
    }
}

/// The rules of an ACL file that apply to one client.
#[derive(Debug)]
struct AclPermissions {
    rules: Arc<[Rule]>,
    patterns: Box<[Rule]>,
}

impl AclPermissions {
    fn lists(&self) -> [&[Rule]; 2] {
        [&self.rules, &self.patterns]
    }
}

impl Permissions for AclPermissions {
    fn check(&self, action: Action, topic: &str) -> Decision {
        let want = match action {
            Action::Publish => WRITE,
            Action::Receive | Action::Subscribe => READ,
        };
        let relates: fn(&str, &str) -> bool = match action {
            Action::Subscribe => covers,
            Action::Publish | Action::Receive => matches,
        };
        for list in self.lists() {
            if list
                .iter()
                .any(|r| r.access == DENY && relates(&r.filter, topic))
            {
                return Decision::Deny;
            }
            if list
                .iter()
                .any(|r| r.access & want != 0 && relates(&r.filter, topic))
            {
                return Decision::Allow;
            }
        }
        Decision::Pass
    }

    fn receives_all(&self, filter: &str) -> bool {
        let lists = self.lists();
        let denied = lists.iter().any(|l| {
            l.iter()
                .any(|r| r.access == DENY && intersect(&r.filter, filter))
        });
        !denied
            && lists.iter().any(|l| {
                l.iter()
                    .any(|r| r.access & READ != 0 && covers(&r.filter, filter))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> AclFile {
        AclFile::parse(text, Path::new("test.acl")).unwrap()
    }

    fn perms(acl: &AclFile, client_id: &str, username: Option<&str>) -> Arc<dyn Permissions> {
        acl.permissions(&ClientInfo {
            client_id,
            username,
        })
    }

    #[test]
    fn users_anonymous_and_patterns() {
        let a = acl("# comment\ntopic read public/#\n\nuser alice\ntopic readwrite home/#\ntopic deny home/secret\nuser bob\ntopic write bob/out\npattern write devices/%c/status\npattern read users/%u/#\n");
        assert_eq!(a.len(), 6);
        let anon = perms(&a, "c1", None);
        assert_eq!(anon.check(Action::Receive, "public/x"), Decision::Allow);
        assert_eq!(anon.check(Action::Publish, "public/x"), Decision::Pass);
        assert_eq!(
            anon.check(Action::Publish, "devices/c1/status"),
            Decision::Allow
        );
        assert_eq!(
            anon.check(Action::Receive, "users/x/y"),
            Decision::Pass,
            "no %u without a user name"
        );
        let alice = perms(&a, "c2", Some("alice"));
        assert_eq!(
            alice.check(Action::Publish, "home/kitchen"),
            Decision::Allow
        );
        assert_eq!(alice.check(Action::Receive, "home/secret"), Decision::Deny);
        assert_eq!(
            alice.check(Action::Receive, "public/x"),
            Decision::Pass,
            "anonymous rules are not alice's"
        );
        assert_eq!(
            alice.check(Action::Receive, "users/alice/inbox"),
            Decision::Allow
        );
        assert_eq!(
            alice.check(Action::Receive, "users/bob/inbox"),
            Decision::Pass
        );
        assert_eq!(
            alice.check(Action::Publish, "devices/c2/status"),
            Decision::Allow
        );
        assert_eq!(
            alice.check(Action::Publish, "devices/c1/status"),
            Decision::Pass
        );
        let bob = perms(&a, "b", Some("bob"));
        assert_eq!(
            bob.check(Action::Receive, "bob/out"),
            Decision::Pass,
            "write only"
        );
        assert_eq!(bob.check(Action::Publish, "bob/out"), Decision::Allow);
        let carol = perms(&a, "c", Some("carol"));
        assert_eq!(carol.check(Action::Publish, "home/x"), Decision::Pass);
    }

    #[test]
    fn subscriptions_must_be_covered_and_deny_filters_deliveries() {
        let a = acl("user u\ntopic read a/#\ntopic deny a/secret\ntopic read b/+/c\ntopic read $SYS/#\ntopic read #\n");
        let p = perms(&a, "c", Some("u"));
        assert_eq!(p.check(Action::Subscribe, "a/#"), Decision::Allow);
        assert_eq!(p.check(Action::Subscribe, "a/secret"), Decision::Deny);
        assert_eq!(p.check(Action::Subscribe, "b/x/c"), Decision::Allow);
        assert!(p.receives_all("b/x/c"));
        assert!(!p.receives_all("a/#"), "a/secret is denied inside it");
        assert!(p.receives_all("$SYS/broker/#"));
        let q = perms(&acl("user u\ntopic read b/+/c\n"), "c", Some("u"));
        assert_eq!(q.check(Action::Subscribe, "b/#"), Decision::Pass);
        // `#` does not reach $SYS.
        let r = perms(&acl("user u\ntopic read #\n"), "c", Some("u"));
        assert_eq!(
            r.check(Action::Receive, "$SYS/broker/uptime"),
            Decision::Pass
        );
        assert_eq!(r.check(Action::Subscribe, "$SYS/#"), Decision::Pass);
        assert_eq!(r.check(Action::Receive, "x/y"), Decision::Allow);
    }

    #[test]
    fn patterns_do_not_apply_to_names_that_could_widen_them() {
        let a = acl("pattern readwrite devices/%c/#\n");
        assert_eq!(
            perms(&a, "x/+", None).check(Action::Publish, "devices/x/+/y"),
            Decision::Pass
        );
        assert_eq!(
            perms(&a, "#", None).check(Action::Publish, "devices/a"),
            Decision::Pass
        );
        assert_eq!(
            perms(&a, "ok", None).check(Action::Publish, "devices/ok/y"),
            Decision::Allow
        );
    }

    #[test]
    fn a_malformed_line_names_the_file_and_line() {
        let e = AclFile::parse("user a\ntopic read a/#/b\n", Path::new("x.acl")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.acl:2: `a/#/b`: `#` must be the whole last level"
        );
        let e = AclFile::parse("\n\nfoo bar\n", Path::new("x.acl")).unwrap_err();
        assert!(
            e.to_string().starts_with("x.acl:3: unknown keyword `foo`"),
            "{e}"
        );
        let e = AclFile::parse("topic read\n", Path::new("x.acl")).unwrap_err();
        assert!(e.to_string().starts_with("x.acl:1:"), "{e}");
        let e = AclFile::parse("user\n", Path::new("x.acl")).unwrap_err();
        assert!(e.to_string().contains("needs a user name"), "{e}");
        assert!(AclFile::parse("topic a+/b\n", Path::new("x")).is_err());
    }
}
