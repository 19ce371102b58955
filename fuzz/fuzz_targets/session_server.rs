#![no_main]
//! Arbitrary packet sequences into a server-role session machine; its
//! invariants (window, identifiers, bounded output) are checked every step.
libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_session::fuzz::server(data));
