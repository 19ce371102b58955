#![no_main]
//! Arbitrary bytes decoded as a stream of V3_1 packets.
libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_codec::fuzz::decode(
    data,
    Some(petrel_codec::Protocol::V3_1)
));
