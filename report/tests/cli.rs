//! Runs the built `claude-sso-report` on a generated log: the table's totals equal the sum of
//! the generated records, and the chart is well-formed XML that names what it shows.

// Helpers outside `#[test]` fns are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{json, Value};

const PEOPLE: [&str; 12] =
    ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "o&<scar>"];
const MODELS: [(&str, &str, Option<f64>); 3] = [
    ("claude-sonnet-4-6", "standard", Some(3e-6)),
    ("claude-haiku-4-5", "basic", Some(1e-6)),
    ("local-llama", "basic", None),
];

/// A deterministic pseudo-random sequence (a linear congruential generator).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Expected sums of the records written.
#[derive(Default)]
struct Expected {
    requests: u64,
    refused: u64,
    tokens: u64,
    cost_nanos: u64,
}

/// Writes `n` records over three days in three line shapes, with garbage between them.
fn generate(path: &Path, n: u64) -> Expected {
    let mut rng = Lcg(42);
    let mut out = String::new();
    let mut want = Expected::default();
    let start = 1_795_996_800u64; // 2026-12-01T00:00:00Z
    for i in 0..n {
        let secs = start + rng.next(3 * 86_400);
        let (d, rest) = (secs / 86_400, secs % 86_400);
        let time = format!(
            "2026-12-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            d - 20_787 + 1,
            rest / 3600,
            rest % 3600 / 60,
            rest % 60,
            i % 1000
        );
        let person = PEOPLE[rng.next(PEOPLE.len() as u64) as usize];
        let (model, tier, price) = MODELS[rng.next(3) as usize];
        let refused = rng.next(10) == 0;
        let (input, output, cache_read) =
            if refused { (0, 0, 0) } else { (rng.next(5000), rng.next(2000), rng.next(20_000)) };
        let cost =
            price.filter(|_| !refused).map(|p| ((input + output * 5 + cache_read / 10) as f64 * p * 1e6).round() / 1e6);
        let record = json!({
            "time": time, "sub": person, "email": format!("{person}@example.com"), "tier": tier, "model": model,
            "provider_model": model, "provider": "anthropic", "status": if refused { 403 } else { 200 },
            "input_tokens": input, "output_tokens": output, "cache_write_tokens": 0, "cache_read_tokens": cache_read,
            "cost_usd": cost, "latency_ms": 1000 + rng.next(1000), "ttft_ms": 200 + rng.next(300),
            "session": null, "refusal": if refused { Some("model_not_allowed") } else { None },
        });
        want.requests += 1;
        want.refused += u64::from(refused);
        want.tokens += input + output + cache_read;
        want.cost_nanos += cost.map_or(0, |c| (c * 1e9).round() as u64);
        let line = match i % 3 {
            0 => record.to_string(),
            1 => json!({"start_time": time, "response_code": 200, "usage": record}).to_string(),
            _ => json!({"start_time": time, "response_code": 200, "usage": record.to_string()}).to_string(),
        };
        out += &line;
        out.push('\n');
        if i % 50 == 0 {
            out += "[info] not a record\n{\"response_code\":404,\"usage\":null}\n{\"broken\":\n";
        }
    }
    std::fs::write(path, out).unwrap();
    want
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("claude-sso-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_claude-sso-report"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        let mut input = input;
        input.write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn total_line(csv: &str) -> Vec<String> {
    let last = csv.lines().last().unwrap();
    assert!(last.starts_with("TOTAL,"), "{csv}");
    last.split(',').map(str::to_owned).collect()
}

#[test]
fn table_totals_equal_the_generated_records() {
    let log = tmp("usage.log");
    let want = generate(&log, 600);
    let log = log.to_str().unwrap();
    for by in ["person", "tier", "model", "person,model", "day,tier"] {
        let out = run(&[log, "--by", by, "--format", "csv"], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let csv = String::from_utf8(out.stdout).unwrap();
        let total = total_line(&csv);
        let keys = by.split(',').count();
        assert_eq!(total[keys].parse::<u64>().unwrap(), want.requests, "requests by {by}");
        assert_eq!(total[keys + 1].parse::<u64>().unwrap(), want.refused, "refused by {by}");
        assert_eq!(total[keys + 6].parse::<u64>().unwrap(), want.tokens, "tokens by {by}");
        assert_eq!(total[keys + 7], format!("{:.6}", want.cost_nanos as f64 / 1e9), "cost by {by}");
        // The rows add up to the totals row too.
        let rows: Vec<Vec<&str>> =
            csv.lines().skip(1).filter(|l| !l.starts_with("TOTAL,")).map(|l| l.split(',').collect()).collect();
        let tokens: u64 = rows.iter().map(|r| r[keys + 6].parse::<u64>().unwrap()).sum();
        assert_eq!(tokens, want.tokens, "rows by {by}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("600 records, 36 skipped (24 not a JSON object, 12 no usage record)"), "{stderr}");
    }
    let out = run(&[log, "--format", "json", "--by", "tier"], None);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["total"]["tokens"], want.tokens);
    assert_eq!(doc["total"]["requests"], want.requests);
    let text = String::from_utf8(run(&[log], None).stdout).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("TOTAL ") && last.contains(&want.tokens.to_string()), "{text}");
}

#[test]
fn reads_stdin_and_several_files_and_filters_the_period() {
    let (a, b) = (tmp("a.log"), tmp("b.log"));
    generate(&a, 30);
    let want = generate(&b, 30);
    let both = run(&[a.to_str().unwrap(), b.to_str().unwrap(), "--format", "csv", "--by", ""], None);
    assert_eq!(total_line(&String::from_utf8(both.stdout).unwrap())[1], (2 * want.requests).to_string());
    let bytes = std::fs::read(&b).unwrap();
    let piped = run(&["--format", "csv", "--since", "2026-12-02", "--until", "2026-12-02"], Some(&bytes));
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("records outside the period"), "{stderr}");
    let kept: u64 = total_line(&String::from_utf8(piped.stdout).unwrap())[1].parse().unwrap();
    assert!(kept > 0 && kept < want.requests, "one day of three: {kept}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = run(&["--since", "yesterday"], Some(b""));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a date"));
    let out = run(&["--by", "colour"], Some(b""));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dimension `colour`"));
    let out = run(&["/nonexistent/usage.log"], None);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn chart_is_well_formed_svg_with_title_axes_and_legend() {
    let log = tmp("chart.log");
    generate(&log, 400);
    let svg_path = tmp("chart.svg");
    let out = run(&[log.to_str().unwrap(), "--chart", svg_path.to_str().unwrap(), "--top", "5"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let mut reader = Reader::from_str(&svg);
    let mut texts = Vec::new();
    let (mut root, mut depth, mut rects) = (None, 0i32, 0);
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                depth += 1;
                root.get_or_insert_with(|| String::from_utf8_lossy(e.name().as_ref()).into_owned());
                rects += usize::from(e.name().as_ref() == b"rect");
            }
            Event::Empty(e) => rects += usize::from(e.name().as_ref() == b"rect"),
            Event::End(_) => depth -= 1,
            Event::Text(t) => texts.push(t.unescape().unwrap().into_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    assert_eq!(depth, 0, "balanced tags");
    assert!(rects > 20, "bars drawn: {rects}");
    for want in [
        "Claude SSO gateway: usage and cost",
        "Tokens per person per day",
        "Cost by model (USD)",
        "others",
        "tokens",
        "time (UTC)",
        "unpriced",
    ] {
        assert!(texts.iter().any(|t| t == want), "missing {want:?} in {texts:?}");
    }
    assert!(texts.iter().any(|t| t.starts_with("from 2026-12-0")), "period under the title");
    assert!(texts.iter().any(|t| t.starts_with("claude-sonnet-4-6")));
}
