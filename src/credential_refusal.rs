//! The provider refusing the gateway's own credential: Anthropic answering 401 or 403 to the
//! gateway's API key (revoked, mistyped, an organization disabled or without access). The
//! person can do nothing about it, yet Claude Code answers a 401 or 403 by re-running its
//! sign-in helper and retrying for minutes. So the answer becomes a `502 api_error` with
//! `x-should-retry: false`, shown at once and saying what the provider said, as the Bedrock path
//! does for AWS credentials (with these headers); the operator gets a warning.

use serde::Deserialize;

use crate::answer_end::AnswerEnd;
use crate::reply::Reply;

/// The most of the provider's answer kept to quote from.
const MAX_BODY: usize = 4096;

/// One refusal being replaced.
#[derive(Debug)]
pub struct CredentialRefusal {
    status: u32,
    /// The provider's answer so far (up to [`MAX_BODY`]).
    body: Vec<u8>,
    /// Where the answer ends: a host that does not mark the end of such an answer (ngx) still
    /// gets the replacement.
    end: AnswerEnd,
    /// What the gateway sent, never quoted.
    sent: SentCredentials,
}

/// The answer headers removed when the filter replaces an answer's body: its length and its
/// encoding (the replacement is plain JSON, whatever the upstream compressed).
pub fn replaced_body_removes() -> Vec<String> {
    vec!["content-length".to_owned(), "content-encoding".to_owned()]
}

impl CredentialRefusal {
    /// Whether an answer with `status` is the provider refusing the gateway's credential.
    pub fn is_refusal(status: Option<u32>) -> bool {
        matches!(status, Some(401 | 403))
    }

    /// `Some` when an answer with `status` is the provider refusing the gateway's credential
    /// (`sent`: what the gateway sent, never quoted back).
    pub fn of(status: Option<u32>, content_length: Option<u64>, sent: &SentCredentials) -> Option<CredentialRefusal> {
        let status = status.filter(|_| Self::is_refusal(status))?;
        Some(CredentialRefusal { status, body: Vec::new(), end: AnswerEnd::new(content_length), sent: sent.clone() })
    }

    /// The status the client gets.
    pub const STATUS: u32 = 502;

    /// Response headers to set, and to remove (the replacement has another length and is not
    /// encoded).
    pub fn headers() -> (Vec<(String, String)>, Vec<String>) {
        let set = [(":status", "502"), ("content-type", "application/json"), ("x-should-retry", "false")];
        (set.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec(), replaced_body_removes())
    }

    /// Takes a chunk of the provider's answer; returns what the client gets instead: nothing
    /// until the answer ends, then the whole 502, once.
    pub fn on_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        if self.end.is_whole() {
            return Vec::new();
        }
        let room = MAX_BODY.saturating_sub(self.body.len());
        self.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if !self.end.ends_at(chunk.len(), end_of_stream) {
            return Vec::new();
        }
        Reply::error(Self::STATUS, "provider_credentials", "api_error", &self.message()).body
    }

    /// What the provider said, as a sentence: its error type and message when its answer is
    /// Anthropic's error shape (nothing else is quoted, so no other text of it is shown).
    fn said(&self) -> String {
        self.quoted(false)
    }

    /// [`Self::said`]; `for_client` with the header name `x-api-key` written `API key`: Claude
    /// Code shows any error message naming `x-api-key` as "Invalid API key · Fix external API
    /// key", which would send the person to fix a key they do not have.
    fn quoted(&self, for_client: bool) -> String {
        #[derive(Deserialize)]
        struct Answer {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            #[serde(rename = "type")]
            kind: String,
            message: String,
        }
        match serde_json::from_slice::<Answer>(&self.body) {
            Ok(Answer { error }) => {
                let mut message = shown(&error.message, 300, &self.sent);
                if for_client {
                    message = without_api_key_header(&message);
                }
                match shown_type(&error.kind) {
                    Some(kind) => format!("{} {kind}: {message}", self.status),
                    None => format!("{}: {message}", self.status),
                }
            }
            Err(_) => self.status.to_string(),
        }
    }

    fn message(&self) -> String {
        format!(
            "gateway: the AI provider refused the gateway's own credentials ({}). This is on the gateway's side; \
             signing in again or retrying will not change it: tell your administrator",
            self.quoted(true)
        )
    }

    /// The operator's log line, once the answer ended.
    pub fn warning(&self) -> String {
        format!("the provider refused the gateway's API key ({}); check the target's key", self.said())
    }
}

