#![no_main]
//! Fuzz target `elf_modinfo`: see `quarry::fuzz`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quarry::fuzz::run("elf_modinfo", data));
