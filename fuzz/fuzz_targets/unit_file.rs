#![no_main]
//! Fuzz target `unit_file`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("unit_file", data));
