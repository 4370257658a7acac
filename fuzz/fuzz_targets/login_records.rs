#![no_main]
//! Fuzz target `login_records`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("login_records", data));
