//! One usage record per request, read from a line of the usage log (see README.md for the
//! contract). Reading is lenient: only `time` is required; a missing or mistyped optional field
//! reads as absent, and nothing in a line can make the reader panic.

use serde_json::{Map, Value};

use crate::time;

/// Shown for a record without `sub` or `email`.
pub const UNKNOWN_PERSON: &str = "(unknown)";
/// Shown for a record without a tier, model or provider.
pub const NONE: &str = "(none)";

/// Tokens of one request, or summed over many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Tokens {
    /// `input_tokens`: uncached prompt tokens.
    pub input: u64,
    /// `output_tokens`.
    pub output: u64,
    /// `cache_write_tokens`.
    pub cache_write: u64,
    /// `cache_read_tokens`.
    pub cache_read: u64,
}

impl Tokens {
    /// All four kinds together.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output).saturating_add(self.cache_write).saturating_add(self.cache_read)
    }

    /// Adds another count, saturating rather than overflowing on absurd input.
    pub fn add(&mut self, other: &Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cache_write = self.cache_write.saturating_add(other.cache_write);
        self.cache_read = self.cache_read.saturating_add(other.cache_read);
    }
}

/// One request as the gateway logged it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// When the request finished, milliseconds since the epoch (UTC).
    pub time_ms: i64,
    /// Subject (`sub` claim); the email when the record has no `sub`.
    pub sub: String,
    /// The person's email, when known.
    pub email: Option<String>,
    /// Tier the request was admitted under.
    pub tier: String,
    /// Model alias the client asked for.
    pub model: String,
    /// Model id sent to the provider.
    pub provider_model: String,
    /// `anthropic`, `bedrock`, ...
    pub provider: String,
    /// HTTP status answered to the client (0 when the record has none).
    pub status: u16,
    /// Tokens used.
    pub tokens: Tokens,
    /// Cost in billionths of a US dollar; `None` for an unpriced model. Integers, so totals are
    /// exact and independent of summation order.
    pub cost_nanos: Option<u64>,
    /// Time to the last byte of the answer.
    pub latency_ms: Option<u64>,
    /// Time to the first byte of the answer.
    pub ttft_ms: Option<u64>,
    /// Claude Code session id.
    pub session: Option<String>,
    /// Stable reason code of a refused request.
    pub refusal: Option<String>,
    /// Server-side web searches the provider ran (`web_search_requests`; priced in `cost_usd`).
    pub web_searches: u64,
}

impl Record {
    /// Whether the gateway or provider refused the request (a refusal code or a status of 400 or more).
    pub fn refused(&self) -> bool {
        self.refusal.is_some() || self.status >= 400
    }
}

/// Why a line yielded no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Empty or whitespace only (not reported).
    Blank,
    /// Not a JSON object.
    NotJson,
    /// A JSON object without a usage record (an access-log line of a request that had none).
    NoRecord,
    /// A usage record without a valid `time`.
    BadTime,
    /// The filter's marker where the host did not write it for the filter (in text a client
    /// sent, which the host logged): no record is taken from it.
    NotFromTheFilter,
}

impl Skip {
    /// Words for the stderr summary.
    pub fn describe(self) -> &'static str {
        match self {
            Skip::Blank => "blank",
            Skip::NotJson => "not a JSON object",
            Skip::NoRecord => "no usage record",
            Skip::BadTime => "no valid time",
            Skip::NotFromTheFilter => "the usage marker in text the host did not write for the filter",
        }
    }
}

/// What the filter writes before the record in the host's own log (Envoy's or nginx's error
/// log), e.g. `[…][info][wasm] … wasm log claude_sso_gateway: claude-sso-gateway: usage {…}`.
pub const LOG_MARKER: &str = "claude-sso-gateway: usage ";

/// Where a record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A line that is JSON whole: the record, or an access-log line carrying it.
    Line,
    /// A line of the host's own log, after the filter's [`LOG_MARKER`].
    HostLog,
}

/// Reads one log line: the record itself, an access-log object carrying it under `usage` (as an
/// object or as a JSON string), or a host log line with the filter's `claude-sso-gateway: usage`
/// marker followed by the record.
pub fn parse_line(line: &str) -> Result<Record, Skip> {
    read_line(line).map(|(record, _)| record)
}

