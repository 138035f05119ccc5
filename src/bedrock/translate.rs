//! Anthropic request bodies into Bedrock `InvokeModel` bodies, and Bedrock error answers into
//! Anthropic-shaped errors.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{invoke_path, BedrockError};
use crate::credential_refusal::{shown, shown_type, trusted, SentCredentials};
use crate::reply::Reply;

/// The `anthropic_version` Bedrock requires in every Claude body.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// A request ready for Bedrock (before signing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockRequest {
    /// `/model/<id>/invoke` or `/model/<id>/invoke-with-response-stream`.
    pub path: String,
    /// The new body.
    pub body: Vec<u8>,
    /// Whether the client asked for a stream (and the answer is an event stream).
    pub stream: bool,
    /// The `accept` header to send.
    pub accept: &'static str,
    /// Betas sent in `anthropic_beta`, in the order first seen.
    pub betas: Vec<String>,
    /// Betas the client asked for that the allow-list dropped (for logs; never an error:
    /// Claude Code sends many betas Bedrock would refuse with 400 "invalid beta flag").
    pub dropped_betas: Vec<String>,
}

/// Turns an Anthropic Messages body into a Bedrock one: `model` and `stream` removed,
/// `anthropic_version` set, and the betas of the `anthropic-beta` headers (`beta_headers`: each
/// header's value, comma separated) and of any `anthropic_beta` in the body merged into one
/// `anthropic_beta` array filtered by `allowed`. Every other member keeps its place and its exact
/// bytes. A top-level key given twice is refused, so Bedrock cannot read a different value than
/// the gateway did.
pub fn translate_request(
    body: &[u8],
    model_id: &str,
    beta_headers: &[&str],
    allowed: &[String],
) -> Result<BedrockRequest, BedrockError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BedrockError::InvalidJson("expected a JSON object".to_owned()));
    }
    let Fields(mut fields) = serde_json::from_slice(body).map_err(|e| BedrockError::InvalidJson(e.to_string()))?;
    let mut remove = |key: &str| fields.iter().position(|(k, _)| k == key).map(|i| fields.remove(i).1);
    remove("model");
    remove("anthropic_version");
    let stream = match remove("stream") {
        None => false,
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map_err(|_| BedrockError::InvalidField { field: "stream", expected: "a boolean" })?,
    };
    let mut asked: Vec<String> = match remove("anthropic_beta") {
        None => Vec::new(),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| BedrockError::InvalidField { field: "anthropic_beta", expected: "an array of strings" })?,
    };
    asked.extend(beta_headers.iter().flat_map(|h| h.split(',')).map(|b| b.trim().to_owned()));
    let (mut betas, mut dropped) = (Vec::new(), Vec::new());
    // A set, not a search of the lists: a body may name a beta any number of times.
    let mut seen = std::collections::HashSet::new();
    for beta in asked.into_iter().filter(|b| !b.is_empty()) {
        if !seen.insert(beta.clone()) {
            continue;
        }
        if allowed.contains(&beta) {
            betas.push(beta);
        } else {
            dropped.push(beta);
        }
    }

    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    let version = serde_json::Value::from(ANTHROPIC_VERSION).to_string();
    let beta_json = serde_json::Value::from(betas.clone()).to_string();
    let mut extra = vec![("anthropic_version", version.as_str())];
    if !betas.is_empty() {
        extra.push(("anthropic_beta", beta_json.as_str()));
    }
    let all = extra.into_iter().chain(fields.iter().map(|(k, v)| (k.as_str(), v.get())));
    for (i, (key, value)) in all.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::Value::from(key).to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');

    let accept = if stream { "application/vnd.amazon.eventstream" } else { "application/json" };
    Ok(BedrockRequest { path: invoke_path(model_id, stream), body: out, stream, accept, betas, dropped_betas: dropped })
}