/// `text` with every `x-api-key` (in any case) written `API key`.
fn without_api_key_header(text: &str) -> String {
    const NAME: &str = "x-api-key";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // ASCII lowercasing keeps every byte where it is, so positions found in it hold in `rest`.
    while let Some(at) = rest.to_ascii_lowercase().find(NAME) {
        out.push_str(&rest[..at]);
        out.push_str("API key");
        rest = &rest[at + NAME.len()..];
    }
    out.push_str(rest);
    out
}

/// `text` as it may be shown to the client and the log: [`trusted`] (no control or invisible
/// characters, no credential the gateway sent), then [`without_secrets`] (in this order, so that
/// such characters cannot split a key into runs too short to be redacted and be dropped
/// afterwards), at most `max` characters.
pub fn shown(text: &str, max: usize, sent: &SentCredentials) -> String {
    without_secrets(&trusted(text, sent)).chars().take(max).collect()
}

/// `text` from a provider trusted to write no secret in it (AWS's own error messages, which
/// name model ids and ARNs that [`without_secrets`] would take for keys): no control or
/// invisible characters; a credential the gateway sent, quoted as sent, `[redacted]`; and only a
/// note when a part of one is still there (split up or altered).
pub fn trusted(text: &str, sent: &SentCredentials) -> String {
    let mut visible: String = text.chars().filter(|&c| !invisible(c)).collect();
    if sent.in_text(&visible) {
        // Quoted as it was sent (AWS's canonical request quotes the session token): that part
        // goes and the rest stays readable; split up or altered, the whole text goes.
        visible = sent.0.iter().fold(visible, |text, c| text.replace(c.as_str(), "[redacted]"));
        if sent.in_text(&visible) {
            return "[the answer quoted the gateway's own credential and is not shown]".to_owned();
        }
    }
    visible
}

/// Control characters and the invisible ones that can sit inside a word (zero-width spaces and
/// joiners, direction marks, the soft hyphen, the byte order mark).
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// An error type as it may be quoted: a word of letters and `_` (every type Anthropic and AWS
/// name), anything else (a key echoed as the type, say) left out.
pub fn shown_type(kind: &str) -> Option<&str> {
    let word = !kind.is_empty() && kind.len() <= 64 && kind.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
    word.then_some(kind)
}

/// The credentials a target sends upstream (the provider key; for Bedrock the access key id and
/// the session token), so that no answer hands them to the client: the upstream, or a proxy on
/// its way, may echo what it was sent. Made once per target when the configuration loads.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct SentCredentials(Vec<String>);

impl std::fmt::Debug for SentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SentCredentials(<{} redacted>)", self.0.len())
    }
}

/// Shortest part of a credential taken for the credential in a quoted text.
const CREDENTIAL_PART: usize = 16;

/// A target that sends no credential the filter knows of.
pub static NOTHING_SENT: SentCredentials = SentCredentials(Vec::new());

