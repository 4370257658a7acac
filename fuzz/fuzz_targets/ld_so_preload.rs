#![no_main]
//! Fuzz target `ld_so_preload`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("ld_so_preload", data));
