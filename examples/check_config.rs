//! Prints the filter's verdict on configuration files, one line each: `<path>\tok` or
//! `<path>\t<the error the filter logs>`.
//!
//! For operators (`make check-config CONFIG=<file>`): with `--env`, the VM environment offered
//! to the parser is this process's own (give it the variables the host gives the VM, e.g.
//! Envoy's `host_env_keys`), and the exit status is 1 when any file is refused. Run it before a
//! reload: plain nginx with a configuration the filter refuses keeps no worker at all
//! (`nginx -t` does not run the filter), Kong answers 500 on the route, Envoy keeps the old one.
//!
//! Without `--env`, for `tests/test_kong.py`, which compares these verdicts with Kong's JSON
//! Schema (kong/claude_sso_gateway.meta.json): the environment holds `ANTHROPIC_API_KEY` and
//! the AWS credential variables of the Bedrock sample.

use claude_sso_gateway::config::Plan;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let real = args.first().is_some_and(|a| a == "--env");
    if real {
        args.remove(0);
    }
    let fixed = |name: &str| match name {
        "ANTHROPIC_API_KEY" => Some("sk-ant-check".to_owned()),
        "AWS_ACCESS_KEY_ID" => Some("AKIDCHECK".to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some("check-secret".to_owned()),
        _ => None,
    };
    let process = |name: &str| std::env::var(name).ok();
    let env: &dyn Fn(&str) -> Option<String> = if real { &process } else { &fixed };
    let mut refused = false;
    for path in args {
        let verdict = match std::fs::read(&path) {
            Ok(bytes) => match Plan::from_json(&bytes, env) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e) => format!("unreadable: {e}"),
        };
        refused |= verdict != "ok";
        println!("{path}\t{}", verdict.replace(['\n', '\t'], " "));
    }
    if real && refused {
        std::process::exit(1);
    }
}
