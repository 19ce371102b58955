//! Validated UTF-8 strings and topics, all views into a received frame.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// Why a string, topic name or topic filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StringError {
    /// Ill-formed UTF-8, including encoded surrogates U+D800..U+DFFF.
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    /// The string contains U+0000.
    #[error("string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    /// The string is longer than the 65,535 bytes a length prefix can express.
    #[error("string longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// A topic name or filter is empty.
    #[error("topic is empty [MQTT-4.7.3-1]")]
    EmptyTopic,
    /// A topic name contains `+` or `#`.
    #[error("topic name contains a wildcard [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// `#` is not alone in the last level of a filter.
    #[error("'#' must stand alone as the last level of a topic filter [MQTT-4.7.1-1 (5.0), MQTT-4.7.1-2 (3.1.1)]")]
    InvalidMultiLevelWildcard,
    /// `+` does not fill a whole level of a filter.
    #[error("'+' must fill a whole topic level [MQTT-4.7.1-2 (5.0), MQTT-4.7.1-3 (3.1.1)]")]
    InvalidSingleLevelWildcard,
    /// A `$share/` filter lacks a share name or a filter, or its share name holds a wildcard.
    #[error("shared subscription must be $share/{{ShareName}}/{{filter}} with a non-empty ShareName free of '+', '#' and '/' [MQTT-4.8.2-1, MQTT-4.8.2-2]")]
    InvalidSharedSubscription,
}

/// A UTF-8 string as MQTT defines it (1.5.4): well-formed, without U+0000,
/// at most 65,535 bytes. Cloning shares the underlying bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(ByteString);

impl MqttString {
    /// The empty string.
    pub const fn new() -> Self {
        Self(ByteString::from_static(""))
    }

    /// Validate bytes received from a peer (or built by the caller).
    ///
    /// A byte-order mark (EF BB BF) is kept as U+FEFF ([MQTT-1.5.4-3]).
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        let s = Self::from_utf8(bytes)?;
        if find_any(s.as_bytes(), [0, 0, 0]) {
            return Err(StringError::NullCharacter);
        }
        Ok(s)
    }

    /// Length and UTF-8 checks only; the caller checks for U+0000.
    #[inline]
    fn from_utf8(bytes: Bytes) -> Result<Self, StringError> {
        if bytes.len() > usize::from(u16::MAX) {
            return Err(StringError::TooLong);
        }
        // `str::from_utf8` refuses encoded surrogates, as [MQTT-1.5.4-1] asks.
        ByteString::try_from(bytes)
            .map(Self)
            .map_err(|_| StringError::InvalidUtf8)
    }

    /// A string from a static literal.
    ///
    /// # Panics
    /// If the literal is not a valid MQTT string (contains U+0000 or is too long);
    /// this is meant for constants written in code.
    pub fn from_static(s: &'static str) -> Self {
        match Self::from_bytes(Bytes::from_static(s.as_bytes())) {
            Ok(s) => s,
            Err(e) => panic!("invalid MQTT string literal {s:?}: {e}"),
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes, shared.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// The underlying bytes, shared.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }

    /// The same string in an allocation of its own. A decoded string is a
    /// slice of the buffer its packet was read into and keeps all of that
    /// buffer alive; what is kept long after the packet (a subscription's
    /// filter, a will) should be detached.
    pub fn detached(&self) -> Self {
        Self(ByteString::from(self.as_str()))
    }
}

/// Check bytes are a valid MQTT string (1.5.4) without keeping them.
pub(crate) fn validate(bytes: &[u8]) -> Result<(), StringError> {
    if bytes.len() > usize::from(u16::MAX) {
        return Err(StringError::TooLong);
    }
    // `str::from_utf8` refuses encoded surrogates, as [MQTT-1.5.4-1] asks.
    std::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)?;
    if find_any(bytes, [0, 0, 0]) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

/// Whether `bytes` holds any of three values: eight bytes at a time.
#[inline]
fn find_any(bytes: &[u8], needles: [u8; 3]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI != 0;
    let [a, b, c] = needles.map(|n| u64::from(n) * LO);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if has_zero(x ^ a) || has_zero(x ^ b) || has_zero(x ^ c) {
            return true;
        }
    }
    chunks.remainder().iter().any(|x| needles.contains(x))
}

