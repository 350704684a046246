//! Fuzz target: `jumpset::fuzzing::config` must never panic, whatever the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jumpset::fuzzing::config(data));
