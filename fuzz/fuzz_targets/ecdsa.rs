#![no_main]
//! See `claude_sso_gateway::fuzzing::ecdsa`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| claude_sso_gateway::fuzzing::ecdsa(data));
