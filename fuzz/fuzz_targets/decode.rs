//! The courier and plain decoders on arbitrary bytes.
#![no_main]

// Each target uses one half of the harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::decode(data));
