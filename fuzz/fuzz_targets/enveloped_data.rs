//! Target `enveloped_data`: see `scep_gateway::fuzzing::enveloped_data` for what it exercises.
#![no_main]

use scep_gateway_fuzz::fixtures;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::enveloped_data(fixtures(), data);
});
