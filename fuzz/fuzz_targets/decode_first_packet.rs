#![no_main]
//! Arbitrary bytes as a server reads them: version unknown until a CONNECT.
libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_codec::fuzz::decode(data, None));
