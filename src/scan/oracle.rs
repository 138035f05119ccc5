//! The reference the scanner is held to (unit tests and the `scan_vs_serde` fuzz target).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Members, ModelValue};

/// What serde_json concludes: the body parses as a `serde_json::Value` object, and a struct of
/// the members of interest (which refuses a repeated one) reads them. `None` when either refuses.
pub fn oracle(body: &[u8]) -> Option<Members> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        model: Option<&'a RawValue>,
        #[serde(borrow, default)]
        stream: Option<&'a RawValue>,
        #[serde(borrow, default)]
        max_tokens: Option<&'a RawValue>,
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(body).ok()?.as_object()?;
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
