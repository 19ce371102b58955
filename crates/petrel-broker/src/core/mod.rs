//! The broker's routing state, without sockets.

pub mod retained;
pub mod router;
pub mod sessions;
pub mod subscriptions;
pub mod wills;

/// The levels of a topic name or filter (4.7.1.1): split on `/`, empty
/// levels kept (`/a` has levels `""` and `"a"`).
pub(crate) fn levels(s: &str) -> std::str::Split<'_, char> {
    s.split('/')
}