impl SentCredentials {
    /// The credentials among `values`. A short value (a placeholder key in a test setup) would
    /// match ordinary words and header values; a real key, access key id or session token is far
    /// longer, so it is not looked for.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> SentCredentials {
        SentCredentials(values.into_iter().filter(|v| v.len() >= CREDENTIAL_PART).map(str::to_owned).collect())
    }

    /// Whether a header `value` holds one of them as it was sent (an echo).
    pub fn in_value(&self, value: &str) -> bool {
        self.0.iter().any(|c| value.len() >= c.len() && value.contains(c.as_str()))
    }

    /// Whether `text` holds a part of one of them ([`CREDENTIAL_PART`] letters and digits in a
    /// row, in any case), with whatever between the characters: a quote must not give the
    /// credential away in pieces. Made only for quoted errors, not on every answer.
    pub fn in_text(&self, text: &str) -> bool {
        let letters =
            |s: &str| s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect::<String>();
        let text = letters(text);
        self.0.iter().map(|c| letters(c)).any(|c| {
            c.as_bytes().windows(CREDENTIAL_PART).any(|part| {
                // `part` is ASCII, so it is a str.
                std::str::from_utf8(part).is_ok_and(|part| text.contains(part))
            })
        })
    }
}

/// Shortest run of key-like characters (letters, digits, `-_+/=`) that is taken for a secret
/// when it holds a digit.
const SECRET_RUN: usize = 16;

