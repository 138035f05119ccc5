//! Verifies the committed known-answer vectors, then times `Jwk::verify` per algorithm, and
//! `scan::scan` (the request body's one-pass JSON validation) on each body file named after the
//! iteration count. Built for wasm32-wasip1 and run under V8 (`node run.mjs`) or natively
//! (`cargo run --release`).

use claude_sso_gateway::jwks::{Algorithm, KeySet};
use claude_sso_gateway::scan;
use claude_sso_gateway::validated_elements::ValidatedElements;
use std::time::Instant;

const VECTORS: &str = include_str!("../../../src/jwks/vectors.json");
const NOW: u64 = 1_800_000_000;

fn main() {
    let iterations: u32 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(200);
    let doc: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let jwks = doc["jwks"].to_string();

    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        std::hint::black_box(KeySet::parse(std::hint::black_box(jwks.as_bytes())).unwrap());
    }
    let parse_us = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    let set = KeySet::parse(jwks.as_bytes()).unwrap();
    // Per key (a JWKS parse happens once per fetch of the IdP's keys, not per request).
    for key in doc["jwks"]["keys"].as_array().unwrap() {
        let one = serde_json::json!({ "keys": [key] }).to_string();
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(KeySet::parse(std::hint::black_box(one.as_bytes())).unwrap());
        }
        println!("  parse {}: {:.1} µs", key["kid"].as_str().unwrap(), t.elapsed().as_secs_f64() * 1e6 / rounds as f64);
    }

    let vectors = doc["vectors"].as_array().unwrap();
    let (mut wrong, mut typ_rule) = (0, 0);
    for v in vectors {
        let alg = Algorithm::from_name(v["alg"].as_str().unwrap()).unwrap();
        let kid = v["kid"].as_str().unwrap();
        let token = v["token"].as_str().unwrap();
        // The `typ` vectors test `jwt::check_claims`, which runs before any key is looked at.
        if v["note"].as_str().unwrap().contains(" typ ") {
            typ_rule += 1;
            continue;
        }
        let got = set.candidates(Some(kid), alg).next().is_some_and(|k| k.verify(token, alg, NOW));
        if got != v["valid"].as_bool().unwrap() {
            wrong += 1;
            println!("WRONG: {} (got {got})", v["note"].as_str().unwrap());
        }
    }
    println!("vectors: {} checked, {wrong} wrong ({typ_rule} typ vectors are jwt::check_claims's)", vectors.len() - typ_rule);
    println!("KeySet::parse of the {}-key JWKS: {parse_us:.1} µs", set.len());

    for note in ["RS256 rsa2048", "PS256 rsa2048", "RS256 rsa3072", "RS256 rsa4096", "ES256 #0", "ES384 #0", "EdDSA #0"] {
        let v = vectors.iter().find(|v| v["note"] == note).unwrap();
        let alg = Algorithm::from_name(v["alg"].as_str().unwrap()).unwrap();
        let key = set.candidates(Some(v["kid"].as_str().unwrap()), alg).next().unwrap();
        let token = v["token"].as_str().unwrap();
        // Warm-up (lets the engine tier up), then 20 timed batches: the machine is shared, so
        // the fastest batch and the median are both reported.
        let n = if note.contains("4096") || note.contains("3072") { iterations / 2 } else { iterations }.max(1);
        for _ in 0..n / 4 + 1 {
            assert!(key.verify(std::hint::black_box(token), alg, NOW));
        }
        let batch = (n / 20).max(1);
        let mut times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..batch {
                    assert!(key.verify(std::hint::black_box(token), alg, NOW));
                }
                t.elapsed().as_secs_f64() * 1e6 / batch as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!("{note:>14}: {:8.1} µs/verify (median {:.1})", times[0], times[10]);
    }
    // Forged tokens refused before any modular exponentiation or point multiplication.
    for note in ["RS256 signature one byte short", "RS256 signature = n", "ES256 r = 0", "EdDSA S + L (non-canonical)"] {
        let v = vectors.iter().find(|v| v["note"] == note).unwrap();
        let alg = Algorithm::from_name(v["alg"].as_str().unwrap()).unwrap();
        let key = set.candidates(Some(v["kid"].as_str().unwrap()), alg).next().unwrap();
        let token = v["token"].as_str().unwrap();
        let n = iterations * 10;
        let t = Instant::now();
        for _ in 0..n {
            assert!(!key.verify(std::hint::black_box(token), alg, NOW));
        }
        println!("refused, {note}: {:.2} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    // The body scan: every byte of a request body, at every request.
    for path in std::env::args().skip(2) {
        let body = std::fs::read(&path).unwrap();
        assert!(scan::scan(&body).unwrap().model.is_some(), "{path}: no model");
        let batch = (20_000_000 / body.len().max(1)).clamp(1, 2000);
        for _ in 0..batch {
            std::hint::black_box(scan::scan(std::hint::black_box(&body)).unwrap());
        }
        let mut times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..batch {
                    std::hint::black_box(scan::scan(std::hint::black_box(&body)).unwrap());
                }
                t.elapsed().as_secs_f64() * 1e6 / batch as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let name = std::path::Path::new(&path).file_name().unwrap().to_string_lossy().into_owned();
        println!("scan {name}: {} bytes, {:.1} µs (median {:.1})", body.len(), times[0], times[10]);
        // The same body again with its elements remembered (a worker's cache after the turn
        // before): what the scan costs when Claude Code resends them.
        let mut cache = ValidatedElements::new(4 << 20);
        scan::scan_with(&body, Some(&mut cache)).unwrap();
        let mut times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..batch {
                    std::hint::black_box(scan::scan_with(std::hint::black_box(&body), Some(&mut cache)).unwrap());
                }
                t.elapsed().as_secs_f64() * 1e6 / batch as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!("scan {name} repeated: {} bytes, {:.1} µs (median {:.1})", body.len(), times[0], times[10]);
    }
    if wrong > 0 {
        std::process::exit(1);
    }
}
