//! Target `ber`: see `scep_gateway::fuzzing::ber` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::ber(data);
});
