//! One Bedrock answer on its way back to the client: an event stream becomes Anthropic SSE chunk
//! by chunk, an error body becomes an Anthropic error with the same status, a JSON message
//! passes as it is.

use super::{translate_error, BedrockStreamTranslator, ResponseKind};
use crate::credential_refusal::{
    replaced_body_removes, shown, shown_type, trusted, CredentialRefusal, SentCredentials,
};
use crate::usage::ReportedUsage;

/// What to do with a chunk of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Send it as it is.
    Pass,
    /// Send these bytes in its place (possibly none: a partial frame, or an error body that is
    /// replaced whole at its end, is kept here until then).
    Replace(Vec<u8>),
}

/// The translation state of one answer.
#[derive(Debug, Default)]
pub struct Answer {
    kind: Option<ResponseKind>,
    status: u32,
    error_type: Option<String>,
    stream: BedrockStreamTranslator,
    error_body: Vec<u8>,
    /// Whether the answer is Bedrock refusing the gateway's own AWS credentials (a 401 or 403,
    /// sent on as a 502: a 502 of its own is not that).
    credentials_refused: bool,
    /// For the operator, once Bedrock has refused the gateway's own AWS credentials.
    warning: Option<String>,
    /// What the gateway sent Bedrock, never quoted back.
    sent: std::sync::Arc<SentCredentials>,
}

/// Largest Bedrock error body kept (they are a short JSON message).
const MAX_ERROR_BODY: usize = 64 * 1024;

impl Answer {
    /// The answer to a request the gateway sent with `sent`.
    pub fn new(sent: std::sync::Arc<SentCredentials>) -> Answer {
        Answer { sent, ..Answer::default() }
    }

    /// The answer's headers arrived: returns the headers to set and to remove, and the content
    /// type the usage meter should read the (translated) body as.
    pub fn on_headers(
        &mut self,
        status: u32,
        content_type: &str,
        error_type: Option<&str>,
    ) -> (Vec<(String, String)>, Vec<String>, &'static str) {
        let kind = ResponseKind::of(status, Some(content_type));
        self.kind = Some(kind);
        self.status = status;
        self.error_type = error_type.map(str::to_owned);
        // A translated or replaced body has another length, and is not encoded.
        let length = replaced_body_removes();
        match kind {
            ResponseKind::Stream => {
                (vec![("content-type".to_owned(), "text/event-stream".to_owned())], length, "text/event-stream")
            }
            ResponseKind::Json => (Vec::new(), Vec::new(), "application/json"),
            // Bedrock refusing the gateway's own AWS credentials is the gateway's fault, not the
            // person's: a 401/403 would make Claude Code re-run its sign-in helper and retry for
            // minutes, so it becomes a 502 that is shown at once.
            ResponseKind::Error if CredentialRefusal::is_refusal(Some(status)) => {
                self.status = CredentialRefusal::STATUS;
                self.credentials_refused = true;
                let (set, remove) = CredentialRefusal::headers();
                (set, remove, "application/json")
            }
            ResponseKind::Error => {
                let mut set = vec![("content-type".to_owned(), "application/json".to_owned())];
                // A rate-limit error goes as a 429 whatever Bedrock said (its spent quota is a 400).
                let sent = super::translate::client_status(error_type.map(super::translate::short_type), status);
                if sent != status {
                    set.push((":status".to_owned(), sent.to_string()));
                    self.status = sent;
                }
                (set, length, "application/json")
            }
        }
    }

