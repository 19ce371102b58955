#![no_main]
//! decode → encode → decode → encode, packets and bytes identical.
libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_codec::fuzz::round_trip(data));