/// The members of a JSON object in order, values borrowed as written. (A `Vec` rather than a
/// map: the order is kept and no B-tree code lands in the .wasm; repeats are caught with a hash
/// set, so a body of many members costs linear time.)
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields: Vec<(String, &'de RawValue)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        let key = crate::routing::shortened(&key, crate::routing::SHOWN_CHARS);
                        return Err(de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    let value = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// How the host layer treats a Bedrock answer, decided from its status and content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// 2xx event stream: translate with [`super::BedrockStreamTranslator`], answer as SSE.
    Stream,
    /// 2xx JSON: the Anthropic message as is.
    Json,
    /// Anything else: buffer and replace with [`translate_error`].
    Error,
}

impl ResponseKind {
    /// Classifies an answer.
    pub fn of(status: u32, content_type: Option<&str>) -> ResponseKind {
        let stream = content_type
            .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/vnd.amazon.eventstream"));
        match status {
            200..=299 if stream => ResponseKind::Stream,
            200..=299 => ResponseKind::Json,
            _ => ResponseKind::Error,
        }
    }
}

/// Bedrock's error answer (`x-amzn-errortype` header, `{"message": ...}` body) as an
/// Anthropic error with the same status.
/// `sent`: the credentials the gateway sent, never quoted back.
pub fn translate_error(status: u32, error_type: Option<&str>, body: &[u8], sent: &SentCredentials) -> Reply {
    // An answer already in Anthropic's error shape without an AWS error type is the proxy's own
    // (no healthy upstream, a timeout, rewritten by the samples' `local_reply_config`): it says
    // what happened, and Bedrock never answered it.
    if let Some(own) = error_type.is_none().then(|| anthropic_error(body)).flatten() {
        return Reply::json(status, "proxy_error", &own);
    }
    #[derive(Deserialize)]
    struct AwsError {
        #[serde(alias = "Message")]
        message: Option<String>,
        #[serde(rename = "__type")]
        kind: Option<String>,
    }
    let parsed = serde_json::from_slice::<AwsError>(body).ok();
    let from_body = parsed.as_ref().and_then(|p| p.kind.as_deref());
    // A type that is not a word (a key echoed in its place) is not quoted.
    let aws_type = error_type.or(from_body).map(short_type).and_then(shown_type);
    let message = parsed.as_ref().and_then(|p| p.message.clone());
    let message = match (aws_type, message) {
        (Some(t), message) => {
            let message = message.map(|m| trusted(&m, sent));
            format!("bedrock {t}: {}", message.unwrap_or_else(|| format!("HTTP {status}")))
        }
        // No AWS error type: Bedrock did not write it (a proxy's `{"message": ...}` page), and
        // such a page may echo the request's headers, the session token among them.
        (None, Some(message)) => format!("bedrock: {}", shown(&message, 300, sent).trim()),
        // Neither an AWS error type nor an AWS message: the proxy on the way answered.
        (None, None) => {
            // A page a proxy wrote may echo the request's headers (a session token among them).
            let text = shown(&String::from_utf8_lossy(body), 200, sent);
            format!("gateway: no answer from Bedrock; the proxy on the way answered HTTP {status} ({})", text.trim())
        }
    };
    let kind = anthropic_error_type(aws_type, Some(status));
    Reply::error(client_status(aws_type, status), "bedrock_error", kind, &message)
}

/// The status a Bedrock error goes to the client with: Bedrock's, but a rate-limit error is a
/// 429 (a spent account quota is a 400 that AWS says to resubmit later, and Claude Code retries
/// by status). `aws_type` is the short type ([`short_type`]).
pub(super) fn client_status(aws_type: Option<&str>, status: u32) -> u32 {
    if anthropic_error_type(aws_type, Some(status)) == "rate_limit_error" {
        429
    } else {
        status
    }
}

/// `body` if it is an Anthropic error: `{"type":"error","error":{"type":..,"message":..}}`.
fn anthropic_error(body: &[u8]) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let shaped = value.get("type").and_then(|t| t.as_str()) == Some("error")
        && error.get("type").is_some_and(serde_json::Value::is_string)
        && error.get("message").is_some_and(serde_json::Value::is_string);
    shaped.then_some(value)
}

