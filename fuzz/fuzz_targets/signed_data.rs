//! Target `signed_data`: see `scep_gateway::fuzzing::signed_data` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::signed_data(data);
});
