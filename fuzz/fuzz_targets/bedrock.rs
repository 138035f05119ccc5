#![no_main]
//! See `claude_sso_gateway::fuzzing::bedrock`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| claude_sso_gateway::fuzzing::bedrock(data));