/// `text` with every run that looks like a key, token or signature (at least [`SECRET_RUN`]
/// letters, digits and `-_+/=`, among them a digit) replaced by `[redacted]`: a provider's
/// error is quoted to the client and the log, and an upstream that echoes the credential it was
/// sent (a key, an access key id, a session token) must not pass it on. Words stay readable.
pub fn without_secrets(text: &str) -> String {
    let key_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(key_like) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let end = from.find(|c: char| !key_like(c)).unwrap_or(from.len());
        let (run, after) = from.split_at(end);
        if run.len() >= SECRET_RUN && run.bytes().any(|b| b.is_ascii_digit()) && !is_timestamp(run) {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `20261202T101500Z`, the basic ISO 8601 time AWS writes (in a signature refused for its time).
fn is_timestamp(run: &str) -> bool {
    let b = run.as_bytes();
    b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_like_runs_are_redacted_and_words_kept() {
        let cases = [
            ("invalid x-api-key", "invalid x-api-key"),
            ("invalid x-api-key: sk-ant-api03-AbCdEf0123456789_xyz-QQ", "invalid x-api-key: [redacted]"),
            ("key AKIAIOSFODNN7EXAMPLE is not valid.", "key [redacted] is not valid."),
            ("token: IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJH+abc=,", "token: [redacted],"),
            (
                "InvalidSignatureException: The request signature we calculated does not match",
                "InvalidSignatureException: The request signature we calculated does not match",
            ),
            ("organization_disabled_2024", "[redacted]"),
            ("short 0123456789abcde é done", "short 0123456789abcde é done"),
            ("at 20261202T101500Z, not 20261202T101500Zx", "at 20261202T101500Z, not [redacted]"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(without_secrets(text), want, "{text}");
        }
    }

    const REVOKED: &[u8] = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;

    #[test]
    fn the_header_name_is_never_quoted_to_the_client() {
        for (text, want) in [
            ("invalid x-api-key", "invalid API key"),
            ("X-Api-Key missing; x-API-key bad", "API key missing; API key bad"),
            ("no key here", "no key here"),
            ("x-api-ke", "x-api-ke"),
            ("é x-api-key é", "é API key é"),
        ] {
            assert_eq!(without_api_key_header(text), want, "{text}");
        }
    }

    #[test]
    fn only_401_and_403_are_the_gateways_credentials() {
        for status in [200, 400, 404, 429, 500, 529] {
            assert!(CredentialRefusal::of(Some(status), None, &SentCredentials::default()).is_none(), "{status}");
        }
        assert!(CredentialRefusal::of(None, None, &SentCredentials::default()).is_none());
        assert!(CredentialRefusal::of(Some(401), None, &SentCredentials::default()).is_some());
        assert!(CredentialRefusal::of(Some(403), None, &SentCredentials::default()).is_some());
    }

    #[test]
    fn the_answer_is_replaced_once_at_its_end_by_a_502_quoting_the_provider() {
        for split in 0..=REVOKED.len() {
            let mut r = CredentialRefusal::of(Some(401), None, &SentCredentials::default()).unwrap();
            assert!(r.on_body(&REVOKED[..split], false).is_empty(), "held until the end");
            let body = r.on_body(&REVOKED[split..], true);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "api_error");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains("401 authentication_error: invalid API key"), "{message}");
            assert!(!message.to_ascii_lowercase().contains("x-api-key"), "Claude Code would hide it: {message}");
            assert!(message.contains("tell your administrator"), "{message}");
            assert!(r.on_body(b"", true).is_empty(), "once");
            assert!(r.warning().contains("401 authentication_error: invalid x-api-key"));
        }
    }

    #[test]
    fn a_host_that_never_marks_the_end_gets_it_by_the_announced_length() {
        let mut r = CredentialRefusal::of(Some(403), Some(REVOKED.len() as u64), &SentCredentials::default()).unwrap();
        assert!(r.on_body(&REVOKED[..10], false).is_empty());
        assert!(!r.on_body(&REVOKED[10..], false).is_empty(), "complete by length");
        assert!(r.on_body(b"", true).is_empty(), "not twice");
    }

    #[test]
    fn an_answer_in_another_shape_is_not_quoted() {
        let mut r = CredentialRefusal::of(Some(403), None, &SentCredentials::default()).unwrap();
        let body = r.on_body(b"<html>forbidden: secret-ish text</html>", true);
        let text = String::from_utf8(body).unwrap();
        assert!(!text.contains("secret-ish"), "{text}");
        assert!(text.contains("(403)"), "{text}");
    }

    /// An upstream that echoes the key it was sent does not get it to the client or the log:
    /// not as the error's type, not split by characters stripped afterwards, not in pieces.
    #[test]
    fn the_key_sent_is_never_quoted_back() {
        let key = "sk-ant-test-upstream-key-7f3a9c";
        let sent = SentCredentials::new([key]);
        let split = |by: &str| {
            key.as_bytes().chunks(6).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(by)
        };
        let answers = [
            serde_json::json!({"type": "error", "error": {"type": key, "message": "nope"}}),
            serde_json::json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid key {}", split("\u{1}"))}}),
            serde_json::json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid key {}", split("\u{200b}"))}}),
            serde_json::json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid key {}", split(" "))}}),
            serde_json::json!({"type": "error", "error": {"type": "authentication_error", "message": format!("key {key}")}}),
        ];
        let squeezed = |t: &str| t.chars().filter(char::is_ascii_alphanumeric).collect::<String>();
        for answer in answers {
            let mut r = CredentialRefusal::of(Some(401), None, &sent).unwrap();
            let body = String::from_utf8(r.on_body(answer.to_string().as_bytes(), true)).unwrap();
            for text in [body, r.warning()] {
                assert!(!squeezed(&text).contains("upstreamkey7f3a9c"), "{answer}: {text}");
                assert!(text.contains("401"), "{text}");
            }
        }
        // A key quoted whole goes, and the sentence stays.
        let mut r = CredentialRefusal::of(Some(401), None, &sent).unwrap();
        let whole = serde_json::json!({"type": "error", "error": {"type": "authentication_error", "message": format!("key {key} was revoked")}});
        let body = String::from_utf8(r.on_body(whole.to_string().as_bytes(), true)).unwrap();
        assert!(body.contains("key [redacted] was revoked"), "{body}");
        // A placeholder key too short to be told from words is no credential to look for.
        let short = SentCredentials::new(["x"]);
        assert!(!short.in_value("text/event-stream") && !short.in_text("x"));
        // What the provider says without the key is still quoted.
        let mut r = CredentialRefusal::of(Some(401), None, &sent).unwrap();
        let body = String::from_utf8(r.on_body(REVOKED, true)).unwrap();
        assert!(body.contains("401 authentication_error: invalid API key"), "{body}");
    }
}
