#![no_main]
//! Fuzz target `proc_stat`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("proc_stat", data));
