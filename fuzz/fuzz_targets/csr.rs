//! Target `csr`: see `scep_gateway::fuzzing::csr` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::csr(data);
});
