//! Prints the filter's verdict on configuration files, one line each: `<path>\tok` or
//! `<path>\t<the error the filter logs>`. `tests/test_kong.py` compares these verdicts with
//! Kong's JSON Schema (kong/claude_sso_gateway.meta.json). The VM environment offered to the
//! parser holds `ANTHROPIC_API_KEY` only.

use claude_sso_gateway::config::Plan;

fn main() {
    let env = |name: &str| (name == "ANTHROPIC_API_KEY").then(|| "sk-ant-check".to_owned());
    for path in std::env::args().skip(1) {
        let verdict = match std::fs::read(&path) {
            Ok(bytes) => match Plan::from_json(&bytes, &env) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e) => format!("unreadable: {e}"),
        };
        println!("{path}\t{}", verdict.replace(['\n', '\t'], " "));
    }
}
