//! The UDP server's datagram path (decode, sessions, cookie, reply cache) on a script of
//! datagrams.
#![no_main]

// Each target uses one part of the harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::datagram(data);
});
