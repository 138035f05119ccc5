//! Amazon Bedrock as a provider (issue #10): Claude Code keeps speaking the Anthropic Messages
//! API to the gateway; a `provider: bedrock` target turns each request into a SigV4-signed
//! `InvokeModel` / `InvokeModelWithResponseStream` call and each answer back into Anthropic's
//! wire format. Plain Rust: no host calls, no clock.
//!
//! # How the host layer calls it
//!
//! Request, once the whole body is read and the model resolved to a Bedrock target
//! (`target.bedrock` is `Some`):
//! 1. [`translate_request`]`(body, &model.model_id, &anthropic_beta_header_values, &bedrock.betas)`
//!    gives the new body, the path and whether the answer streams. Refusals are a
//!    [`BedrockError`]: answer with its [`ToReply`] reply.
//! 2. Replace the body; set `:path` to `req.path`, `:authority` (and `host`) to
//!    [`host`]`(&bedrock.region)`, `content-type: application/json` and `accept: req.accept`.
//!    Remove `x-api-key`, `authorization`, `anthropic-beta`, `anthropic-version`, any
//!    `x-amz-*` the client sent, and `content-length` (the body changed).
//! 3. [`sign`] the request exactly as sent (same path, `:authority`, body, and the
//!    `content-type`/`accept` values passed as `headers`) with the host's `now` in Unix
//!    seconds, and set every header it returns. Envoy must not rewrite the authority or the
//!    body after this point (the cluster is addressed by name; `host_rewrite` must stay off).
//!
//! Response headers: [`ResponseKind::of`]`(status, content-type)`.
//! - `Stream`: set `content-type: text/event-stream`, remove `content-length`; create a
//!   [`BedrockStreamTranslator`].
//! - `Json`: pass through unchanged (the Messages JSON is Anthropic's); usage comes from the
//!   body as for Anthropic, or from [`usage_from_headers`].
//! - `Error`: buffer the body (it is small), set `content-type: application/json`, remove
//!   `content-length`, and at end of stream replace it with [`translate_error`]`(status,
//!   x-amzn-errortype header, body)`; the status stays.
//!
//! Response body (`Stream`): every chunk goes through [`BedrockStreamTranslator::push`] and the
//! returned bytes replace the chunk (possibly empty: a partial frame is held back, never more);
//! at end of stream append [`BedrockStreamTranslator::finish`]. Feed the translated bytes to the
//! usage meter (`usage::Meter::new("text/event-stream")`), then prefer
//! [`BedrockStreamTranslator::metrics`] (what AWS bills) when it is `Some`.
//!
//! Not covered here: `POST /v1/messages/count_tokens` (Bedrock's `CountTokens` takes another
//! body shape), so the host layer should answer it locally for Bedrock targets until it is
//! translated. The Envoy cluster of a Bedrock target speaks TLS with SNI [`host`]`(region)`.

mod answer;
mod eventstream;
mod sigv4;
mod stream;
mod translate;
mod upstream;

use std::fmt;

use crate::reply::{Reply, ToReply};

pub use answer::{Answer, Chunk};
#[cfg(any(test, feature = "fuzzing"))]
pub use eventstream::encode as encode_frame;
pub use eventstream::{crc32, Decoded, EventStreamDecoder, Frame, HeaderValue, MAX_FRAME};
pub use sigv4::{amz_date, sign, SignInput, SERVICE};
pub use stream::{usage_from_headers, BedrockStreamTranslator};
pub use translate::{translate_error, translate_request, BedrockRequest, ResponseKind, ANTHROPIC_VERSION};
pub use upstream::{prepare, Outgoing};

/// Betas a Bedrock target forwards when its config names none: those the AWS Bedrock user guide
/// lists for Claude on `InvokeModel` ("Anthropic Claude Messages API"), plus
/// `fine-grained-tool-streaming-2025-05-14`, which Bedrock accepts for Claude 4 models. Bedrock
/// answers 400 "invalid beta flag" to any other (Claude Code sends e.g. `claude-code-20250219`,
/// `oauth-2025-04-20`, `prompt-caching-scope-2026-01-05`), and some models accept fewer: a
/// target's `betas` overrides this list.
pub const DEFAULT_BETAS: &[&str] = &[
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
];

