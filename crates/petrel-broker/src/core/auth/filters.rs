//! Relations between topic filters, by the rules of 4.7: whether a filter
//! matches a topic name, whether one filter matches everything another
//! does, and whether two can match a common topic. A leading `+` or `#`
//! never matches a topic that starts with `$` ([MQTT-4.7.2-1]).

use crate::core::levels;

fn dollar(level: &str) -> bool {
    level.starts_with('$')
}

/// Whether `filter` matches the topic name `topic`.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    petrel_codec::topic_matches(filter, topic)
}

/// Whether every topic `inner` matches is matched by `outer` (`inner` is a
/// subset of `outer`).
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    let mut o = levels(outer);
    let mut i = levels(inner);
    let mut first = true;
    loop {
        match (o.next(), i.next()) {
            (Some("#"), Some(level)) => return !(first && dollar(level)),
            (Some("#"), None) => return true,
            // Only `#` matches as much as `#`.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(level)) => {
                if first && dollar(level) {
                    return false;
                }
            }
            // A literal level covers only itself.
            (Some(a), Some(b)) => {
                if a != b || b == "+" {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether some topic name matches both filters.
pub(crate) fn intersect(a: &str, b: &str) -> bool {
    let mut x = levels(a);
    let mut y = levels(b);
    let mut first = true;
    loop {
        match (x.next(), y.next()) {
            (Some("#"), Some(level)) | (Some(level), Some("#")) => {
                return !(first && dollar(level));
            }
            (Some("#"), None) | (None, Some("#")) => return true,
            (Some("+"), Some(level)) | (Some(level), Some("+")) => {
                if first && dollar(level) {
                    return false;
                }
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// `%c` and `%u` in a rule's filter replaced by the client id and user
/// name; `None` if the rule can't apply to this client: `%u` without a user
/// name, or a name holding `/`, `+` or `#` (it could widen the rule).
pub(crate) fn substitute(
    filter: &str,
    client_id: &str,
    username: Option<&str>,
) -> Option<Box<str>> {
    let safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']);
    let mut out = filter.to_string();
    if out.contains("%c") {
        if !safe(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if out.contains("%u") {
        let user = username.filter(|u| safe(u))?;
        out = out.replace("%u", user);
    }
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_is_subset() {
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "+/x"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker/#"));
        assert!(!covers("a/+/c", "a/#"));
        assert!(covers("a/#", "a"));
        assert!(!covers("a/+", "a"));
    }

    #[test]
    fn intersection_is_a_common_topic() {
        assert!(intersect("a/#", "a/b"));
        assert!(intersect("a/+", "+/b"));
        assert!(!intersect("a/+", "b/+"));
        assert!(intersect("+/b", "#"));
        assert!(!intersect("#", "$SYS/x"));
        assert!(intersect("+", "#"));
        assert!(!intersect("a/b", "a/b/c"));
        assert!(intersect("a/#", "a"));
    }
}
