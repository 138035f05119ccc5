//! What a request is (which endpoint), and the body's `model`: finding it without re-encoding
//! the body, checking it against the tier, and splicing in the provider's model id.

use crate::config::{Model, Plan, Tier};
use crate::reply::{Reply, ToReply};
use crate::scan;

/// What the gateway does with a request, decided from method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`: authenticated and forwarded.
    Messages,
    /// `POST /v1/messages/count_tokens`: authenticated and forwarded.
    CountTokens,
    /// Claude Code's unauthenticated connectivity check (`HEAD /api/hello`, `HEAD /`): answered here.
    Hello,
    /// Anything else: answered here with 404, never forwarded.
    NotFound,
}

impl Endpoint {
    /// Classifies a request. The query string is ignored (Claude Code sends `?beta=true`).
    pub fn classify(method: &str, path: &str) -> Endpoint {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        match (method, path) {
            ("POST", "/v1/messages") => Endpoint::Messages,
            ("POST", "/v1/messages/count_tokens") => Endpoint::CountTokens,
            ("HEAD" | "GET", "/" | "/api/hello") => Endpoint::Hello,
            _ => Endpoint::NotFound,
        }
    }
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The method and path are not served.
    NotFound {
        /// The request's method.
        method: String,
        /// The request's path, without its query (which may carry what the client keeps to itself).
        path: String,
    },
    /// Larger than `max_body_bytes`.
    TooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// Not a JSON object, or `model` repeated.
    InvalidJson(String),
    /// No string `model`.
    MissingModel,
    /// `content-length` is not a number.
    InvalidLength,
    /// The body is sent encoded (`content-encoding` other than `identity`): the gateway checks
    /// bytes the provider would decode into something else.
    Encoded(String),
    /// A header the gateway sets itself was sent more than once.
    RepeatedHeader(String),
    /// More headers than the host hands the filter (ngx_wasm_module drops those past its cap
    /// unseen, where a guarded header could hide).
    TooManyHeaders {
        /// The most the host hands over.
        max: usize,
    },
    /// The host could not hand the body to the filter (nginx spilled it to a temp file).
    BodyUnreadable,
    /// The tier may not use this model.
    ModelNotAllowed {
        /// What the client asked for.
        model: String,
        /// The person's tier.
        tier: String,
        /// The tier's aliases.
        allowed: Vec<String>,
    },
    /// The advisor tool asked for: the model it consults is named inside `tools`, outside the
    /// tier's check, and its tokens are reported apart from the answer's usage.
    AdvisorTool,
    /// Fast mode asked for on a model priced without fast-mode rates: its cost could not be told.
    FastModeNotPriced {
        /// The alias asked for.
        model: String,
    },
}

/// Whether `anthropic-beta` values (each a comma-separated list) name a beta starting with
/// `family` (`fast-mode-` for `fast-mode-2026-02-01`), in any case.
pub fn asks_beta(betas: &[&str], family: &str) -> bool {
    let family = family.as_bytes();
    betas.iter().flat_map(|v| v.split(',')).any(|b| {
        let b = b.trim().as_bytes();
        b.len() >= family.len() && b[..family.len()].eq_ignore_ascii_case(family)
    })
}

/// The beta fast mode needs (`speed: "fast"`).
pub const FAST_MODE_BETA: &str = "fast-mode-";

/// The beta the advisor tool needs (`advisor_20260301`: the provider consults another model,
/// named in the tool, mid-answer).
pub const ADVISOR_TOOL_BETA: &str = "advisor-tool-";

/// `bytes` as a person reads a size: `10 MiB (10485760 bytes)`, `100000 bytes`.
fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB ({b} bytes)", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB ({b} bytes)", b >> 10),
        b => format!("{b} bytes"),
    }
}