/// AWS credentials of a Bedrock target. `Debug` hides the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AKIA…` or `ASIA…`.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The answer to a request for a Bedrock target on a host that cannot send it to Bedrock
/// (ngx_wasm_module, Kong's runtime: nginx forwards the URI the client sent, not the `:path`
/// the filter sets, so the signed request would go to the route's upstream, with the session
/// token and the conversation). Refused before anything is sent; only the administrator can
/// change it, so Claude Code must not retry (it calls every 5xx "usually temporary", so the
/// message says otherwise). `usable`: the tier's models this gateway can serve, to switch to.
pub fn needs_envoy(model: &str, usable: &[&str]) -> crate::reply::Reply {
    let instead = match usable {
        [] => String::new(),
        _ => format!(" Models of your tier that work here (switch with /model): {}.", usable.join(", ")),
    };
    let message = format!(
        "gateway: the model {model} is served through Amazon Bedrock, which this gateway cannot reach; \
         retrying will not help until your administrator changes the gateway.{instead}"
    );
    crate::reply::Reply::error(502, "bedrock_needs_envoy", "api_error", &message).with_header("x-should-retry", "false")
}

/// The operator's warning beside [`needs_envoy`].
pub fn needs_envoy_warning(target: &str) -> String {
    format!(
        "target {target:?} is a Bedrock target, which ngx_wasm_module (Kong) cannot forward to Bedrock: its models \
         are refused here (502 bedrock_needs_envoy); serve them from an Envoy gateway"
    )
}

/// The Bedrock runtime endpoint of a region.
pub fn host(region: &str) -> String {
    format!("bedrock-runtime.{region}.amazonaws.com")
}

/// `/model/<model id, percent-encoded whole>/invoke` or `/invoke-with-response-stream`.
/// `:` and `/` (in ARNs) are encoded, as the AWS SDKs do.
pub fn invoke_path(model_id: &str, stream: bool) -> String {
    let op = if stream { "invoke-with-response-stream" } else { "invoke" };
    format!("/model/{}/{op}", sigv4::uri_encode(model_id, false))
}

/// What went wrong on the Bedrock path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BedrockError {
    /// The client's body is not a JSON object.
    InvalidJson(String),
    /// A field has a type the Messages API does not allow.
    InvalidField {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// The answer's event stream is corrupt (CRC, lengths, headers) or was cut inside a frame.
    EventStream(String),
}

impl BedrockError {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            BedrockError::InvalidJson(_) => "bedrock_invalid_json",
            BedrockError::InvalidField { .. } => "bedrock_invalid_field",
            BedrockError::EventStream(_) => "bedrock_event_stream",
        }
    }
}

impl fmt::Display for BedrockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BedrockError::InvalidJson(why) => write!(f, "request body is not valid JSON: {why}"),
            BedrockError::InvalidField { field, expected } => write!(f, "`{field}` must be {expected}"),
            BedrockError::EventStream(why) => write!(f, "Bedrock event stream is corrupt: {why}"),
        }
    }
}

impl std::error::Error for BedrockError {}

impl ToReply for BedrockError {
    fn to_reply(&self) -> Reply {
        match self {
            BedrockError::InvalidJson(_) | BedrockError::InvalidField { .. } => {
                Reply::error(400, "bedrock_request", "invalid_request_error", &format!("gateway: {self}"))
            }
            BedrockError::EventStream(_) => {
                Reply::error(502, "bedrock_stream", "api_error", &format!("gateway: {self}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_the_whole_model_id() {
        let cases = [
            (
                "anthropic.claude-sonnet-4-20250514-v1:0",
                false,
                "/model/anthropic.claude-sonnet-4-20250514-v1%3A0/invoke",
            ),
            (
                "us.anthropic.claude-opus-4-1-20250805-v1:0",
                true,
                "/model/us.anthropic.claude-opus-4-1-20250805-v1%3A0/invoke-with-response-stream",
            ),
            (
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/x y",
                false,
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fx%20y/invoke",
            ),
        ];
        for (model, stream, want) in cases {
            assert_eq!(invoke_path(model, stream), want, "{model}");
        }
        assert_eq!(host("eu-central-1"), "bedrock-runtime.eu-central-1.amazonaws.com");
    }

    #[test]
    fn debug_hides_secrets() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "very-secret".to_owned(),
            session_token: Some("token-secret".to_owned()),
        };
        let text = format!("{creds:?}");
        assert!(text.contains("AKIDEXAMPLE") && !text.contains("very-secret") && !text.contains("token-secret"));
    }

    #[test]
    fn errors_reply_in_anthropic_shape() {
        let cases = [
            (BedrockError::InvalidJson("x".to_owned()), 400, "gateway: request body is not valid JSON: x"),
            (
                BedrockError::InvalidField { field: "stream", expected: "a boolean" },
                400,
                "gateway: `stream` must be a boolean",
            ),
            (BedrockError::EventStream("bad".to_owned()), 502, "gateway: Bedrock event stream is corrupt: bad"),
        ];
        for (err, status, message) in cases {
            let reply = err.to_reply();
            assert_eq!(reply.status, status, "{err:?}");
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(body["error"]["message"], message, "{err:?}");
        }
    }
}
