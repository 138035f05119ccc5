//! Entry points of the fuzz targets (`fuzz/`), one per parser of outside input, compiled with
//! the `fuzzing` feature. Each takes arbitrary bytes and checks what must hold for every input
//! (no panic, and the stated property); a violation panics, which the fuzzer reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use crate::config::Plan;
use crate::jwks::KeySet;
use crate::keystore::KeyStore;
use crate::request::sim::{self, Body, Event, Idp, Setup, Token};
use crate::request::HostProfile;
use crate::routing::RequestBody;
use crate::usage::Meter;

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(sim::plan)
}

/// A bearer token: claim checks and verification never panic, and never accept a token that
/// was not signed by the key set's key.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let plan = plan();
    if let Ok(parsed) = crate::jwt::check_claims(token, &plan.oidc, 1_800_000_000) {
        let keys = sim::keyset();
        assert!(parsed.verify(token, &keys, &plan.oidc, 1_800_000_000).is_err(), "a random token verified");
    }
    let _ = crate::jwt::take_token(Some(token), Some(token));
}

/// A JWKS document.
pub fn jwks(data: &[u8]) {
    if let Ok(set) = KeySet::parse(data) {
        assert!(!set.is_empty());
    }
}

/// ES256 and ES384: the table verifier ([`crate::jwks::ecdsa`]) and the RustCrypto crate agree
/// on every signature, for a few fixed keys per curve (among them ±G, where the table sums meet
/// their exceptional cases). The input is a curve and key byte, a mode, two bytes, then the
/// message; the signature is the key's own, or one with a bit flipped, s negated (high s), r or s
/// replaced, or raw bytes from the input.
pub fn ecdsa(data: &[u8]) {
    use crate::jwks::ecdsa::EcKey;
    let Some((&[which, mode, a, b], rest)) = data.split_first_chunk::<4>() else { return };
    let raw = &rest[..rest.len().min(96)];
    let message = &rest[raw.len()..];
    let check = |size: usize, own: Vec<u8>, high_s: Vec<u8>, verify: &dyn Fn(&[u8]) -> (bool, bool)| {
        let mut sig = own;
        let at = usize::from(u16::from_le_bytes([a, b])) % (16 * size);
        let take = raw.len().min(size);
        match mode % 6 {
            0 => assert!(verify(&sig).0, "own signature refused"),
            1 => sig[at / 8] ^= 1 << (at % 8),
            2 => sig = high_s,
            3 => sig[..take].copy_from_slice(&raw[..take]),
            4 => sig[size..size + take].copy_from_slice(&raw[..take]),
            _ => sig = rest[..rest.len().min(usize::from(a) % (2 * size + 8))].to_vec(),
        }
        let (fast, reference) = verify(&sig);
        assert_eq!(fast, reference, "signature {sig:02x?}");
    };
    // Per curve: keys of the secrets 1, n - 1 and two more, built once; the key's own signature.
    macro_rules! curve {
        ($krate:ident, $curve:ident, $size:literal) => {{
            use $krate::ecdsa::signature::Signer;
            use $krate::ecdsa::{Signature, SigningKey};
            static KEYS: OnceLock<Vec<(SigningKey, EcKey<crate::jwks::ecdsa::$curve>)>> = OnceLock::new();
            let keys = KEYS.get_or_init(|| {
                let minus_one = (-$krate::Scalar::ONE).to_bytes();
                let mut one = [0u8; $size];
                one[$size - 1] = 1;
                [&one[..], &minus_one[..], &[0x5a; $size][..], &[0x7f; $size][..]]
                    .iter()
                    .map(|d| {
                        let signer = SigningKey::from_slice(d).unwrap();
                        let sec1 = signer.verifying_key().to_sec1_point(false);
                        let key = EcKey::new(sec1.as_bytes(), true).unwrap();
                        assert!(key.has_table());
                        (signer, key)
                    })
                    .collect()
            });
            let (signer, key) = &keys[usize::from(which & 0x7f) % keys.len()];
            let signature: Signature = signer.sign(message);
            let high_s = [signature.r().to_bytes(), (-*signature.s()).to_bytes()].concat();
            check($size, signature.to_bytes().to_vec(), high_s, &|sig| {
                (key.verify(message, sig), key.verify_generic(message, sig))
            });
        }};
    }
    if which & 0x80 == 0 {
        curve!(p256, P256, 32);
    } else {
        curve!(p384, P384, 48);
    }
}

/// An OIDC discovery answer.
pub fn discovery(data: &[u8]) {
    let plan = plan();
    let mut store = KeyStore::new(&plan.oidc);
    if let Ok(callout) = store.on_discovery(&plan.oidc, Some(200), data) {
        assert!(callout.path.starts_with('/'), "callout path {:?}", callout.path);
    }
}

