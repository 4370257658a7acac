#![no_main]
//! Fuzz target `rules_toml`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("rules_toml", data));