impl Deref for MqttString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for MqttString {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for MqttString {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for MqttString {
    type Error = StringError;
    fn try_from(s: String) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! string_newtype_impls {
    ($ty:ident) => {
        impl $ty {
            /// The topic as a string.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The topic as a validated MQTT string.
            pub fn as_mqtt_str(&self) -> &MqttString {
                &self.0
            }

            /// The underlying bytes, shared.
            pub fn as_bytes(&self) -> &Bytes {
                self.0.as_bytes()
            }

            /// The same value in an allocation of its own, not holding on
            /// to the buffer it was decoded from ([`MqttString::detached`]).
            pub fn detached(&self) -> Self {
                Self(self.0.detached())
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = StringError;
            fn try_from(s: &str) -> Result<Self, StringError> {
                Self::new(MqttString::try_from(s)?)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = StringError;
            fn try_from(s: String) -> Result<Self, StringError> {
                Self::new(MqttString::try_from(s)?)
            }
        }

        impl From<$ty> for MqttString {
            fn from(t: $ty) -> MqttString {
                t.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A topic name: what a PUBLISH is sent to. Never contains a wildcard
/// ([MQTT-3.3.2-2], [MQTT-4.7.0-1]).
///
/// It is non-empty ([MQTT-4.7.3-1]) with one exception: a 5.0 PUBLISH that
/// carries a Topic Alias may leave the name empty ([`TopicName::alias_only`]);
/// the decoder allows that only when the alias is present.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Validate a topic name.
    pub fn new(s: MqttString) -> Result<Self, StringError> {
        if s.is_empty() {
            return Err(StringError::EmptyTopic);
        }
        Self::new_allow_empty(s)
    }

    pub(crate) fn new_allow_empty(s: MqttString) -> Result<Self, StringError> {
        if find_any(s.as_bytes(), [b'+', b'#', b'+']) {
            return Err(StringError::WildcardInTopicName);
        }
        Ok(Self(s))
    }

    /// Validate received bytes as a topic name in one pass (may be empty).
    pub(crate) fn from_wire(bytes: Bytes) -> Result<Self, StringError> {
        let s = MqttString::from_utf8(bytes)?;
        if find_any(s.as_bytes(), [0, b'+', b'#']) {
            return Err(if s.as_bytes().contains(&0) {
                StringError::NullCharacter
            } else {
                StringError::WildcardInTopicName
            });
        }
        Ok(Self(s))
    }

    /// The empty name of a 5.0 PUBLISH whose topic is given by its Topic Alias.
    pub const fn alias_only() -> Self {
        Self(MqttString::new())
    }

    /// A topic name from a static literal.
    ///
    /// # Panics
    /// If the literal is not a valid topic name; meant for constants in code.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(MqttString::from_static(s)) {
            Ok(t) => t,
            Err(e) => panic!("invalid topic name literal {s:?}: {e}"),
        }
    }

    /// Whether the name is empty (only in alias-only 5.0 PUBLISH packets).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

string_newtype_impls!(TopicName);

/// A topic filter: what a SUBSCRIBE or UNSUBSCRIBE names. Wildcards obey
/// 4.7.1 and a shared subscription obeys 4.8.2.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(MqttString);

/// The prefix of a shared subscription's filter.
pub const SHARE_PREFIX: &str = "$share/";

/// Whether the topic filter `filter` matches the topic name `topic`, by the
/// rules of 4.7: `+` one level, `#` the rest (and the level above it:
/// `sport/#` matches `sport`), and a leading wildcard never matches a topic
/// that starts with `$` ([MQTT-4.7.2-1]). Neither is validated here: a
/// shared subscription's `$share/{group}/` prefix is not stripped.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    let mut first = true;
    loop {
        match (f.next(), t.next()) {
            (Some("#"), Some(level)) => return !(first && level.starts_with('$')),
            (Some("#"), None) => return true,
            (Some("+"), Some(level)) => {
                if first && level.starts_with('$') {
                    return false;
                }
            }
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

impl TopicFilter {
    /// Whether this filter matches the topic name `topic` (4.7; for a
    /// shared subscription, by its filter part).
    pub fn matches(&self, topic: &str) -> bool {
        topic_matches(self.shared().map_or(self.as_str(), |(_, f)| f), topic)
    }

    /// Validate a topic filter.
    pub fn new(s: MqttString) -> Result<Self, StringError> {
        validate_filter(s.as_bytes())?;
        Self::check_share(s)
    }

    /// Validate received bytes as a topic filter: UTF-8, then one pass that
    /// is skipped when the filter holds no U+0000 and no wildcard.
    pub(crate) fn from_wire(bytes: Bytes) -> Result<Self, StringError> {
        let s = MqttString::from_utf8(bytes)?;
        if find_any(s.as_bytes(), [0, b'+', b'#']) {
            if s.as_bytes().contains(&0) {
                return Err(StringError::NullCharacter);
            }
            validate_filter(s.as_bytes())?;
        } else if s.is_empty() {
            return Err(StringError::EmptyTopic);
        }
        Self::check_share(s)
    }

    fn check_share(s: MqttString) -> Result<Self, StringError> {
        if s.as_bytes().first() != Some(&b'$') {
            return Ok(Self(s));
        }
        if let Some(rest) = s.as_str().strip_prefix(SHARE_PREFIX) {
            match rest.split_once('/') {
                Some((group, filter))
                    if !group.is_empty() && !group.contains(['+', '#']) && !filter.is_empty() => {}
                _ => return Err(StringError::InvalidSharedSubscription),
            }
        } else if s.as_str() == "$share" {
            return Err(StringError::InvalidSharedSubscription);
        }
        Ok(Self(s))
    }

    /// A topic filter from a static literal.
    ///
    /// # Panics
    /// If the literal is not a valid topic filter; meant for constants in code.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(MqttString::from_static(s)) {
            Ok(t) => t,
            Err(e) => panic!("invalid topic filter literal {s:?}: {e}"),
        }
    }

    /// For a shared subscription `$share/{group}/{filter}`, the group and the filter.
    pub fn shared(&self) -> Option<(&str, &str)> {
        self.as_str().strip_prefix(SHARE_PREFIX)?.split_once('/')
    }

    /// Whether the filter contains `+` or `#` (in its topic part, for a shared one).
    pub fn has_wildcards(&self) -> bool {
        let filter = self.shared().map_or(self.as_str(), |(_, f)| f);
        filter.contains(['+', '#'])
    }
}

string_newtype_impls!(TopicFilter);

/// The wildcard rules of 4.7.1 in one pass: a wildcard fills its level,
/// and `#` is the last character.
fn validate_filter(s: &[u8]) -> Result<(), StringError> {
    if s.is_empty() {
        return Err(StringError::EmptyTopic);
    }
    let starts_level = |i: usize| i == 0 || s[i - 1] == b'/';
    for (i, &c) in s.iter().enumerate() {
        match c {
            b'#' if !starts_level(i) || i + 1 != s.len() => {
                return Err(StringError::InvalidMultiLevelWildcard)
            }
            b'+' if !starts_level(i) || s.get(i + 1).is_some_and(|&n| n != b'/') => {
                return Err(StringError::InvalidSingleLevelWildcard)
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// Checks [MQTT-4.7.2-1] (a leading wildcard does not match `$` topics).
    #[test]
    fn filters_match_topics_by_4_7() {
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(!topic_matches("a/b", "a"));
        assert!(topic_matches("/+", "/x"));
        let shared = TopicFilter::try_from("$share/g/a/+").unwrap();
        assert!(shared.matches("a/b"));
        assert!(!shared.matches("b/b"));
    }

    use super::*;

    fn filter(s: &str) -> Result<TopicFilter, StringError> {
        TopicFilter::try_from(s)
    }

    #[test]
    fn valid_filters() {
        // Examples of 4.7.1.2 and 4.7.1.3.
        for f in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "sport/tennis/#",
            "$share/group/a/b",
            "$share/g/#",
            "$SYS/#",
        ] {
            assert!(filter(f).is_ok(), "{f}");
        }
    }

    #[test]
    fn invalid_filters_mqtt_4_7_1() {
        // [MQTT-4.7.1-1] (5.0) / [MQTT-4.7.1-2] (3.1.1): '#' last and alone.
        assert_eq!(
            filter("sport/tennis#"),
            Err(StringError::InvalidMultiLevelWildcard)
        );
        assert_eq!(
            filter("sport/tennis/#/ranking"),
            Err(StringError::InvalidMultiLevelWildcard)
        );
        assert_eq!(filter("a/#/b"), Err(StringError::InvalidMultiLevelWildcard));
        // [MQTT-4.7.1-2] (5.0) / [MQTT-4.7.1-3] (3.1.1): '+' fills a level.
        assert_eq!(
            filter("sport+"),
            Err(StringError::InvalidSingleLevelWildcard)
        );
        assert_eq!(filter("a+"), Err(StringError::InvalidSingleLevelWildcard));
        assert_eq!(
            filter("a/b+/c"),
            Err(StringError::InvalidSingleLevelWildcard)
        );
        // [MQTT-4.7.3-1]: not empty.
        assert_eq!(filter(""), Err(StringError::EmptyTopic));
    }

    /// The wildcard rules of 4.7.1 as the specification words them, level by level.
    fn reference(s: &str) -> Result<(), StringError> {
        if s.is_empty() {
            return Err(StringError::EmptyTopic);
        }
        let levels: Vec<&str> = s.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
                return Err(StringError::InvalidMultiLevelWildcard);
            }
            if level.contains('+') && *level != "+" {
                return Err(StringError::InvalidSingleLevelWildcard);
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn one_pass_filter_check_agrees_with_the_rules(s in "[a+#/]{0,8}") {
            let fast = validate_filter(s.as_bytes()).is_ok();
            let slow = reference(&s).is_ok();
            proptest::prop_assert_eq!(fast, slow, "{:?}", s);
            let wire = TopicFilter::from_wire(Bytes::from(s.clone())).is_ok();
            let built = TopicFilter::try_from(s.as_str()).is_ok();
            proptest::prop_assert_eq!(wire, built);
            proptest::prop_assert_eq!(wire, slow);
        }

        #[test]
        fn one_pass_topic_name_check_agrees(s in "[a+#/\\x00é]{0,8}") {
            let wire = TopicName::from_wire(Bytes::from(s.clone()));
            let built = MqttString::try_from(s.as_str()).and_then(TopicName::new_allow_empty);
            proptest::prop_assert_eq!(wire, built);
        }
    }

    /// Checks 5.0: [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[test]
    fn invalid_shared_mqtt_4_8_2_1_and_2() {
        for f in [
            "$share",
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
            "$share/g/",
        ] {
            assert!(filter(f).is_err(), "{f}");
        }
        assert_eq!(filter("$share/g/a/+").unwrap().shared(), Some(("g", "a/+")));
    }

    #[test]
    fn topic_names_mqtt_3_3_2_2() {
        assert!(TopicName::try_from("a/b").is_ok());
        assert!(TopicName::try_from("/").is_ok());
        assert_eq!(
            TopicName::try_from("a/+"),
            Err(StringError::WildcardInTopicName)
        );
        assert_eq!(
            TopicName::try_from("#"),
            Err(StringError::WildcardInTopicName)
        );
        assert_eq!(TopicName::try_from(""), Err(StringError::EmptyTopic));
    }

    #[test]
    fn strings_mqtt_1_5_4() {
        // [MQTT-1.5.4-1]: an encoded surrogate (U+D800 as ED A0 80) is ill-formed.
        assert_eq!(
            MqttString::from_bytes(Bytes::from_static(b"\xED\xA0\x80")),
            Err(StringError::InvalidUtf8)
        );
        assert_eq!(
            MqttString::from_bytes(Bytes::from_static(b"\xFF")),
            Err(StringError::InvalidUtf8)
        );
        // [MQTT-1.5.4-2]: U+0000 is refused.
        assert_eq!(
            MqttString::from_bytes(Bytes::from_static(b"a\0b")),
            Err(StringError::NullCharacter)
        );
        // [MQTT-1.5.4-3]: a BOM is kept, not stripped.
        let s = MqttString::from_bytes(Bytes::from_static(b"\xEF\xBB\xBFx")).unwrap();
        assert_eq!(s.as_str(), "\u{FEFF}x");
        // The example of 1.5.4: U+2A6D4 encoded in four bytes.
        let s = MqttString::from_bytes(Bytes::from_static(b"A\xF0\xAA\x9B\x94")).unwrap();
        assert_eq!(s.as_str(), "A\u{2A6D4}");
        assert_eq!(
            MqttString::from_bytes(Bytes::from(vec![b'a'; 65536])),
            Err(StringError::TooLong)
        );
    }
}