    /// A chunk of the answer (`end`: the last one).
    pub fn on_body(&mut self, chunk: &[u8], end: bool) -> Chunk {
        match self.kind {
            Some(ResponseKind::Stream) => {
                let mut out = self.stream.push(chunk);
                if end {
                    out.extend(self.stream.finish());
                }
                Chunk::Replace(out)
            }
            Some(ResponseKind::Error) => {
                let room = MAX_ERROR_BODY.saturating_sub(self.error_body.len());
                self.error_body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if !end {
                    // Nothing is held by the host (whose buffering differs between hosts): the
                    // chunk is sent as nothing, and the whole translated error goes at the end.
                    return Chunk::Replace(Vec::new());
                }
                let reply = translate_error(self.status, self.error_type.as_deref(), &self.error_body, &self.sent);
                if self.credentials_refused {
                    // AWS's message (`{"message": ...}`), or the body when it is not in that shape.
                    let text = serde_json::from_slice::<serde_json::Value>(&self.error_body)
                        .ok()
                        .and_then(|v| {
                            v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()).map(str::to_owned)
                        })
                        .unwrap_or_else(|| String::from_utf8_lossy(&self.error_body).into_owned());
                    // AWS's own words (it named the error's type) are not taken for keys; a
                    // proxy's are.
                    let said = match self.error_type {
                        Some(_) => trusted(&text, &self.sent).chars().take(300).collect(),
                        None => shown(&text, 300, &self.sent),
                    };
                    let kind = self
                        .error_type
                        .as_deref()
                        .map(super::translate::short_type)
                        .and_then(shown_type)
                        .unwrap_or("no error type");
                    // A signature refused for its time is the gateway host's clock, not its credentials.
                    let clock = ["Signature expired", "Signature not yet current"].iter().any(|t| text.contains(t));
                    let message = if clock {
                        self.warning = Some(format!(
                            "Bedrock refused the gateway's signature for its time ({kind}: {said}): the gateway host's \
                             clock is more than 5 minutes off; check its time synchronisation (NTP)"
                        ));
                        "gateway: Bedrock refused the gateway's request: the gateway's clock is off. This is on the \
                         gateway's side; retrying will not help: tell your administrator"
                            .to_owned()
                    } else {
                        // Temporary credentials (a session token) expire and are read only when the
                        // configuration loads: the operator must hear of it at once.
                        self.warning = Some(format!(
                            "Bedrock refused the gateway's AWS credentials ({kind}: {said}); check the target's \
                             credentials (temporary ones must be replaced, and the proxy restarted, before they expire)"
                        ));
                        // AWS's words name the account and the IAM role: the operator's, not everyone's.
                        format!(
                            "gateway: Bedrock refused the gateway's AWS credentials ({kind}); retrying will not help: tell your \
                             administrator"
                        )
                    };
                    return Chunk::Replace(
                        crate::reply::Reply::error(502, "bedrock_credentials", "api_error", &message).body,
                    );
                }
                Chunk::Replace(reply.body)
            }
            Some(ResponseKind::Json) | None => Chunk::Pass,
        }
    }

    /// What the operator must hear, once the answer has shown it: Bedrock refused the gateway's
    /// own credentials. Taken once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// Token counts Bedrock reported in `amazon-bedrock-invocationMetrics` (what AWS bills).
    pub fn metrics(&self) -> Option<ReportedUsage> {
        self.stream.metrics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_held_then_replaced_in_anthropic_shape() {
        let mut a = Answer::default();
        let (set, remove, meter) = a.on_headers(429, "application/json", Some("ThrottlingException:http://x"));
        assert_eq!(
            (set[0].1.as_str(), remove, meter),
            ("application/json", vec!["content-length".to_owned(), "content-encoding".to_owned()], "application/json")
        );
        assert_eq!(a.on_body(br#"{"message":"Too many"#, false), Chunk::Replace(Vec::new()));
        let Chunk::Replace(body) = a.on_body(br#" requests"}"#, true) else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert!(v["error"]["message"].as_str().unwrap().contains("Too many requests"), "{v}");
    }

    /// Bedrock refusing the gateway's own credentials (an expired session token) is a 502 for the
    /// person and a warning, naming the error type, for the operator, once.
    #[test]
    fn refused_credentials_warn_the_operator_once() {
        let mut a = Answer::default();
        a.on_headers(403, "application/json", Some("ExpiredTokenException:http://internal.amazon.com/"));
        assert_eq!(a.take_warning(), None, "nothing before the body");
        let Chunk::Replace(body) =
            a.on_body(br#"{"message":"The security token included in the request is expired"}"#, true)
        else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("(ExpiredTokenException)"), "{message}");
        let warning = a.take_warning().expect("a warning");
        assert!(warning.contains("ExpiredTokenException") && warning.contains("expire"), "{warning}");
        assert_eq!(a.take_warning(), None, "once");
        // An error that is not about the credentials warns no one.
        let mut a = Answer::default();
        a.on_headers(429, "application/json", Some("ThrottlingException"));
        a.on_body(br#"{"message":"slow down"}"#, true);
        assert_eq!(a.take_warning(), None);
    }

    /// A 502 of its own (the proxy's reply to a protocol error, an egress proxy's) is not taken
    /// for Bedrock refusing the gateway's credentials: no warning, and the proxy's words pass.
    #[test]
    fn a_502_of_its_own_is_not_refused_credentials() {
        let own = r#"{"type":"error","error":{"type":"api_error","message":"gateway: the AI provider could not be reached (502)"}}"#;
        let mut a = Answer::default();
        a.on_headers(502, "application/json", None);
        let Chunk::Replace(body) = a.on_body(own.as_bytes(), true) else { panic!() };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"]["message"],
            "gateway: the AI provider could not be reached (502)"
        );
        assert_eq!(a.take_warning(), None);
        // A refusal without an error type says so in words.
        let mut a = Answer::default();
        a.on_headers(403, "application/json", None);
        let Chunk::Replace(body) = a.on_body(br#"{"message":"denied"}"#, true) else { panic!() };
        assert!(String::from_utf8_lossy(&body).contains("(no error type)"), "{}", String::from_utf8_lossy(&body));
    }

    /// A spent service quota, a 400 from Bedrock, reaches the client as a 429 (status and body).
    #[test]
    fn a_spent_quota_is_sent_as_a_429() {
        let mut a = Answer::default();
        let (set, _, _) = a.on_headers(400, "application/json", Some("ServiceQuotaExceededException:http://x"));
        assert!(set.contains(&(":status".to_owned(), "429".to_owned())), "{set:?}");
        let Chunk::Replace(body) = a.on_body(br#"{"message":"quota"}"#, true) else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        // Other errors keep Bedrock's status.
        let mut a = Answer::default();
        let (set, _, _) = a.on_headers(400, "application/json", Some("ValidationException"));
        assert!(!set.iter().any(|(name, _)| name == ":status"), "{set:?}");
        let (set, _, _) = Answer::default().on_headers(429, "application/json", Some("ThrottlingException"));
        assert!(!set.iter().any(|(name, _)| name == ":status"), "{set:?}");
    }

    #[test]
    fn json_messages_pass() {
        let mut a = Answer::default();
        a.on_headers(200, "application/json", None);
        assert_eq!(a.on_body(b"{}", true), Chunk::Pass);
    }

    /// AWS's words for a refused credential name the account and the IAM role: they go to the
    /// operator's log, not to every developer; a signature refused for its time is said to be the
    /// gateway's clock, with AWS's timestamps left readable.
    #[test]
    fn aws_words_go_to_the_operator_and_a_clock_off_is_named() {
        let mut a = Answer::default();
        a.on_headers(403, "application/json", Some("AccessDeniedException"));
        let denied = br#"{"message":"User: arn:aws:sts::123456789012:assumed-role/gw-role/s1 is not authorized to perform: bedrock:InvokeModel"}"#;
        let Chunk::Replace(body) = a.on_body(denied, true) else { panic!() };
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains("(AccessDeniedException); retrying will not help") && !body.contains("123456789012"),
            "{body}"
        );
        let warning = a.take_warning().unwrap();
        assert!(warning.contains("arn:aws:sts::123456789012:assumed-role"), "{warning}");

        let mut a = Answer::default();
        a.on_headers(403, "application/json", Some("InvalidSignatureException"));
        let expired = br#"{"message":"Signature expired: 20261202T101500Z is now earlier than 20261202T102512Z (20261202T103012Z - 5 min.)"}"#;
        let Chunk::Replace(body) = a.on_body(expired, true) else { panic!() };
        assert!(String::from_utf8(body).unwrap().contains("the gateway's clock is off"));
        let warning = a.take_warning().unwrap();
        assert!(warning.contains("clock") && warning.contains("20261202T101500Z is now earlier"), "{warning}");
    }
}
