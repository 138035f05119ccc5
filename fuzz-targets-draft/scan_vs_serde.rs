//! Fuzz target: `scan::scan` and the serde parse it replaces agree on every input, on accept or
//! refuse and on every member read (`model` value and span, `stream`, `max_tokens`).
//! Register in the fuzz crate as `[[bin]] name = "scan_vs_serde"`; needs `serde` (derive) and
//! `serde_json` (raw_value) as dependencies of the fuzz crate.
#![no_main]

use claude_sso_gateway::scan::{scan, Members, ModelValue};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
}

/// What `routing::RequestBody::parse` concludes, with `stream` read the same way.
fn oracle(body: &[u8]) -> Option<Members> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let top: Top = serde_json::from_slice(body).ok()?;
    let model = top.model.and_then(|raw| {
        let value: String = serde_json::from_str(raw.get()).ok()?;
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        Some(ModelValue { value, span: start..start + raw.get().len() })
    });
    let stream = top.stream.and_then(|raw| match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    });
    let max_tokens = top.max_tokens.and_then(|raw| raw.get().parse().ok());
    Some(Members { model, stream, max_tokens })
}

fuzz_target!(|body: &[u8]| {
    let got = scan(body);
    let want = oracle(body);
    assert_eq!(got.as_ref().ok(), want.as_ref(), "scan: {got:?}");
    if let Ok(Members { model: Some(m), .. }) = &got {
        // The span is the value's bytes: what `rewrite` replaces.
        let raw = &body[m.span.clone()];
        assert_eq!(serde_json::from_slice::<String>(raw).ok().as_deref(), Some(m.value.as_str()));
    }
});
