//! Target `config`: see `scep_gateway::fuzzing::config` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::config(data);
});
