#![no_main]
//! Fuzz target `service_config`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("service_config", data));
