//! Example programs live in the example targets; this library is empty.
