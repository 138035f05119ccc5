//! Prints the filter's verdict on configuration files, one line each: `<path>\tok` or
//! `<path>\t<the error the filter logs>`. `tests/test_kong.py` compares these verdicts with
//! Kong's JSON Schema (kong/claude_sso_gateway.meta.json). The VM environment offered to the
//! parser holds `ANTHROPIC_API_KEY` and the AWS credential variables of the Bedrock sample.

use claude_sso_gateway::config::Plan;

fn main() {
    let env = |name: &str| match name {
        "ANTHROPIC_API_KEY" => Some("sk-ant-check".to_owned()),
        "AWS_ACCESS_KEY_ID" => Some("AKIDCHECK".to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some("check-secret".to_owned()),
        _ => None,
    };
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
