#![no_main]
//! Fuzz target `net_tcp`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("net_tcp", data));
