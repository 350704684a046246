//! Fuzz target: `jumpset::fuzzing::nft_messages` must never panic, whatever the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jumpset::fuzzing::nft_messages(data));
