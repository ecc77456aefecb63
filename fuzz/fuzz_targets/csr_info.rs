//! Target `csr_info`: see `scep_gateway::fuzzing::csr_info` for what it exercises.
#![no_main]

use scep_gateway_fuzz::fixtures;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::csr_info(fixtures(), data);
});
