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

/// The record's JSON shape (`report/README.md`), borrowed from the record: serialized in one
/// pass, with no tree built.
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
    cost_usd: Option<f64>,
    latency_ms: Option<u64>,
    ttft_ms: Option<u64>,
    session: Option<&'a str>,
    refusal: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    estimated: bool,
}

impl UsageRecord {
    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        let u = &self.usage;
        let line = Line {
            time: rfc3339_ms(self.time_ms),
            sub: self.sub.as_deref(),
            email: self.email.as_deref(),
            tier: self.tier.as_deref(),
            model: self.model.as_deref(),
            provider_model: self.provider_model.as_deref(),
            provider: self.provider,
            status: self.status,
            input_tokens: u.input,
            output_tokens: u.output,
            cache_write_tokens: u.cache_write,
            cache_read_tokens: u.cache_read,
            // JSON has no NaN or infinity (serde_json would write null for them anyway).
            cost_usd: self.cost_usd.filter(|c| c.is_finite()),
            latency_ms: self.latency_ms,
            ttft_ms: self.ttft_ms,
            session: self.session.as_deref(),
            refusal: self.refusal,
            estimated: self.estimated,
        };
        // Serializing borrowed strings and numbers into a Vec cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// `2026-11-29T14:52:03.123Z` for milliseconds since the epoch (proleptic Gregorian, UTC).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
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
        ];
        for (ms, want) in cases {
            assert_eq!(rfc3339_ms(ms), want, "{ms}");
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
    }
}