/// [`parse_line`], saying where the record was.
pub fn read_line(line: &str) -> Result<(Record, Source), Skip> {
    // A file written on Windows may start with a byte-order mark.
    let line = line.trim().trim_start_matches('\u{feff}');
    if line.is_empty() {
        return Err(Skip::Blank);
    }
    let mut source = Source::Line;
    // A line that is JSON whole is an access-log line: the marker may be inside one of its
    // values (a refused request's model is the client's), where it marks nothing.
    let outer = match serde_json::from_str::<Value>(line) {
        Ok(value) => value,
        Err(_) if line.contains(LOG_MARKER) => {
            source = Source::HostLog;
            host_log_record(line)?
        }
        Err(_) => return Err(Skip::NotJson),
    };
    let Value::Object(outer) = outer else {
        return Err(Skip::NotJson);
    };
    let record = match outer.get("usage") {
        Some(Value::Object(inner)) => from_object(inner),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(inner)) => from_object(&inner),
            _ => Err(Skip::NoRecord),
        },
        Some(_) => Err(Skip::NoRecord),
        None if looks_like_record(&outer) => from_object(&outer),
        None => Err(Skip::NoRecord),
    };
    record.map(|record| (record, source))
}

/// The record on a line of the host's own log. The marker must come right after what the host
/// writes before a Wasm filter's message (Envoy: `wasm log <plugin> <root>: `, in its default and
/// in Istio's format; nginx and Kong: `[proxy-wasm]["<filter>" #<n>] `), whatever comes before that
/// (the host's time and level, a log collector's prefix), and the record must end the line but for
/// what the host adds after a message (nginx: ` while sending to client, client: …`; Istio: a tab
/// and its fields). The marker elsewhere is text a client sent that the host logged (Envoy's
/// request headers at debug, quoted), and is no record. A host that logs client text unquoted
/// and unescaped can still be made to write a whole line that reads as a record: see
/// report/README.md on which logs to trust.
fn host_log_record(line: &str) -> Result<Value, Skip> {
    let at = line.find(LOG_MARKER).ok_or(Skip::NotJson)?;
    let (prefix, rest) = (&line[..at], &line[at + LOG_MARKER.len()..]);
    let nginx = ends_like_nginx(prefix);
    if !(prefix.is_empty() || nginx || ends_like_envoy(prefix)) {
        return Err(Skip::NotFromTheFilter);
    }
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let Some(Ok(value)) = values.next() else {
        return Err(Skip::NotJson);
    };
    let after = rest[values.byte_offset()..].trim_end();
    // nginx cuts a line at 2,048 bytes, which may fall inside its own context.
    let nginx_context = nginx && (after.starts_with(',') || after.starts_with(" while "));
    let istio_fields = prefix.contains("\twasm\twasm log") && after.starts_with('\t');
    if after.is_empty() || nginx_context || istio_fields {
        Ok(value)
    } else {
        Err(Skip::NotFromTheFilter)
    }
}

/// Whether `prefix` ends as Envoy ends the prefix of a Wasm filter's message: `wasm log: ` or
/// `wasm log <plugin> <root> <vm>: ` (the names without quotes or colons), after its `[wasm]`
/// logger name (`[…][warning][wasm] [source:line] wasm log …`) or Istio's (`…\twarning\twasm\twasm log …`).
fn ends_like_envoy(prefix: &str) -> bool {
    const LOG: &str = "wasm log";
    let Some(at) = prefix.rfind(LOG) else { return false };
    let (head, names) = (&prefix[..at], &prefix[at + LOG.len()..]);
    let names_ok = names == ": "
        || names.strip_prefix(' ').and_then(|n| n.strip_suffix(": ")).is_some_and(|n| !n.contains([':', '"', '\'']));
    names_ok && (head.contains("[wasm] ") || head.ends_with("\twasm\t"))
}

/// Whether `prefix` ends as nginx (and so Kong) ends the prefix of a proxy-wasm filter's message:
/// `[proxy-wasm]["claude_sso_gateway" #1] ` after its `[level] pid#tid: [*conn ]`.
fn ends_like_nginx(prefix: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = prefix.strip_suffix("] ") else { return false };
    let Some(at) = rest.rfind("[proxy-wasm][\"") else { return false };
    let (head, filter) = (&rest[..at], &rest[at + "[proxy-wasm][\"".len()..]);
    let Some((name, number)) = filter.split_once("\" #") else { return false };
    // `… [warn] 7#0: *5 ` or `… [warn] 7#0: ` before it.
    let head = head.trim_end();
    let head = match head.rsplit_once(' ') {
        Some((before, connection)) if connection.strip_prefix('*').is_some_and(digits) => before,
        _ => head,
    };
    let pids_ok = head
        .strip_suffix(':')
        .and_then(|h| h.rsplit_once(' '))
        .and_then(|(before, pids)| pids.split_once('#').map(|(p, t)| (before, p, t)))
        .is_some_and(|(before, p, t)| digits(p) && digits(t) && before.ends_with(']'));
    pids_ok && !name.contains(['"', ']']) && digits(number)
}

