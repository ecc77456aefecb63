//! Target `scep_request`: see `scep_gateway::fuzzing::scep_request` for what it exercises.
#![no_main]

use scep_gateway_fuzz::fixtures;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::scep_request(fixtures(), data);
});
