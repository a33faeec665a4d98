//! A whole server connection driven by arbitrary bytes, split into reads as the input says.
#![no_main]

// Each target uses one half of the harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::connection(data));
