//! The usage record: one JSON object per request (who, which tier and model, what status, how
//! many tokens, what it cost, how long it took), for the host's access log and the per-person
//! report (`report/README.md` is the contract). Never a token, a key or prompt text.

use serde::Serialize;

use crate::usage::Usage;

/// One finished (or refused) request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRecord {
    /// When the request finished, milliseconds since the epoch.
    pub time_ms: u64,
    /// The token's `sub`, once verified.
    pub sub: Option<String>,
    /// The token's `email`.
    pub email: Option<String>,
    /// The tier the request was admitted under.
    pub tier: Option<String>,
    /// The alias the client asked for.
    pub model: Option<String>,
    /// The id the provider received.
    pub provider_model: Option<String>,
    /// `anthropic`, `bedrock`.
    pub provider: Option<&'static str>,
    /// The status the client got (none when the client went away before any).
    pub status: Option<u32>,
    /// Tokens the answer reported.
    pub usage: Usage,
    /// Dollars, for a priced model.
    pub cost_usd: Option<f64>,
    /// From the request's headers to the answer's end.
    pub latency_ms: Option<u64>,
    /// From the request's headers to the answer's first byte.
    pub ttft_ms: Option<u64>,
    /// `X-Claude-Code-Session-Id`.
    pub session: Option<String>,
    /// Stable code of a refusal (`model_not_allowed`, `budget_exhausted`, `expired`, ...).
    pub refusal: Option<&'static str>,
    /// The answer was not seen whole; at least the estimate was charged.
    pub estimated: bool,
}

impl UsageRecord {
    /// The record as one line of JSON (`report/README.md`): the field names are written as
    /// they are, and each value by serde_json, so strings are escaped as everywhere else.
    pub fn to_json(&self) -> String {
        let u = &self.usage;
        let strings = [&self.sub, &self.email, &self.tier, &self.model, &self.provider_model, &self.session];
        // Room for everything but the strings' escapes, so the buffer does not grow (a record
        // is made for every request).
        let mut out =
            Vec::with_capacity(LINE_BYTES + strings.iter().map(|s| s.as_ref().map_or(0, String::len)).sum::<usize>());
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(rfc3339_ms(self.time_ms).as_bytes());
        out.push(b'"');
        field(&mut out, "sub", &self.sub.as_deref().map(capped));
        field(&mut out, "email", &self.email.as_deref().map(capped));
        field(&mut out, "tier", &self.tier);
        field(&mut out, "model", &self.model);
        field(&mut out, "provider_model", &self.provider_model);
        field(&mut out, "provider", &self.provider);
        field(&mut out, "status", &self.status);
        field(&mut out, "input_tokens", &u.input);
        field(&mut out, "output_tokens", &u.output);
        field(&mut out, "cache_write_tokens", &u.cache_write);
        field(&mut out, "cache_read_tokens", &u.cache_read);
        field(&mut out, "cache_write_1h_tokens", &u.cache_write_1h());
        if u.web_searches > 0 {
            field(&mut out, "web_search_requests", &u.web_searches);
        }
        // Priced at the model's fast-mode rates.
        if u.fast {
            field(&mut out, "speed", &"fast");
        }
        // JSON has no NaN or infinity (serde_json would write null for them anyway).
        field(&mut out, "cost_usd", &self.cost_usd.filter(|c| c.is_finite()));
        field(&mut out, "latency_ms", &self.latency_ms);
        field(&mut out, "ttft_ms", &self.ttft_ms);
        field(&mut out, "session", &self.session);
        field(&mut out, "refusal", &self.refusal);
        if self.estimated {
            field(&mut out, "estimated", &true);
        }
        out.push(b'}');
        // JSON allows U+2028 and U+2029 raw in strings, but many line readers (JavaScript's
        // before ES2019, Python's `splitlines`) end a line there: written as escapes.
        // (One scan for their first byte first: most records are ASCII.)
        if memchr::memchr(0xe2, &out).is_some()
            && (memchr::memmem::find(&out, b"\xe2\x80\xa8").is_some()
                || memchr::memmem::find(&out, b"\xe2\x80\xa9").is_some())
        {
            out = String::from_utf8_lossy(&out)
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029")
                .into_bytes();
        }
        // Only UTF-8 was written: the names, the time, and what serde_json wrote.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Longest `sub` or `email` written as it is: nginx (Kong) cuts a log line at 2,048 bytes, and
/// on nginx the record is a log line; a cut record is lost to the report.
pub const IDENTITY_BYTES: usize = 256;

/// `value`, or when longer than [`IDENTITY_BYTES`] its first 200 bytes (to a character's end),
/// `…#` and 16 hex digits of its SHA-256: still one string per person, and readable.
fn capped(value: &str) -> std::borrow::Cow<'_, str> {
    use sha2::{Digest as _, Sha256};
    if value.len() <= IDENTITY_BYTES {
        return value.into();
    }
    let end = (0..=200).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}…#{hex}", &value[..end]).into()
}