/// The body's `model`: whatever is accepted, the rewrite changes exactly the model's bytes and
/// the result is still JSON with the new model.
pub fn body(data: &[u8]) {
    let Ok(parsed) = RequestBody::parse(data) else { return };
    let Some(edit) = parsed.rewrite(data, "fuzz-model-\"id\"") else { return };
    let out = edit.apply(data);
    assert_eq!(edit.new_len(data.len()), out.len());
    let whole = edit.clone().into_whole(data);
    assert!(whole.replaced >= data.len().max(whole.bytes.len()) && whole.bytes == out);
    let value: serde_json::Value = serde_json::from_slice(&out).expect("the rewritten body is JSON");
    assert_eq!(value["model"], "fuzz-model-\"id\"");
}

/// The usage meters: split anywhere, an answer counts the same as whole, and is as readable.
pub fn usage(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else { return };
    let content_type = if split & 1 == 0 { "text/event-stream" } else { "application/json" };
    let cut = usize::from(split) * rest.len() / 256;
    let mut whole = Meter::new(content_type);
    whole.push(rest);
    let mut parts = Meter::new(content_type);
    parts.push(&rest[..cut]);
    parts.push(&rest[cut..]);
    assert_eq!(whole.finish(), parts.finish());
    assert_eq!(whole.problem(Some(200)), parts.problem(Some(200)));
}

/// The filter configuration.
pub fn config(data: &[u8]) {
    let _ = Plan::from_json(data, &|_| Some("sk-fuzz".to_owned()));
}

/// The request state machine under random setups and event orders (see [`sim`]).
pub fn request_events(data: &[u8]) {
    let Some((head, events)) = data.split_first_chunk::<4>() else { return };
    let pick = |byte: u8, n: usize| usize::from(byte) % n;
    let tokens = [Token::Good, Token::Forged, Token::NoTier, Token::Expired, Token::Missing, Token::DuplicateApiKey];
    let bodies = [Body::Allowed, Body::NotAllowed, Body::Invalid, Body::TooLarge];
    let setup = Setup {
        profile: if head[0] & 1 == 0 { HostProfile::Envoy } else { HostProfile::Ngx },
        keys_loaded: head[0] & 2 == 0,
        idp: if head[0] & 4 == 0 { Idp::Up } else { Idp::Down },
        trailers: head[0] & 8 != 0,
        spilled: head[0] & 16 != 0,
        token: tokens[pick(head[1], tokens.len())],
        body: bodies[pick(head[2], bodies.len())],
        chunks: 1 + pick(head[3], 6),
    };
    let all = [Event::Chunk, Event::Trailers, Event::Answer, Event::Reset];
    let events: Vec<Event> = events.iter().take(64).map(|b| all[pick(*b, all.len())]).collect();
    match sim::run(&setup, &events) {
        Ok(sim::End::Reset) => {}
        Ok(end) => assert!(sim::expected(&setup).contains(&end), "{setup:?} {events:?}: {end:?}"),
        Err(why) => panic!("{setup:?} {events:?}: {why}"),
    }
}

/// JSON with unique member names agrees with serde_json wherever it accepts.
pub fn strict_json(data: &[u8]) {
    if let Ok(value) = crate::strict_json::from_slice_unique(data) {
        let plain: serde_json::Value = serde_json::from_slice(data).expect("serde_json accepts it too");
        assert_eq!(value, plain);
    }
}

/// The one-pass scanner and serde_json agree on every input: accept or refuse, and every
/// member read (the `model` value and its span, `stream`, `max_tokens`). With remembered
/// elements the scan's result is the same: the input is split at its first NUL (a byte no valid
/// body holds) into a body that primes the cache and the body checked; without a NUL, the input
/// is both (every element then repeats).
pub fn scan_vs_serde(data: &[u8]) {
    let (prime, checked) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    let got = crate::scan::scan(checked);
    assert_eq!(got.as_ref().ok(), crate::scan::oracle::oracle(checked).as_ref(), "scan: {got:?}");
    if let Ok(crate::scan::Members { model: Some(m), .. }) = &got {
        let raw = &checked[m.span.clone()];
        assert_eq!(serde_json::from_slice::<String>(raw).ok().as_deref(), Some(m.value.as_str()));
    }
    let mut cache = crate::validated_elements::ValidatedElements::with_min_len(1 << 20, 1);
    let _ = crate::scan::scan_with(prime, Some(&mut cache));
    assert_eq!(crate::scan::scan_with(checked, Some(&mut cache)), got, "with remembered elements");
}