fn looks_like_record(obj: &Map<String, Value>) -> bool {
    obj.contains_key("time") && ["sub", "email", "model", "status", "tier"].iter().any(|k| obj.contains_key(*k))
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn count(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    match obj.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// Dollars to billionths of a dollar; negative, non-finite or absent costs read as unpriced.
fn cost_nanos(obj: &Map<String, Value>) -> Option<u64> {
    let usd = obj.get("cost_usd")?.as_f64()?;
    // `as` saturates for values beyond u64, which only garbage produces.
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e9).round() as u64)
}

fn from_object(obj: &Map<String, Value>) -> Result<Record, Skip> {
    let time_ms = match obj.get("time") {
        Some(Value::String(s)) => time::parse_rfc3339(s).ok_or(Skip::BadTime)?,
        _ => return Err(Skip::BadTime),
    };
    let email = text(obj, "email");
    let sub = text(obj, "sub").or_else(|| email.clone()).unwrap_or_else(|| UNKNOWN_PERSON.to_owned());
    let model = text(obj, "model").unwrap_or_else(|| NONE.to_owned());
    Ok(Record {
        time_ms,
        sub,
        email,
        tier: text(obj, "tier").unwrap_or_else(|| NONE.to_owned()),
        provider_model: text(obj, "provider_model").unwrap_or_else(|| model.clone()),
        model,
        provider: text(obj, "provider").unwrap_or_else(|| NONE.to_owned()),
        status: count(obj, "status").and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
        tokens: Tokens {
            input: count(obj, "input_tokens").unwrap_or(0),
            output: count(obj, "output_tokens").unwrap_or(0),
            cache_write: count(obj, "cache_write_tokens").unwrap_or(0),
            cache_read: count(obj, "cache_read_tokens").unwrap_or(0),
        },
        cost_nanos: cost_nanos(obj),
        latency_ms: count(obj, "latency_ms"),
        ttft_ms: count(obj, "ttft_ms"),
        session: text(obj, "session"),
        refusal: text(obj, "refusal"),
        web_searches: count(obj, "web_search_requests").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"time":"2026-11-29T14:52:03.123Z","sub":"alice","email":"alice@example.com","tier":"standard","model":"claude-sonnet-4-6","provider_model":"claude-sonnet-4-6","provider":"anthropic","status":200,"input_tokens":12,"output_tokens":340,"cache_write_tokens":0,"cache_read_tokens":2048,"cost_usd":0.005212,"latency_ms":1834,"ttft_ms":412,"session":"s-1","refusal":null}"#;

    #[test]
    fn reads_the_full_record() {
        let r = parse_line(FULL).unwrap();
        assert_eq!(r.sub, "alice");
        assert_eq!(r.email.as_deref(), Some("alice@example.com"));
        assert_eq!(
            (r.tier.as_str(), r.model.as_str(), r.provider.as_str()),
            ("standard", "claude-sonnet-4-6", "anthropic")
        );
        assert_eq!(r.tokens, Tokens { input: 12, output: 340, cache_write: 0, cache_read: 2048 });
        assert_eq!(r.tokens.total(), 2400);
        assert_eq!(r.cost_nanos, Some(5_212_000));
        assert_eq!((r.status, r.latency_ms, r.ttft_ms), (200, Some(1834), Some(412)));
        assert_eq!(r.session.as_deref(), Some("s-1"));
        assert!(!r.refused());
    }

    #[test]
    fn reads_the_record_inside_an_access_log_line() {
        let as_object = format!(r#"{{"start_time":"x","response_code":200,"usage":{FULL}}}"#);
        let as_string = serde_json::json!({"response_code": 200, "usage": FULL}).to_string();
        let direct = parse_line(FULL).unwrap();
        assert_eq!(parse_line(&as_object).unwrap(), direct);
        assert_eq!(parse_line(&as_string).unwrap(), direct);
        let host_log =
            format!("[2026-11-29 14:52:03.123][7][info][wasm] wasm log claude_sso_gateway: {LOG_MARKER}{FULL}");
        assert_eq!(parse_line(&host_log).unwrap(), direct);
        // nginx (Kong) writes the request's context after the message.
        let nginx_log = format!(
            "2026/11/29 14:52:03 [warn] 7#0: *5 [proxy-wasm][\"claude_sso_gateway\" #1] {LOG_MARKER}{FULL}, \
             client: 127.0.0.1, server: kong, request: \"POST /v1/messages HTTP/1.1\", host: \"gw\""
        );
        assert_eq!(parse_line(&nginx_log).unwrap(), direct);
    }

    #[test]
    fn a_record_in_text_a_client_sent_is_never_taken() {
        // Lines the hosts write with the client's text in them, at the levels that log it.
        let lines = [
            // Envoy at debug logs each request header on a line of its own.
            format!("'user-agent', '{LOG_MARKER}{FULL}'"),
            // A header value with a tab after the record, in Envoy's default format.
            format!("'x', 'a [wasm] wasm log x: {LOG_MARKER}{FULL}\tthread=1'"),
            // Another message of the filter that quotes the client.
            format!(
                "[2026-11-29 14:52:03.123][7][warning][wasm] [context.cc:1154] wasm log claude_sso_gateway \
                 claude_sso_gateway: claude-sso-gateway: refused 400: model x {LOG_MARKER}{FULL}"
            ),
            // nginx at info logs a header line it refuses.
            format!(
                "2026/11/29 14:52:03 [info] 7#0: *5 client sent invalid header line: \"X: [proxy-wasm][\"a\" #1] \
                 {LOG_MARKER}{FULL}, client: x\" while reading client request headers, client: 127.0.0.1"
            ),
            // The host's prefix, but more than the record after it.
            format!("[2026-11-29 14:52:03.123][7][info][wasm] [c.cc:1] wasm log claude_sso_gateway: {LOG_MARKER}{FULL}'"),
            format!("2026/11/29 14:52:03 [warn] 7#0: *5 [proxy-wasm][\"claude_sso_gateway\" #1] {LOG_MARKER}{FULL} and more"),
        ];
        for line in &lines {
            assert_eq!(parse_line(line), Err(Skip::NotFromTheFilter), "{line}");
        }
        // The hosts' own lines, as they write them and as log collectors keep them, and the record
        // alone after the marker (a line cut out of a log).
        let envoy = format!(
            "[2026-12-02 05:58:27.227][4169][warning][wasm] [source/extensions/common/wasm/context.cc:1154] wasm log \
             claude_sso_gateway claude_sso_gateway: {LOG_MARKER}{FULL}"
        );
        for line in [
            envoy.clone(),
            // Kubernetes' container log file, journald's export, `kubectl logs --timestamps`.
            format!("2026-12-02T05:58:27.227Z stderr F {envoy}"),
            format!("Dec 02 05:58:27 node1 envoy[4169]: {envoy}"),
            // Envoy without plugin names; Istio's format, with its fields after a tab.
            format!("[2026-12-02 05:58:27.227][1][warning][wasm] [context.cc:1154] wasm log: {LOG_MARKER}{FULL}"),
            format!(
                "2026-12-02T05:58:27.227Z\twarning\twasm\twasm log claude_sso_gateway: {LOG_MARKER}{FULL}\tthread=24"
            ),
            // A file that starts with a byte-order mark; Windows line ends.
            format!("\u{feff}{envoy}\r"),
            // nginx, its context cut at 2,048 bytes.
            format!(
                "2026/11/29 14:52:03 [warn] 7#0: *5 [proxy-wasm][\"claude_sso_gateway\" #1] {LOG_MARKER}{FULL}, cli"
            ),
            format!("2026/11/29 14:52:03 [warn] 7#0: [proxy-wasm][\"claude_sso_gateway\" #1] {LOG_MARKER}{FULL}"),
            format!(
                "2026/12/02 06:57:28 [warn] 8918#0: *10 [proxy-wasm][\"claude_sso_gateway\" #6] {LOG_MARKER}{FULL} \
                 while sending to client, client: 127.0.0.1, server: gateway, request: \"POST /v1/messages HTTP/1.1\""
            ),
            format!("{LOG_MARKER}{FULL}"),
        ] {
            assert!(parse_line(&line).is_ok(), "{line}");
        }
    }

    #[test]
    fn the_marker_inside_an_access_log_value_marks_nothing() {
        // A refused request's model is the client's text.
        let record = FULL.replace("\"model\":\"claude-sonnet-4-6\"", &format!("\"model\":\"x {LOG_MARKER}y\""));
        let line = format!(r#"{{"response_code":400,"usage":{record}}}"#);
        assert_eq!(parse_line(&line).unwrap().model, format!("x {LOG_MARKER}y"));
    }

    #[test]
    fn reads_a_refusal() {
        let line = r#"{"time":"2026-11-29T14:52:03Z","sub":"bob","tier":"basic","model":"claude-opus-4-1","status":403,"input_tokens":0,"output_tokens":0,"cost_usd":null,"refusal":"model_not_allowed"}"#;
        let r = parse_line(line).unwrap();
        assert!(r.refused());
        assert_eq!(r.refusal.as_deref(), Some("model_not_allowed"));
        assert_eq!(r.cost_nanos, None);
        assert_eq!(r.tokens.total(), 0);
    }

    #[test]
    fn missing_optional_fields_have_defaults() {
        let r = parse_line(r#"{"time":"2026-11-29T14:52:03Z","email":"carol@example.com"}"#).unwrap();
        assert_eq!(r.sub, "carol@example.com");
        assert_eq!((r.tier.as_str(), r.model.as_str(), r.provider_model.as_str()), (NONE, NONE, NONE));
        assert_eq!((r.status, r.cost_nanos, r.latency_ms), (0, None, None));
        let r = parse_line(r#"{"time":"2026-11-29T14:52:03Z","model":"m","sub":""}"#).unwrap();
        assert_eq!(r.sub, UNKNOWN_PERSON);
    }

    #[test]
    fn lines_without_a_record_are_skipped_with_a_reason() {
        let cases: &[(&str, &str, Skip)] = &[
            ("blank", "   ", Skip::Blank),
            ("plain text", "[2026-11-29 14:52:03] envoy started", Skip::NotJson),
            ("json array", "[1,2,3]", Skip::NotJson),
            ("json number", "42", Skip::NotJson),
            ("truncated object", r#"{"time":"2026-11-29T14:52:03Z","sub":"a""#, Skip::NotJson),
            ("access log without usage", r#"{"response_code":200,"path":"/v1/messages"}"#, Skip::NoRecord),
            ("host log marker without a record", "[info][wasm] claude-sso-gateway: usage -", Skip::NotFromTheFilter),
            ("a record after the marker of no host", "[x] claude-sso-gateway: usage {}", Skip::NotFromTheFilter),
            ("access log with null usage", r#"{"response_code":200,"usage":null}"#, Skip::NoRecord),
            ("access log with dash usage", r#"{"usage":"-"}"#, Skip::NoRecord),
            ("usage string not an object", r#"{"usage":"[1]"}"#, Skip::NoRecord),
            ("record without time", r#"{"sub":"a","model":"m","usage":{"sub":"a"}}"#, Skip::BadTime),
            ("record with bad time", r#"{"time":"yesterday","sub":"a"}"#, Skip::BadTime),
            ("record with numeric time", r#"{"time":1764427923,"sub":"a"}"#, Skip::BadTime),
        ];
        for (name, line, want) in cases {
            assert_eq!(parse_line(line), Err(*want), "{name}");
        }
    }

    #[test]
    fn mistyped_and_absurd_values_never_panic() {
        let lines = [
            r#"{"time":"2026-11-29T14:52:03Z","sub":7,"status":"200","input_tokens":-5,"output_tokens":1e300,"cost_usd":"0.1"}"#,
            r#"{"time":"2026-11-29T14:52:03Z","sub":"a","status":99999,"input_tokens":18446744073709551615,"cost_usd":-1}"#,
            r#"{"time":"2026-11-29T14:52:03Z","sub":"a","cost_usd":1e308,"latency_ms":[],"ttft_ms":{}}"#,
        ];
        for line in lines {
            let r = parse_line(line).unwrap();
            assert_eq!(r.status, 0);
            let _ = r.tokens.total();
        }
        let r = parse_line(lines[1]).unwrap();
        assert_eq!((r.tokens.input, r.cost_nanos), (u64::MAX, None));
        assert_eq!(parse_line(lines[2]).unwrap().cost_nanos, Some(u64::MAX));
    }
}
