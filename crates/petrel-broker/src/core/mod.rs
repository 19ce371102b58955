//! The broker's routing state, without sockets.

pub mod retained;
pub mod router;
pub mod sessions;
pub(crate) mod small;
pub mod subscriptions;
pub mod wills;

/// The levels of a topic name or filter (4.7.1.1): split on `/`, empty
/// levels kept (`/a` has levels `""` and `"a"`).
pub(crate) fn levels(s: &str) -> std::str::Split<'_, char> {
    s.split('/')
}

/// The first level of `rest` and what follows it (`None` after the last).
pub(crate) fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}
