//! Target `intune_answer`: see `scep_gateway::fuzzing::intune_answer` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scep_gateway::fuzzing::intune_answer(data);
});