/// Bedrock: an event stream (raw bytes, or frames built from the input with valid CRCs so that
/// the fuzzer reaches the chunk and exception parsers) translates to the same SSE and the same
/// usage however it is split, and a translated request is JSON without `model` or `stream`.
pub fn bedrock(data: &[u8]) {
    use crate::bedrock::{translate_request, BedrockStreamTranslator, ANTHROPIC_VERSION};

    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 3 == 2 {
        let allowed = ["context-1m-2025-08-07".to_owned(), "interleaved-thinking-2025-05-14".to_owned()];
        let Ok(out) = translate_request(rest, "us.anthropic.fuzz-v1:0", &["interleaved-thinking-2025-05-14"], &allowed)
        else {
            return;
        };
        let value: serde_json::Value = serde_json::from_slice(&out.body).expect("the translated body is JSON");
        assert!(value.get("model").is_none() && value.get("stream").is_none(), "{value}");
        assert_eq!(value["anthropic_version"], ANTHROPIC_VERSION);
        assert!(out.path.starts_with("/model/us.anthropic.fuzz-v1%3A0/invoke"), "{}", out.path);
        return;
    }
    let Some((&split, rest)) = rest.split_first() else { return };
    let stream = bedrock_stream(mode, rest);
    let cut = usize::from(split) * stream.len() / 256;
    let mut whole = BedrockStreamTranslator::new();
    let mut once = whole.push(&stream);
    once.extend(whole.finish());
    let mut parts = BedrockStreamTranslator::new();
    let mut split_out = parts.push(&stream[..cut]);
    split_out.extend(parts.push(&stream[cut..]));
    split_out.extend(parts.finish());
    assert_eq!(once, split_out);
    assert_eq!(whole.metrics(), parts.metrics());
    // What goes to the client is SSE a meter can read: the same usage whole and split.
    let mut a = Meter::new("text/event-stream");
    a.push(&once);
    let mut b = Meter::new("text/event-stream");
    b.push(&split_out[..split_out.len() / 2]);
    b.push(&split_out[split_out.len() / 2..]);
    assert_eq!(a.finish(), b.finish());
}

/// The event stream a [`bedrock`] input stands for: `rest` as it is (`mode % 3 == 0`), or
/// frames built from its pieces.
fn bedrock_stream(mode: u8, rest: &[u8]) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use crate::bedrock::encode_frame;

    if mode % 3 == 0 {
        rest.to_vec()
    } else {
        // Pieces separated by 0xff: a chunk of an event (its JSON), an exception, or a chunk
        // whose payload is the piece as it is.
        rest.split(|&b| b == 0xff)
            .flat_map(|piece| {
                let (kind, body) = piece.split_first().map_or((0, piece), |(&k, b)| (k, b));
                match kind % 3 {
                    0 => {
                        let payload = serde_json::json!({"bytes": STANDARD.encode(body)}).to_string();
                        encode_frame(&[(":message-type", "event"), (":event-type", "chunk")], payload.as_bytes())
                    }
                    1 => {
                        let kind = String::from_utf8_lossy(body);
                        encode_frame(
                            &[(":message-type", "exception"), (":exception-type", &kind)],
                            b"{\"message\":\"x\"}",
                        )
                    }
                    _ => encode_frame(&[(":message-type", "event"), (":event-type", "chunk")], body),
                }
            })
            .collect()
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the fuzz crate and the smoke test.
pub const TARGETS: &[(&str, Target)] = &[
    ("jwt", jwt),
    ("jwks", jwks),
    ("ecdsa", ecdsa),
    ("discovery", discovery),
    ("body", body),
    ("usage", usage),
    ("config", config),
    ("request_events", request_events),
    ("strict_json", strict_json),
    ("scan_vs_serde", scan_vs_serde),
    ("bedrock", bedrock),
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_target_takes_its_seed_inputs() {
        for (name, target) in super::TARGETS {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(name);
            let seeds: Vec<_> =
                std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
            assert!(!seeds.is_empty(), "{name}: no seeds");
            for seed in seeds {
                target(&seed);
            }
        }
    }

    /// The Bedrock seeds reach the translator's events, its exceptions and its corrupt chunks,
    /// not only the decoder's refusals.
    #[test]
    fn the_bedrock_seeds_reach_the_translator() {
        let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/bedrock/frames.bin")).unwrap();
        let mut t = crate::bedrock::BedrockStreamTranslator::new();
        let sse = String::from_utf8(t.push(&super::bedrock_stream(seed[0], &seed[2..]))).unwrap();
        assert!(sse.contains("event: message_start") && sse.contains("event: content_block_delta"), "{sse}");
        assert!(sse.contains("event: error"), "{sse}");
    }
}
