//! Micro benchmark: the one-pass scanner against today's serde parse, on the captured 130 KB
//! Claude Code body. `cargo run --release --example scan_bench [path] [rounds]`.
//!
//! The release profile is the filter's (`opt-level = 3`, LTO), run natively, where the scanner uses
//! its portable 8-bytes-at-a-time code; `make bench` times it in V8 with simd128 (bench/verify-wasm).

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use claude_sso_gateway::routing::RequestBody;
use claude_sso_gateway::scan::scan;

/// Median of `rounds` timings of `iters` calls of `f`, in microseconds per call.
fn time(rounds: usize, iters: usize, mut f: impl FnMut() -> bool) -> (f64, f64, f64) {
    let mut per_call: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            start.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    let median = per_call.get(per_call.len() / 2).copied().unwrap_or(f64::NAN);
    (median, per_call.first().copied().unwrap_or(f64::NAN), per_call.last().copied().unwrap_or(f64::NAN))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let path = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/claude-code/request_main_stream.json"),
        PathBuf::from,
    );
    let rounds = args.next().and_then(|r| r.parse().ok()).unwrap_or(15);
    let body = match std::fs::read(&path) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    // Same verdict first: a benchmark of two functions that disagree measures nothing.
    let (Ok(parsed), Ok(scanned)) = (RequestBody::parse(&body), scan(&body)) else {
        eprintln!("the body does not parse");
        return ExitCode::FAILURE;
    };
    if scanned.model.as_ref().map(|m| m.value.as_str()) != Some(parsed.model.as_str()) {
        eprintln!("the scanner and serde disagree on the model");
        return ExitCode::FAILURE;
    }
    let iters = (200_000_000 / body.len().max(1)).max(1);
    let serde = time(rounds, iters, || RequestBody::parse(black_box(&body)).is_ok());
    let scanner = time(rounds, iters, || scan(black_box(&body)).is_ok());
    let mib = body.len() as f64 / (1024.0 * 1024.0);
    println!("body: {} ({} bytes), {rounds} rounds of {iters} calls", path.display(), body.len());
    println!("{:<34} {:>10} {:>10} {:>10} {:>9}", "", "median µs", "min µs", "max µs", "MiB/s");
    for (name, (median, min, max)) in [("serde_json (RequestBody::parse)", serde), ("scan::scan", scanner)] {
        println!("{name:<34} {median:>10.1} {min:>10.1} {max:>10.1} {:>9.0}", mib / (median / 1e6));
    }
    println!("scanner / serde: {:.2}", scanner.0 / serde.0);
    ExitCode::SUCCESS
}