/// `ValidationException` from `ValidationException:http://internal.amazon.com/...` or from
/// `com.amazon.coral.service#ValidationException`.
pub(super) fn short_type(raw: &str) -> &str {
    let raw = raw.split(':').next().unwrap_or(raw);
    raw.rsplit('#').next().unwrap_or(raw).trim()
}

/// The Anthropic error type for a Bedrock exception type (either case of its first letter, as
/// event-stream exceptions are camelCase) or, failing that, for the HTTP status.
pub(super) fn anthropic_error_type(aws_type: Option<&str>, status: Option<u32>) -> &'static str {
    let by_type = aws_type.map(str::to_ascii_lowercase).and_then(|t| {
        Some(match t.as_str() {
            "validationexception" => "invalid_request_error",
            "accessdeniedexception" => "permission_error",
            // The gateway's own AWS credentials were refused: not something the person can fix
            // by signing in again, so not `authentication_error` (Claude Code would ask to log in).
            "unrecognizedclientexception"
            | "invalidsignatureexception"
            | "incompletesignatureexception"
            | "missingauthenticationtokenexception"
            | "expiredtokenexception"
            | "invalidclienttokenid" => "permission_error",
            "resourcenotfoundexception" => "not_found_error",
            "throttlingexception" | "toomanyrequestsexception" | "servicequotaexceededexception" => "rate_limit_error",
            "serviceunavailableexception" | "modelnotreadyexception" => "overloaded_error",
            "internalserverexception"
            | "modelerrorexception"
            | "modelstreamerrorexception"
            | "modeltimeoutexception" => "api_error",
            _ => return None,
        })
    });
    by_type.unwrap_or(match status {
        Some(401) => "authentication_error",
        Some(403) => "permission_error",
        Some(404) => "not_found_error",
        Some(413) => "request_too_large",
        Some(429) => "rate_limit_error",
        Some(503 | 529) => "overloaded_error",
        Some(400..=499) => "invalid_request_error",
        _ => "api_error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn allowed() -> Vec<String> {
        ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07", "fine-grained-tool-streaming-2025-05-14"]
            .map(str::to_owned)
            .to_vec()
    }

    #[test]
    fn streaming_body_loses_model_and_stream_and_gains_version_and_betas() {
        let body = br#"{"model":"claude-sonnet-4-6","stream":true,"max_tokens":64,"temperature":0.70,
            "messages":[{"role":"user","content":"hi \u00e9"}],"metadata":{"user_id":"u"}}"#;
        let headers =
            ["claude-code-20250219,interleaved-thinking-2025-05-14", " context-1m-2025-08-07 ,oauth-2025-04-20"];
        let req = translate_request(body, "us.anthropic.claude-sonnet-4-20250514-v1:0", &headers, &allowed()).unwrap();
        assert!(req.stream);
        assert_eq!(req.path, "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke-with-response-stream");
        assert_eq!(req.accept, "application/vnd.amazon.eventstream");
        assert_eq!(req.betas, ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]);
        assert_eq!(req.dropped_betas, ["claude-code-20250219", "oauth-2025-04-20"]);
        let text = String::from_utf8(req.body.clone()).unwrap();
        assert!(text.contains(r#""temperature":0.70"#), "number bytes kept: {text}");
        assert!(text.contains(r#""content":"hi \u00e9""#), "escapes kept: {text}");
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            v,
            json!({"anthropic_version": "bedrock-2023-05-31",
                   "anthropic_beta": ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
                   "max_tokens": 64, "temperature": 0.7, "metadata": {"user_id": "u"},
                   "messages": [{"role": "user", "content": "hi é"}]})
        );
    }

    #[test]
    fn members_keep_their_order_and_bytes() {
        let body = br#" {"z":1,"model":"m","stream":false,"a":[1, 2],"m":{"b":null,"a":"\u0041"}} "#;
        let req = translate_request(body, "m", &[], &allowed()).unwrap();
        assert_eq!(
            String::from_utf8(req.body).unwrap(),
            r#"{"anthropic_version":"bedrock-2023-05-31","z":1,"a":[1, 2],"m":{"b":null,"a":"\u0041"}}"#
        );
    }

    #[test]
    fn betas_merge_filter_and_vanish_when_none_are_left() {
        type Case = (&'static str, &'static str, &'static [&'static str], Option<Value>);
        let cases: &[Case] = &[
            ("no betas at all", r#"{"model":"m"}"#, &[], None),
            ("only refused betas", r#"{"model":"m"}"#, &["claude-code-20250219"], None),
            (
                "empty items and repeats",
                r#"{"model":"m"}"#,
                &[",, context-1m-2025-08-07,context-1m-2025-08-07,"],
                Some(json!(["context-1m-2025-08-07"])),
            ),
            (
                "body betas first, then headers, deduplicated",
                r#"{"model":"m","anthropic_beta":["fine-grained-tool-streaming-2025-05-14","x"]}"#,
                &["fine-grained-tool-streaming-2025-05-14", "interleaved-thinking-2025-05-14"],
                Some(json!(["fine-grained-tool-streaming-2025-05-14", "interleaved-thinking-2025-05-14"])),
            ),
            ("client anthropic_version replaced", r#"{"anthropic_version":"2023-06-01","stream":false}"#, &[], None),
        ];
        for (name, body, headers, want) in cases {
            let req = translate_request(body.as_bytes(), "anthropic.claude-3-haiku-20240307-v1:0", headers, &allowed())
                .unwrap();
            assert!(!req.stream, "{name}");
            assert!(req.path.ends_with("/invoke"), "{name}");
            let v: Value = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(v.get("anthropic_beta"), want.as_ref(), "{name}");
            assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION, "{name}");
            assert!(v.get("model").is_none() && v.get("stream").is_none(), "{name}");
        }
    }

    #[test]
    fn refuses_bodies_bedrock_cannot_take() {
        let cases: &[(&str, &str, &str)] = &[
            ("array", "[1]", "gateway: request body is not valid JSON: expected a JSON object"),
            (
                "truncated",
                r#"{"model":"m""#,
                "gateway: request body is not valid JSON: EOF while parsing an object at line 1 column 12",
            ),
            ("stream not a bool", r#"{"stream":"yes"}"#, "gateway: `stream` must be a boolean"),
            ("beta not a list", r#"{"anthropic_beta":"x"}"#, "gateway: `anthropic_beta` must be an array of strings"),
            (
                "repeated key",
                r#"{"stream":false,"max_tokens":1,"stream":true}"#,
                "gateway: request body is not valid JSON: duplicate field `stream` at line 1 column 39",
            ),
        ];
        for (name, body, want) in cases {
            let err = translate_request(body.as_bytes(), "m", &[], &allowed()).unwrap_err();
            let reply = crate::reply::ToReply::to_reply(&err);
            assert_eq!(reply.status, 400, "{name}");
            let v: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(v["error"]["message"], *want, "{name}");
        }
    }

    #[test]
    fn many_members_and_betas_are_checked_for_repeats_in_one_pass() {
        // 100,000 members (a quadratic search would compare 5e9 pairs) and as many betas.
        let members: String = (0..100_000).map(|i| format!(r#","k{i}":0"#)).collect();
        let betas: Vec<String> = (0..100_000).map(|i| format!(r#""b{}""#, i % 50_000)).collect();
        let body = format!(r#"{{"model":"m","anthropic_beta":[{}]{members}}}"#, betas.join(","));
        let req = translate_request(body.as_bytes(), "m", &[], &allowed()).unwrap();
        assert_eq!(req.dropped_betas.len(), 50_000, "each repeated beta once");
        let repeated = format!(r#"{{"model":"m"{members},"k99999":1}}"#);
        let err = translate_request(repeated.as_bytes(), "m", &[], &allowed()).unwrap_err();
        let reply = crate::reply::ToReply::to_reply(&err);
        assert!(String::from_utf8_lossy(&reply.body).contains("duplicate field `k99999`"));
    }

    #[test]
    fn a_repeated_member_of_any_length_is_named_shortened() {
        // The answer and the refusal's log line repeat the name: a megabyte each, otherwise.
        let key = "k".repeat(1 << 20);
        let body = format!(r#"{{"model":"m","{key}":1,"{key}":2}}"#);
        let err = translate_request(body.as_bytes(), "m", &[], &allowed()).unwrap_err();
        let reply = crate::reply::ToReply::to_reply(&err);
        assert_eq!(reply.status, 400);
        assert!(reply.body.len() < 600, "{} bytes", reply.body.len());
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("duplicate field `{}…`", "k".repeat(100))), "{message}");
    }

    #[test]
    fn classifies_answers() {
        let cases = [
            (200, Some("application/vnd.amazon.eventstream"), ResponseKind::Stream),
            (200, Some("Application/VND.amazon.eventstream; charset=x"), ResponseKind::Stream),
            (200, Some("application/json"), ResponseKind::Json),
            (200, None, ResponseKind::Json),
            (400, Some("application/json"), ResponseKind::Error),
            (503, Some("application/vnd.amazon.eventstream"), ResponseKind::Error),
        ];
        for (status, ct, want) in cases {
            assert_eq!(ResponseKind::of(status, ct), want, "{status} {ct:?}");
        }
    }

    #[test]
    fn errors_become_anthropic_errors_with_the_same_status() {
        type Case = (&'static str, u32, Option<&'static str>, &'static str, &'static str, &'static str);
        let cases: &[Case] = &[
            (
                "invalid beta",
                400,
                Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                r#"{"message":"invalid beta flag"}"#,
                "invalid_request_error",
                "bedrock ValidationException: invalid beta flag",
            ),
            (
                "bad signature",
                403,
                Some("InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"),
                r#"{"message":"The request signature we calculated does not match the signature you provided."}"#,
                "permission_error",
                "bedrock InvalidSignatureException: The request signature we calculated does not match the signature you provided.",
            ),
            ("throttled", 429, Some("ThrottlingException"), r#"{"message":"Too many requests"}"#, "rate_limit_error", "bedrock ThrottlingException: Too many requests"),
            ("capitalised Message, type in body", 404, None, r#"{"__type":"com.amazon.coral.service#ResourceNotFoundException","Message":"no model"}"#, "not_found_error", "bedrock ResourceNotFoundException: no model"),
            ("unknown type, by status", 503, Some("SomethingNewException"), r#"{"message":"busy"}"#, "overloaded_error", "bedrock SomethingNewException: busy"),
            ("not JSON", 502, None, "<html>bad gateway</html>", "api_error", "gateway: no answer from Bedrock; the proxy on the way answered HTTP 502 (<html>bad gateway</html>)"),
            ("model error", 424, Some("ModelErrorException"), r#"{"message":"The model returned an error"}"#, "api_error", "bedrock ModelErrorException: The model returned an error"),
        ];
        for (name, status, header, body, kind, message) in cases {
            let reply = translate_error(*status, *header, body.as_bytes(), &SentCredentials::default());
            assert_eq!(reply.status, *status, "{name}");
            let v: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(v, json!({"type": "error", "error": {"type": kind, "message": message}}), "{name}");
        }
    }
    /// The proxy's own error reply on a Bedrock route (no healthy upstream, a timeout), already in
    /// Anthropic's shape, passes as it is: Bedrock never answered it.
    #[test]
    fn the_proxys_own_error_reply_is_not_blamed_on_bedrock() {
        let own = r#"{"type":"error","error":{"type":"api_error","message":"gateway: the AI provider could not be reached (504)"}}"#;
        let reply = translate_error(504, None, own.as_bytes(), &SentCredentials::default());
        assert_eq!(reply.status, 504);
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(own).unwrap());
        // With an AWS error type it is Bedrock's, whatever its shape.
        let reply =
            translate_error(503, Some("ServiceUnavailableException"), own.as_bytes(), &SentCredentials::default());
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().starts_with("bedrock ServiceUnavailableException"), "{v}");
        // Envoy's plain-text reply is named for what it is.
        let v: Value = serde_json::from_slice(
            &translate_error(503, None, b"no healthy upstream", &SentCredentials::default()).body,
        )
        .unwrap();
        assert_eq!(
            v["error"]["message"],
            "gateway: no answer from Bedrock; the proxy on the way answered HTTP 503 (no healthy upstream)"
        );
        // A page that echoes the request's headers does not carry its secrets on.
        let echo = b"bad gateway; x-amz-security-token: IQoJb3JpZ2luX2VjEXAMPLETOKENabcdefghijklmnop0123456789";
        let v: Value =
            serde_json::from_slice(&translate_error(502, None, echo, &SentCredentials::default()).body).unwrap();
        assert!(!v["error"]["message"].as_str().unwrap().contains("IQoJb3JpZ2luX2Vj"), "{v}");
        // Nor does one in JSON with a `message` (no AWS error type: not Bedrock's words).
        let json = serde_json::to_vec(&serde_json::json!({"message": String::from_utf8_lossy(echo)})).unwrap();
        let v: Value =
            serde_json::from_slice(&translate_error(502, None, &json, &SentCredentials::default()).body).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("bedrock: bad gateway") && !message.contains("IQoJb3JpZ2luX2Vj"), "{v}");
    }

    /// A spent account quota is a 400 from Bedrock that AWS says to resubmit later: a 429.
    #[test]
    fn a_spent_service_quota_is_a_429() {
        let reply = translate_error(
            400,
            Some("ServiceQuotaExceededException:http://internal.amazon.com/"),
            br#"{"message":"quota"}"#,
            &SentCredentials::default(),
        );
        assert_eq!(reply.status, 429);
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(
            translate_error(400, Some("ValidationException"), br#"{"message":"bad"}"#, &SentCredentials::default())
                .status,
            400
        );
    }

    /// Nothing the gateway sent comes back in a quote, not even in an error AWS typed (whose
    /// message is otherwise quoted as it is), and a type that is not a word is not quoted.
    #[test]
    fn the_gateways_credentials_are_never_quoted_back() {
        let token = "IQoJb3JpZ2luX2VjEXAMPLETOKENabcdefghijklmnop0123456789";
        // What a Bedrock target sends (`config::Target::sent`): its access key id and session token.
        let sent = SentCredentials::new(["AKIAIOSFODNN7EXAMPLE", token]);
        let split: String = token.chars().flat_map(|c| [c, '\u{200b}']).collect();
        for (header, body) in [
            (Some("UnrecognizedClientException"), format!(r#"{{"message":"token {token} is invalid"}}"#)),
            (Some("UnrecognizedClientException"), serde_json::json!({"message": format!("token {split}")}).to_string()),
            (Some("UnrecognizedClientException"), r#"{"message":"key AKIAIOSFODNN7EXAMPLE unknown"}"#.to_owned()),
            (Some(token), r#"{"message":"no"}"#.to_owned()),
        ] {
            let reply = translate_error(403, header, body.as_bytes(), &sent);
            let text = String::from_utf8(reply.body).unwrap();
            assert!(!text.contains("IQoJb3JpZ2lu") && !text.contains("AKIAIOSFODNN7"), "{text}");
        }
        // AWS's explanation of a signature that does not match quotes the canonical request, the
        // session token in it: the token goes, the explanation stays.
        let canonical = serde_json::json!({"message": format!(
            "The request signature we calculated does not match the signature you provided. The Canonical String \
             for this request should have been 'POST\n/model/x/invoke\n\nx-amz-security-token:{token}\n'")});
        let text = String::from_utf8(
            translate_error(403, Some("InvalidSignatureException"), canonical.to_string().as_bytes(), &sent).body,
        )
        .unwrap();
        assert!(text.contains("does not match the signature you provided") && !text.contains("IQoJb3JpZ2lu"), "{text}");
        // What AWS says of a signature that does not match (the request's scope) stays readable.
        let said = r#"{"message":"Credential should be scoped to a valid region, not 20261202/us-east-1/bedrock"}"#;
        let text =
            String::from_utf8(translate_error(403, Some("InvalidSignatureException"), said.as_bytes(), &sent).body)
                .unwrap();
        assert!(text.contains("not 20261202/us-east-1/bedrock"), "{text}");
    }
}