/// Appends `,"name":value` (`name` needs no escape; `None` is `null`).
fn field(out: &mut Vec<u8>, name: &str, value: &impl Serialize) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing a string or a number into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A record's JSON without its strings: the field names, the time and the numbers at their
/// longest.
const LINE_BYTES: usize = 540;

/// `2026-11-29T14:52:03.123Z` for milliseconds since the epoch (proleptic Gregorian, UTC).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    // Written digit by digit: made for every request, where `format!` costs more than the rest.
    let mut out = String::with_capacity(24);
    let mut digits = |n: u64, width: u32, after: char| {
        // At least `width` digits, as `{:0width$}` writes them (a year past 9999 has more).
        let width = width.max(n.checked_ilog10().map_or(1, |d| d + 1));
        for place in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u64.pow(place) % 10) as u8));
        }
        out.push(after);
    };
    digits(y, 4, '-');
    digits(m, 2, '-');
    digits(d, 2, 'T');
    digits(rem / 3600, 2, ':');
    digits(rem % 3600 / 60, 2, ':');
    digits(rem % 60, 2, '.');
    digits(ms % 1000, 3, 'Z');
    out
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn times_format_as_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_764_427_923_123, "2025-11-29T14:52:03.123Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (253_402_300_800_000, "10000-01-01T00:00:00.000Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(rfc3339_ms(ms), want, "{ms}");
        }
    }

    /// The record as serde derives it: the shape `to_json` must write byte for byte.
    #[derive(Serialize)]
    struct Line<'a> {
        time: String,
        sub: Option<&'a str>,
        email: Option<&'a str>,
        tier: Option<&'a str>,
        model: Option<&'a str>,
        provider_model: Option<&'a str>,
        provider: Option<&'static str>,
        status: Option<u32>,
        input_tokens: u64,
        output_tokens: u64,
        cache_write_tokens: u64,
        cache_read_tokens: u64,
        cache_write_1h_tokens: u64,
        #[serde(skip_serializing_if = "is_zero")]
        web_search_requests: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        speed: Option<&'static str>,
        cost_usd: Option<f64>,
        latency_ms: Option<u64>,
        ttft_ms: Option<u64>,
        session: Option<&'a str>,
        refusal: Option<&'static str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        estimated: bool,
    }

    fn is_zero(n: &u64) -> bool {
        *n == 0
    }

    fn derived(r: &UsageRecord) -> String {
        let u = &r.usage;
        serde_json::to_string(&Line {
            time: rfc3339_ms(r.time_ms),
            sub: r.sub.as_deref(),
            email: r.email.as_deref(),
            tier: r.tier.as_deref(),
            model: r.model.as_deref(),
            provider_model: r.provider_model.as_deref(),
            provider: r.provider,
            status: r.status,
            input_tokens: u.input,
            output_tokens: u.output,
            cache_write_tokens: u.cache_write,
            cache_read_tokens: u.cache_read,
            cache_write_1h_tokens: u.cache_write_1h(),
            web_search_requests: u.web_searches,
            speed: u.fast.then_some("fast"),
            cost_usd: r.cost_usd.filter(|c| c.is_finite()),
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            session: r.session.as_deref(),
            refusal: r.refusal,
            estimated: r.estimated,
        })
        .unwrap()
    }

    #[test]
    fn the_line_is_what_serde_derives_byte_for_byte() {
        // Every control character, quotes, backslashes, non-ASCII and an emoji in each string.
        let nasty: String = (0u8..0x20).map(char::from).chain("\"\\/\u{7f}é漢😀 plain".chars()).collect();
        let full = UsageRecord {
            time_ms: 4_107_542_399_999,
            sub: Some(nasty.clone()),
            email: Some(format!("a{nasty}@example.com")),
            tier: Some(nasty.clone()),
            model: Some("claude-sonnet-4-6".into()),
            provider_model: Some(nasty.clone()),
            provider: Some("bedrock"),
            status: Some(u32::MAX),
            usage: Usage {
                input: u64::MAX,
                output: 0,
                cache_write: 1,
                cache_read: 123_456_789,
                cache_write_1h: 1,
                web_searches: u64::MAX,
                fast: true,
            },
            cost_usd: Some(0.000_000_1),
            latency_ms: Some(u64::MAX),
            ttft_ms: Some(0),
            session: Some(nasty),
            refusal: Some("budget_exhausted"),
            estimated: true,
        };
        let costs = [
            None,
            Some(0.0),
            Some(1e-12),
            Some(0.0123),
            Some(12_345.678_9),
            Some(1e300),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ];
        for cost in costs {
            for r in [
                UsageRecord { cost_usd: cost, ..full.clone() },
                UsageRecord { cost_usd: cost, ..UsageRecord::default() },
            ] {
                assert_eq!(r.to_json(), derived(&r), "{cost:?}");
                assert!(serde_json::from_str::<Value>(&r.to_json()).is_ok());
            }
        }
    }

    #[test]
    fn a_record_is_one_json_line_with_the_contract_fields() {
        let r = UsageRecord {
            time_ms: 1_764_427_923_123,
            sub: Some("alice".into()),
            tier: Some("standard".into()),
            status: Some(400),
            refusal: Some("model_not_allowed"),
            ..UsageRecord::default()
        };
        let line = r.to_json();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2025-11-29T14:52:03.123Z");
        assert_eq!(v["refusal"], "model_not_allowed");
        assert_eq!(v["input_tokens"], 0);
        assert_eq!(v["email"], Value::Null);
        assert!(v.get("estimated").is_none());
        assert!(v.get("web_search_requests").is_none(), "only when there were any");
        assert!(v.get("speed").is_none(), "only in fast mode");
    }

    /// A record stays one line for every reader and fits the 2,048 bytes nginx gives a log line,
    /// whatever the identity provider put into `sub` and `email`.
    #[test]
    fn long_identities_are_cut_to_stay_distinct_and_line_separators_are_escaped() {
        let long = |c: &str| format!("{}@example.com", c.repeat(3000));
        let r = UsageRecord {
            sub: Some("é".repeat(3000)),
            email: Some(long("a")),
            session: Some("s".repeat(128)),
            model: Some("m".repeat(100)),
            tier: Some("t".repeat(64)),
            provider_model: Some("p".repeat(100)),
            provider: Some("bedrock"),
            status: Some(200),
            refusal: Some("budget_exhausted"),
            estimated: true,
            cost_usd: Some(1e300),
            latency_ms: Some(u64::MAX),
            ttft_ms: Some(u64::MAX),
            ..UsageRecord::default()
        };
        let line = r.to_json();
        assert!(line.len() < 1500, "{} bytes", line.len());
        let v: Value = serde_json::from_str(&line).unwrap();
        let email = v["email"].as_str().unwrap();
        assert!(email.starts_with(&"a".repeat(200)) && email.contains("…#") && email.len() < 240, "{email}");
        let other = UsageRecord { email: Some(long("a") + "x"), ..r.clone() }.to_json();
        let other: Value = serde_json::from_str(&other).unwrap();
        assert_ne!(other["email"], v["email"], "two people stay two");
        assert!(v["sub"].as_str().unwrap().starts_with("éé"));
        let short = UsageRecord { email: Some("a".repeat(IDENTITY_BYTES)), ..UsageRecord::default() };
        assert_eq!(short.to_json(), derived(&short), "up to the limit, as it is");

        let r = UsageRecord { sub: Some("a\u{2028}b\u{2029}c".into()), ..UsageRecord::default() };
        let line = r.to_json();
        assert!(line.contains(r#""sub":"a\u2028b\u2029c""#), "{line}");
        assert_eq!(line.lines().count(), 1);
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["sub"], "a\u{2028}b\u{2029}c");
    }
}
