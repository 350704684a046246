//! Fuzz target: `jumpset::fuzzing::legacy_blob` must never panic, whatever the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jumpset::fuzzing::legacy_blob(data));