impl ToReply for RequestError {
    fn to_reply(&self) -> Reply {
        match self {
            // Says what was asked and what is served: a base URL ending in `/v1` sends
            // `/v1/v1/messages`.
            RequestError::NotFound { method, path } => Reply::error(
                404,
                "not_found",
                "not_found_error",
                &format!(
                    "gateway: {} {} is not served here; this gateway serves POST /v1/messages \
                     (ANTHROPIC_BASE_URL is the gateway's address, without /v1)",
                    shortened(method, 16),
                    shortened(path, SHOWN_CHARS)
                ),
            ),
            // Not 413: Claude Code shows every 413 as its own "Request too large (max 32MB)",
            // which names the wrong limit; a 400's message is shown as it is.
            RequestError::TooLarge { max } => Reply::error(
                400,
                "body_too_large",
                "invalid_request_error",
                &format!(
                    "gateway: the request is larger than this gateway's limit of {}; compact the conversation \
                     (/compact) or leave out large attachments",
                    size(*max)
                ),
            ),
            RequestError::InvalidJson(why) => Reply::error(
                400,
                "invalid_json",
                "invalid_request_error",
                &format!("gateway: request body is not valid JSON: {why}"),
            ),
            RequestError::MissingModel => Reply::error(
                400,
                "missing_model",
                "invalid_request_error",
                "gateway: request body has no string `model`",
            ),
            RequestError::RepeatedHeader(name) => Reply::error(
                400,
                "repeated_header",
                "invalid_request_error",
                &format!(
                    "gateway: the {} header may be sent at most once (the gateway sets it or takes it away)",
                    shortened(name, SHOWN_CHARS)
                ),
            ),
            RequestError::TooManyHeaders { max } => Reply::error(
                431,
                "too_many_headers",
                "invalid_request_error",
                &format!("gateway: a request may carry fewer than {max} headers"),
            ),
            RequestError::Encoded(coding) => Reply::error(
                415,
                "content_encoding",
                "invalid_request_error",
                &format!(
                    "gateway: request bodies must not be compressed (content-encoding: {}); send it without \
                     content-encoding",
                    shortened(coding, 40)
                ),
            ),
            RequestError::InvalidLength => {
                Reply::error(400, "invalid_length", "invalid_request_error", "gateway: content-length is not a number")
            }
            // The proxy's body buffer is smaller than `max_body_bytes`: the operator's to fix.
            RequestError::BodyUnreadable => Reply::error(
                500,
                "body_unreadable",
                "api_error",
                "gateway: the request body could not be inspected (larger than the proxy's body buffer, which is \
                 smaller than the gateway's body limit); tell your administrator. A smaller request (/compact) may \
                 go through",
            )
            .with_header("x-should-retry", "false"),
            RequestError::AdvisorTool => Reply::error(
                400,
                "advisor_tool",
                "invalid_request_error",
                "gateway: the advisor tool is not available through this gateway: the model it consults is not \
                 checked against your tier, and its tokens could not be counted. Set \
                 CLAUDE_CODE_DISABLE_ADVISOR_TOOL=1",
            )
            .with_header("x-should-retry", "false"),
            RequestError::FastModeNotPriced { model } => Reply::error(
                400,
                "fast_mode_not_priced",
                "invalid_request_error",
                &format!(
                    "gateway: fast mode is not available for {} here: the gateway has no fast-mode price for it, so \
                     its cost could not be counted. Turn fast mode off (/fast in Claude Code), or ask your \
                     administrator to add price.fast for this model",
                    shortened(model, SHOWN_CHARS)
                ),
            )
            .with_header("x-should-retry", "false"),
            RequestError::ModelNotAllowed { model, tier, allowed } => Reply::error(
                400,
                "model_not_allowed",
                "invalid_request_error",
                &format!(
                    "model not configured: {} is not available to tier {tier}; allowed: {}",
                    shortened(model, SHOWN_CHARS),
                    allowed.join(", ")
                ),
            ),
        }
    }
}

