//! The request Bedrock receives for one admitted Messages request: translated body, path,
//! endpoint and the SigV4 signature over exactly those bytes.

use super::{host, sign, translate_request, BedrockError, SignInput};
use crate::config::BedrockTarget;

/// Everything that changes on the way to Bedrock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The translated body.
    pub body: Vec<u8>,
    /// Headers to set, `:path` and `:authority` included (the signature covers them).
    pub set_headers: Vec<(String, String)>,
    /// Client headers Bedrock must not see (or that the translation moved into the body).
    pub remove_headers: Vec<String>,
    /// Whether the answer is an event stream to translate back to SSE.
    pub stream: bool,
}

/// Translates and signs a request for `target`, at `now` (seconds since the epoch).
pub fn prepare(
    target: &BedrockTarget,
    model_id: &str,
    body: &[u8],
    beta_headers: &[&str],
    now: u64,
) -> Result<Outgoing, BedrockError> {
    let request = translate_request(body, model_id, beta_headers, &target.betas)?;
    let authority = host(&target.region);
    let content_type = "application/json";
    let signed_headers = [("content-type", content_type), ("accept", request.accept)];
    let input = SignInput {
        method: "POST",
        host: &authority,
        path: &request.path,
        headers: &signed_headers,
        body: &request.body,
    };
    let signature = sign(&input, &target.credentials, &target.region, now);
    let mut set_headers = vec![
        (":path".to_owned(), request.path.clone()),
        (":authority".to_owned(), authority.clone()),
        ("content-type".to_owned(), content_type.to_owned()),
        ("accept".to_owned(), request.accept.to_owned()),
    ];
    set_headers.extend(signature);
    let mut remove_headers: Vec<String> =
        ["x-api-key", "anthropic-beta", "anthropic-version"].iter().map(|h| (*h).to_owned()).collect();
    if target.credentials.session_token.is_none() {
        remove_headers.push("x-amz-security-token".to_owned());
    }
    Ok(Outgoing { body: request.body, set_headers, remove_headers, stream: request.stream })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bedrock::Credentials;

    #[test]
    fn the_signature_covers_what_is_sent() {
        let target = BedrockTarget {
            region: "us-east-1".into(),
            credentials: Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
            betas: vec!["interleaved-thinking-2025-05-14".into()],
        };
        let body = br#"{"model":"claude-sonnet-4-6","stream":true,"max_tokens":5,"messages":[]}"#;
        let out = prepare(
            &target,
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            body,
            &["claude-code-20250219,interleaved-thinking-2025-05-14"],
            1_764_427_923,
        )
        .unwrap();
        let get = |n: &str| out.set_headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get(":path"),
            Some("/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke-with-response-stream")
        );
        assert_eq!(get(":authority"), Some("bedrock-runtime.us-east-1.amazonaws.com"));
        assert_eq!(get("x-amz-date"), Some("20251129T145203Z"));
        assert!(get("authorization").is_some_and(
            |a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251129/us-east-1/bedrock/aws4_request")
        ));
        assert!(out.stream);
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(v["anthropic_beta"], serde_json::json!(["interleaved-thinking-2025-05-14"]));
        assert!(v.get("model").is_none() && v.get("stream").is_none());
        assert!(out.remove_headers.contains(&"x-api-key".to_owned()));
    }
}
