#![no_main]
//! Fuzz target `decompress`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("decompress", data));
