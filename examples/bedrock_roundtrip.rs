//! The Bedrock module as a program, so `tests/test_stub_bedrock.py` can put the Rust request
//! translation and signer in front of the stand-in Bedrock (which checks signatures with
//! botocore) and run its event-stream answer back through the Rust stream translator.
//!
//! `bedrock_roundtrip request <region> <model id> <unix time> [anthropic-beta value]...`
//!   reads an Anthropic body on stdin; prints `{"path", "host", "headers", "body"}` as JSON.
//!   Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
//! `bedrock_roundtrip stream <chunk size>`
//!   reads an event stream on stdin, pushes it in chunks of that size; writes the SSE to stdout
//!   and `{"metrics": ..., "error": ...}` to stderr.

use std::io::{Read, Write};

use claude_sso_gateway::bedrock::{self, BedrockStreamTranslator, Credentials, SignInput};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    match args.first().map(String::as_str) {
        Some("request") if args.len() >= 4 => {
            let (region, model, now) = (&args[1], &args[2], args[3].parse::<u64>()?);
            let betas: Vec<&str> = args[4..].iter().map(String::as_str).collect();
            let allowed: Vec<String> = bedrock::DEFAULT_BETAS.iter().map(|b| (*b).to_owned()).collect();
            let req = bedrock::translate_request(&input, model, &betas, &allowed)?;
            let creds = Credentials {
                access_key_id: std::env::var("AWS_ACCESS_KEY_ID")?,
                secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY")?,
                session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
            };
            let host = bedrock::host(region);
            let sent = [("content-type", "application/json"), ("accept", req.accept)];
            let signing = SignInput { method: "POST", host: &host, path: &req.path, headers: &sent, body: &req.body };
            let mut headers: Vec<(String, String)> =
                sent.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
            headers.extend(bedrock::sign(&signing, &creds, region, now));
            let out = json!({"path": req.path, "host": host, "headers": headers,
                             "body": String::from_utf8(req.body)?, "dropped_betas": req.dropped_betas});
            println!("{out}");
        }
        Some("stream") if args.len() == 2 => {
            let size: usize = args[1].parse()?;
            let mut t = BedrockStreamTranslator::new();
            let mut stdout = std::io::stdout();
            for chunk in input.chunks(size.max(1)) {
                stdout.write_all(&t.push(chunk))?;
            }
            stdout.write_all(&t.finish())?;
            let metrics = t.metrics().map(|u| json!([u.input, u.output, u.cache_write, u.cache_read]));
            eprintln!("{}", json!({"metrics": metrics, "error": t.error().map(|e| e.to_string())}));
        }
        _ => {
            return Err("usage: bedrock_roundtrip request <region> <model> <unix time> [beta]... | stream <size>".into())
        }
    }
    Ok(())
}
