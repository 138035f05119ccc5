#![no_main]
//! See `claude_sso_gateway::fuzzing::scan_vs_serde`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| claude_sso_gateway::fuzzing::scan_vs_serde(data));