/// Most characters of a client-chosen name (a refused `model`, a repeated member or header name)
/// an answer (and with it the refusal's log line) repeats: the request may hold one of any
/// length.
pub(crate) const SHOWN_CHARS: usize = 100;

/// `text` cut to `max` characters, with `…` when something was cut.
pub(crate) fn shortened(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)).into(),
        None => text.into(),
    }
}

/// The parts of a Messages request body the gateway reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBody {
    /// `model` as sent.
    pub model: String,
    /// `max_tokens`, when it is a whole number.
    pub max_tokens: Option<u64>,
    /// `stream: true`.
    pub stream: bool,
    /// Byte range of the `model` value (with its quotes) in the body.
    model_span: (usize, usize),
}

impl RequestBody {
    /// Validates the whole body as JSON in one pass (see [`crate::scan`]) and reads `model`.
    pub fn parse(body: &[u8]) -> Result<RequestBody, RequestError> {
        Self::parse_with(body, None)
    }

    /// [`RequestBody::parse`], comparing instead of validating the elements `repeats` knows.
    pub fn parse_with(body: &[u8], repeats: Option<&mut dyn scan::Repeats>) -> Result<RequestBody, RequestError> {
        let members = scan::scan_with(body, repeats).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
        let model = members.model.ok_or(RequestError::MissingModel)?;
        Ok(RequestBody {
            model: model.value,
            max_tokens: members.max_tokens,
            stream: members.stream.unwrap_or(false),
            model_span: (model.span.start, model.span.end),
        })
    }

    /// The model entry the tier allows for this body, or the refusal listing what it allows.
    pub fn resolve<'a>(&self, plan: &'a Plan, tier: &Tier) -> Result<&'a Model, RequestError> {
        plan.model_for(tier, &self.model).ok_or_else(|| RequestError::ModelNotAllowed {
            model: self.model.clone(),
            tier: tier.name.clone(),
            allowed: tier.aliases(plan).map(str::to_owned).collect(),
        })
    }

    /// The edit that puts `model_id` in place of `model`; every other byte stays as it was.
    /// Only the body's start up to the model's value is replaced, so a body whose `model` comes
    /// first (Claude Code's) sends a few dozen bytes across the host boundary, not the body.
    pub fn rewrite(&self, body: &[u8], model_id: &str) -> Option<BodyEdit> {
        if self.model == model_id {
            return None;
        }
        let value = serde_json::Value::String(model_id.to_owned()).to_string();
        let (start, end) = self.model_span;
        let mut bytes = Vec::with_capacity(start + value.len());
        bytes.extend_from_slice(body.get(..start)?);
        bytes.extend_from_slice(value.as_bytes());
        Some(BodyEdit { replaced: end, bytes })
    }
}

/// A change to the request body: its first `replaced` bytes (all of them, when it is shorter)
/// give way to `bytes`. This is the shape both hosts take in one call: Envoy drains `replaced`
/// bytes and prepends the new ones; ngx_wasm_module replaces the whole body with `bytes` cut to
/// `replaced`, so an edit for ngx is always [`BodyEdit::whole`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyEdit {
    /// How many bytes at the start of the old body go.
    pub replaced: usize,
    /// What takes their place.
    pub bytes: Vec<u8>,
}

impl BodyEdit {
    /// A new body in place of an old one of `old_len` bytes, whatever the host.
    pub fn whole(old_len: usize, body: Vec<u8>) -> BodyEdit {
        BodyEdit { replaced: old_len.max(body.len()), bytes: body }
    }

    /// The new body's length.
    pub fn new_len(&self, old_len: usize) -> usize {
        old_len.saturating_sub(self.replaced) + self.bytes.len()
    }

    /// The new body.
    pub fn apply(&self, old: &[u8]) -> Vec<u8> {
        let kept = old.get(self.replaced..).unwrap_or_default();
        [self.bytes.as_slice(), kept].concat()
    }

