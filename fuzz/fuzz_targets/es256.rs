#![no_main]
//! See `claude_sso_gateway::fuzzing::es256`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| claude_sso_gateway::fuzzing::es256(data));