    /// The same change as a whole new body (for a host that cannot replace a prefix).
    pub fn into_whole(self, old: &[u8]) -> BodyEdit {
        if self.replaced >= old.len().max(self.bytes.len()) {
            return self;
        }
        BodyEdit::whole(old.len(), self.apply(old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claude Code shows a 413 as its own "Request too large (max 32MB)"; the gateway's limit is
    /// said in a 400 it shows as it is, and a proxy buffer too small for that limit is a 500.
    #[test]
    fn a_body_over_the_limit_names_the_gateways_limit_in_a_400() {
        let reply = RequestError::TooLarge { max: 10 << 20 }.to_reply();
        assert_eq!(reply.status, 400);
        let body = String::from_utf8_lossy(&reply.body);
        assert!(body.contains("limit of 10 MiB (10485760 bytes)") && body.contains("invalid_request_error"), "{body}");
        assert!(String::from_utf8_lossy(&RequestError::TooLarge { max: 100_000 }.to_reply().body)
            .contains("limit of 100000 bytes;"));
        let unreadable = RequestError::BodyUnreadable.to_reply();
        assert_eq!(unreadable.status, 500);
        assert!(unreadable.headers.contains(&("x-should-retry".into(), "false".into())));
    }
    use crate::jwt::tests::plan;
    use serde_json::json;

    #[test]
    fn classifies_endpoints() {
        let cases = [
            ("POST", "/v1/messages?beta=true", Endpoint::Messages),
            ("POST", "/v1/messages", Endpoint::Messages),
            ("POST", "/v1/messages/count_tokens?beta=true", Endpoint::CountTokens),
            ("GET", "/v1/messages", Endpoint::NotFound),
            ("HEAD", "/api/hello", Endpoint::Hello),
            ("HEAD", "/", Endpoint::Hello),
            ("GET", "/v1/models", Endpoint::NotFound),
            ("POST", "/v1/messages/", Endpoint::NotFound),
            ("POST", "/v1/complete", Endpoint::NotFound),
        ];
        for (method, path, want) in cases {
            assert_eq!(Endpoint::classify(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn rewrite_changes_only_the_model_bytes() {
        let body =
            br#"{ "model" : "claude-haiku-4-5", "messages":[{"role":"user","content":"model \"x\""}], "stream":true }"#;
        let parsed = RequestBody::parse(body).unwrap();
        assert_eq!(parsed.model, "claude-haiku-4-5");
        let edit = parsed.rewrite(body, "claude-haiku-4-5-20251001").unwrap();
        assert_eq!(edit.replaced, r#"{ "model" : "claude-haiku-4-5""#.len(), "only the start up to the model goes");
        let out = edit.apply(body);
        assert_eq!(edit.new_len(body.len()), out.len());
        let whole = edit.clone().into_whole(body);
        assert_eq!((whole.replaced, &whole.bytes), (out.len(), &out), "a whole edit for ngx");
        let expected =
            String::from_utf8_lossy(body).replacen("\"claude-haiku-4-5\"", "\"claude-haiku-4-5-20251001\"", 1);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(parsed.rewrite(body, "claude-haiku-4-5"), None);
    }

    #[test]
    fn escaped_model_is_decoded_and_replaced_whole() {
        let body = br#"{"messages":[],"model":"claude-sonnet\u002d4-6"}"#;
        let parsed = RequestBody::parse(body).unwrap();
        assert_eq!(parsed.model, "claude-sonnet-4-6");
        assert_eq!(parsed.rewrite(body, "x").unwrap().apply(body), br#"{"messages":[],"model":"x"}"#.to_vec());
    }

    #[test]
    fn refuses_bad_bodies() {
        let cases: &[(&str, &[u8])] = &[
            ("not json", b"model=claude"),
            ("truncated", br#"{"model":"a""#),
            ("array", b"[1]"),
            ("duplicate model", br#"{"model":"claude-sonnet-4-6","model":"claude-opus-4-7"}"#),
            ("trailing garbage", br#"{"model":"a"} x"#),
        ];
        for (name, body) in cases {
            assert!(matches!(RequestBody::parse(body), Err(RequestError::InvalidJson(_))), "{name}");
        }
        assert_eq!(RequestBody::parse(br#"{"messages":[]}"#), Err(RequestError::MissingModel));
        assert_eq!(RequestBody::parse(br#"{"model":7}"#), Err(RequestError::MissingModel));
    }

    #[test]
    fn model_must_belong_to_the_tier() {
        let plan = plan();
        let standard = &plan.tiers[1];
        let body = RequestBody::parse(br#"{"model":"claude-opus-4-7"}"#).unwrap();
        let err = body.resolve(&plan, standard).unwrap_err();
        let reply = err.to_reply();
        assert_eq!(reply.status, 400);
        let text = String::from_utf8(reply.body).unwrap();
        assert!(
            text.contains(
                "model not configured: claude-opus-4-7 is not available to tier standard; allowed: claude-sonnet-4-6"
            ),
            "{text}"
        );
        assert_eq!(body.resolve(&plan, &plan.tiers[0]).unwrap().model_id, "claude-opus-4-7");
    }

    #[test]
    fn a_refused_model_is_quoted_at_most_100_characters_long() {
        let plan = plan();
        for (model, shown) in [
            ("é".repeat(100), "é".repeat(100)),
            ("é".repeat(101), format!("{}…", "é".repeat(100))),
            ("m".repeat(1 << 20), format!("{}…", "m".repeat(100))),
        ] {
            let body = RequestBody::parse(json!({"model": model}).to_string().as_bytes()).unwrap();
            let reply = body.resolve(&plan, &plan.tiers[1]).unwrap_err().to_reply();
            let text: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            let want =
                format!("model not configured: {shown} is not available to tier standard; allowed: claude-sonnet-4-6");
            assert_eq!(text["error"]["message"], want);
        }
    }

    #[test]
    fn a_repeated_header_is_named_at_most_100_characters_long() {
        let reply = RequestError::RepeatedHeader(format!("x-amz-{}", "a".repeat(60_000))).to_reply();
        let text: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let want = format!(
            "gateway: the x-amz-{}… header may be sent at most once (the gateway sets it or takes it away)",
            "a".repeat(94)
        );
        assert_eq!(text["error"]["message"], want);
    }

    #[test]
    fn captured_claude_code_bodies_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/claude-code");
        for name in [
            "request_main_stream.json",
            "request_tool_result_followup.json",
            "request_automode_classifier_nonstream.json",
        ] {
            let body = std::fs::read(dir.join(name)).unwrap();
            let parsed = RequestBody::parse(&body).unwrap();
            assert_eq!(parsed.model, "claude-sonnet-4-6", "{name}");
            let edit = parsed.rewrite(&body, "claude-sonnet-4-6-20990101").unwrap();
            assert!(edit.bytes.len() < 64, "{name}: the model comes first, so the edit is small");
            assert_eq!(edit.apply(&body).len(), body.len() + 9, "{name}");
        }
    }

    #[test]
    fn a_beta_is_asked_for_in_any_value_and_case() {
        assert!(asks_beta(&["claude-code-20250219,fast-mode-2026-02-01"], FAST_MODE_BETA));
        assert!(asks_beta(&["claude-code-20250219", " Fast-Mode-2027-01-01 "], FAST_MODE_BETA));
        assert!(!asks_beta(&["claude-code-20250219,interleaved-thinking-2025-05-14"], FAST_MODE_BETA));
        assert!(!asks_beta(&["fast-mode", "fastmode-2026-02-01", ""], FAST_MODE_BETA));
        assert!(!asks_beta(&[], FAST_MODE_BETA));
        assert!(asks_beta(&["interleaved-thinking-2025-05-14,advisor-tool-2026-03-01"], ADVISOR_TOOL_BETA));
    }
}
