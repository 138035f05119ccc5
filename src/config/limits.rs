//! The budget part of the configuration: per-tier limits, per-model prices, the reserve.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ConfigError, MAX_SECONDS};
use crate::budget::{Counts, Limit, Per, WindowType};

/// A tier's limits as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    limit: f64,
    window_seconds: u64,
    #[serde(default)]
    window_type: Option<WindowType>,
    #[serde(default)]
    counts: Option<Counts>,
    #[serde(default)]
    per: Option<Per>,
}

/// A tier's limits with the defaults the tier gives them.
#[derive(Debug)]
pub(super) struct RawTierBudget {
    pub limits: Vec<RawLimit>,
    pub window_type: Option<WindowType>,
    pub counts: Option<Counts>,
    pub per: Option<Per>,
}

/// A model's `price`, as written: dollars per million tokens. (It and [`RawLongContext`] each
/// list the rates: serde cannot flatten them into one struct and still refuse unknown fields.)
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    input: f64,
    output: f64,
    cache_write: f64,
    cache_read: f64,
    #[serde(default)]
    cache_write_1h: Option<f64>,
    #[serde(default)]
    web_search_per_1k: Option<f64>,
    #[serde(default)]
    long_context: Option<RawLongContext>,
    #[serde(default)]
    fast: Option<RawFast>,
}

/// A model's `price.fast`, as written.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFast {
    input: f64,
    output: f64,
    cache_write: f64,
    cache_read: f64,
    #[serde(default)]
    cache_write_1h: Option<f64>,
}

/// A model's `price.long_context`, as written.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLongContext {
    above_prompt_tokens: u64,
    input: f64,
    output: f64,
    cache_write: f64,
    cache_read: f64,
    #[serde(default)]
    cache_write_1h: Option<f64>,
}

/// Dollars per million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes for five minutes (the default lifetime).
    pub cache_write: f64,
    /// Cache reads.
    pub cache_read: f64,
    /// Cache writes for one hour (`cache_control.ttl: "1h"`): as configured, or twice `input`
    /// (as Anthropic and Bedrock price them) but never below `cache_write`.
    pub cache_write_1h: f64,
}

/// A model's price.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// The tokens' rates.
    pub rates: Rates,
    /// Dollars per 1,000 server-side web searches (`web_search_per_1k`): as configured, or
    /// Anthropic's [`DEFAULT_WEB_SEARCH_PER_1K`].
    pub web_search_per_1k: f64,
    /// Rates for a request whose prompt is long (`long_context`), when the model has them.
    pub long_context: Option<LongContext>,
    /// Rates for a request the provider ran in fast mode (`fast`: the answer's `usage.speed`
    /// says `fast`), when the model has them; they apply to the whole context window. A
    /// request asking for fast mode (the `fast-mode-…` beta) on a model priced without them is
    /// refused, since its cost could not be told.
    pub fast: Option<Rates>,
}

/// A second rate card for long prompts (Sonnet 4 and 4.5 with the 1M-token context window
/// charge every token of a request whose prompt is over 200K tokens at higher rates).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LongContext {
    /// A request whose prompt (input, cache writes and cache reads) is above this many tokens
    /// is priced at these rates, its output included.
    pub above_prompt_tokens: u64,
    /// The tokens' rates for such a request.
    pub rates: Rates,
}

/// Anthropic's price of web searches: $10 per 1,000.
pub const DEFAULT_WEB_SEARCH_PER_1K: f64 = 10.0;

/// Most dollars per 1,000 web searches a configuration may set: with at most
/// [`crate::usage::MAX_PLAUSIBLE_SEARCHES`] searches, a request's cost stays a count a budget
/// counter holds exactly.
const MAX_WEB_SEARCH_PER_1K: f64 = 100_000.0;

/// How admission holds budget for a request that has not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reserve {
    /// Nothing is held; usage is counted when the answer ends.
    None,
    /// An estimate (body bytes / 4 for input, `max_tokens` capped for output) is held at
    /// admission and settled to the true count at the end.
    Estimate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudgets {
    #[serde(default = "default_reserve")]
    reserve: Reserve,
    #[serde(default = "default_reserve_output")]
    reserve_output_tokens: u64,
    #[serde(default = "default_warning_share")]
    warning_share: f64,
}

impl Default for RawBudgets {
    fn default() -> Self {
        Self {
            reserve: default_reserve(),
            reserve_output_tokens: default_reserve_output(),
            warning_share: default_warning_share(),
        }
    }
}

fn default_reserve() -> Reserve {
    Reserve::Estimate
}
fn default_reserve_output() -> u64 {
    4096
}
fn default_warning_share() -> f64 {
    0.8
}

/// Global budget behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    /// Whether admission holds an estimate.
    pub reserve: Reserve,
    /// Output tokens held at most per request (`max_tokens` is often 32000 or more).
    pub reserve_output_tokens: u64,
    /// Share of a limit after which answers carry a warning header.
    pub warning_share: f64,
}

pub(super) fn compile_budgets(raw: RawBudgets) -> Result<Budgets, ConfigError> {
    if !(raw.warning_share > 0.0 && raw.warning_share <= 1.0) {
        return Err(ConfigError::new("budgets.warning_share", "must be greater than 0 and at most 1"));
    }
    if raw.reserve_output_tokens > crate::usage::MAX_PLAUSIBLE_TOKENS {
        return Err(ConfigError::new(
            "budgets.reserve_output_tokens",
            format!("must be at most {}", crate::usage::MAX_PLAUSIBLE_TOKENS),
        ));
    }
    Ok(Budgets {
        reserve: raw.reserve,
        reserve_output_tokens: raw.reserve_output_tokens,
        warning_share: raw.warning_share,
    })
}

/// Checks a model's price and fills in what it does not say.
pub(super) fn compile_price(field: &str, raw: RawPrice) -> Result<Price, ConfigError> {
    let rates = compile_rates(field, [raw.input, raw.output, raw.cache_write, raw.cache_read], raw.cache_write_1h)?;
    if let Some(search) = raw.web_search_per_1k {
        if !(search.is_finite() && (0.0..=MAX_WEB_SEARCH_PER_1K).contains(&search)) {
            return Err(ConfigError::new(
                format!("{field}.web_search_per_1k"),
                format!("must be a number from 0 to {MAX_WEB_SEARCH_PER_1K} (dollars per 1,000 web searches)"),
            ));
        }
    }
    let long_context = match raw.long_context {
        None => None,
        Some(long) => {
            let field = format!("{field}.long_context");
            if long.above_prompt_tokens == 0 || long.above_prompt_tokens > crate::usage::MAX_PLAUSIBLE_TOKENS {
                return Err(ConfigError::new(
                    format!("{field}.above_prompt_tokens"),
                    format!("must be from 1 to {} tokens", crate::usage::MAX_PLAUSIBLE_TOKENS),
                ));
            }
            let written = [long.input, long.output, long.cache_write, long.cache_read];
            let rates = compile_rates(&field, written, long.cache_write_1h)?;
            Some(LongContext { above_prompt_tokens: long.above_prompt_tokens, rates })
        }
    };
    let fast = match raw.fast {
        None => None,
        Some(fast) => Some(compile_rates(
            &format!("{field}.fast"),
            [fast.input, fast.output, fast.cache_write, fast.cache_read],
            fast.cache_write_1h,
        )?),
    };
    Ok(Price {
        rates,
        web_search_per_1k: raw.web_search_per_1k.unwrap_or(DEFAULT_WEB_SEARCH_PER_1K),
        long_context,
        fast,
    })
}

/// Checks rates as written (`input`, `output`, `cache_write`, `cache_read`, and
/// `cache_write_1h` when given) and fills in the one-hour cache writes' rate.
fn compile_rates(field: &str, written: [f64; 4], cache_write_1h: Option<f64>) -> Result<Rates, ConfigError> {
    let [input, output, cache_write, cache_read] = written;
    let all = [input, output, cache_write, cache_read, cache_write_1h.unwrap_or(0.0)];
    if all.iter().any(|p| !p.is_finite() || *p < 0.0) {
        return Err(ConfigError::new(field, "prices must be non-negative numbers (dollars per million tokens)"));
    }
    // So that a request's cost (at most MAX_PLAUSIBLE_TOKENS of each kind) stays a count a budget
    // counter holds exactly.
    if all.iter().any(|p| *p > MAX_PRICE) {
        return Err(ConfigError::new(field, format!("prices must be at most {MAX_PRICE} dollars per million tokens")));
    }
    Ok(Rates {
        input,
        output,
        cache_write,
        cache_read,
        // Never below a five-minute write. At most twice MAX_PRICE: a request's cost still stays a
        // count a counter holds exactly.
        cache_write_1h: cache_write_1h.unwrap_or((input * 2.0).max(cache_write)),
    })
}

/// Compiles a tier's limits. `priced` tells whether every model of the tier has a price.
/// The limits of the tier `tier` of a configuration whose tokens come from `issuer`: their
/// counters are that issuer's and that tier's, so two configurations in one host (Kong routes,
/// nginx locations, Envoy listeners sharing a VM) for other IdPs never count against each other,
/// and a reload that keeps both keeps its counters.
pub(super) fn compile_limits(
    field: &str,
    issuer: &str,
    tier: &str,
    raw: RawTierBudget,
    priced: bool,
) -> Result<Vec<Limit>, ConfigError> {
    let mut limits: Vec<Limit> = Vec::with_capacity(raw.limits.len());
    for (i, l) in raw.limits.into_iter().enumerate() {
        let field = format!("{field}.limits[{i}]");
        let counts = l.counts.or(raw.counts).unwrap_or(Counts::TotalTokens);
        let window_type = l.window_type.or(raw.window_type).unwrap_or(WindowType::Sliding);
        let per = l.per.or(raw.per).unwrap_or(Per::Tier);
        if l.window_seconds == 0 || l.window_seconds > MAX_SECONDS {
            return Err(ConfigError::new(
                format!("{field}.window_seconds"),
                format!("must be greater than 0 and at most {MAX_SECONDS} (a year)"),
            ));
        }
        if !(l.limit.is_finite() && l.limit > 0.0) {
            return Err(ConfigError::new(format!("{field}.limit"), "must be greater than 0"));
        }
        let units = if counts == Counts::Cost {
            if !priced {
                return Err(ConfigError::new(field, "counts cost, but a model of this tier has no price"));
            }
            (l.limit * 1_000_000.0).round() as u64
        } else {
            if l.limit.fract() != 0.0 {
                return Err(ConfigError::new(format!("{field}.limit"), "a token limit must be a whole number"));
            }
            l.limit as u64
        };
        // 2^53: the budget store's Lua sums counters in doubles, and a larger limit is no limit.
        if units == 0 || units > MAX_UNITS {
            let range = match counts {
                Counts::Cost => format!("0.000001 and {} dollars", MAX_UNITS / 1_000_000),
                _ => format!("1 and {MAX_UNITS} tokens"),
            };
            return Err(ConfigError::new(format!("{field}.limit"), format!("must be between {range}")));
        }
        let key = limit_key(issuer, tier, counts, l.window_seconds, window_type, per);
        if limits.iter().any(|other| other.key == key) {
            return Err(ConfigError::new(field, "the same limit is listed twice"));
        }
        limits.push(Limit { limit: units, window: l.window_seconds, window_type, counts, per, key });
    }
    Ok(limits)
}

/// The largest limit, in tokens or micro-dollars.
pub const MAX_UNITS: u64 = 1 << 53;

/// Highest price taken, dollars per million tokens (today's dearest model is below 100).
const MAX_PRICE: f64 = 1_000_000.0;

// Keys stay short and depend only on what the limit means, so counters survive a reload that
// keeps the issuer, the tier and its limits (and Kong's CRC32-keyed store sees few keys).
fn limit_key(issuer: &str, tier: &str, counts: Counts, window: u64, window_type: WindowType, per: Per) -> String {
    let c = match counts {
        Counts::TotalTokens => 't',
        Counts::PromptTokens => 'p',
        Counts::CompletionTokens => 'c',
        Counts::Cost => '$',
    };
    let w = if window_type == WindowType::Sliding { 's' } else { 'f' };
    let p = if per == Per::Tier { 't' } else { 'p' };
    format!("csg/b/{}/{c}{window}{w}{p}", short_digest(&format!("{issuer}\n{tier}")))
}

/// A short, stable digest for keys (tier names and `sub`s may be long or contain `/`).
pub fn short_digest(value: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    URL_SAFE_NO_PAD.encode(&Sha256::digest(value.as_bytes())[..9])
}

#[cfg(test)]
mod tests {
    use crate::budget::{Counts, Per, WindowType};
    use crate::config::tests::sample;
    use crate::config::Plan;
    use serde_json::{json, Value};

    /// A price of 1 for input and 0 for the rest, with `extra`'s fields.
    fn price_with(extra: Value) -> Value {
        let mut price = json!({"input": 1, "output": 0, "cache_write": 0, "cache_read": 0});
        if let (Some(price), Value::Object(extra)) = (price.as_object_mut(), extra) {
            price.extend(extra);
        }
        price
    }

    fn load(doc: &Value) -> Result<Plan, String> {
        Plan::from_json(doc.to_string().as_bytes(), &|_| Some("k".to_owned())).map_err(|e| e.to_string())
    }

    #[test]
    fn a_price_fills_in_what_it_does_not_say() {
        let raw = json!({"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3,
            "long_context": {"above_prompt_tokens": 200000, "input": 6, "output": 22.5, "cache_write": 7.5, "cache_read": 0.6}});
        let price = super::compile_price("p", serde_json::from_value(raw).unwrap()).unwrap();
        assert_eq!((price.rates.cache_write_1h, price.web_search_per_1k), (6.0, 10.0));
        let long = price.long_context.unwrap();
        assert_eq!((long.above_prompt_tokens, long.rates.output, long.rates.cache_write_1h), (200_000, 22.5, 12.0));
        let plain = json!({"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3, "web_search_per_1k": 0});
        let price = super::compile_price("p", serde_json::from_value(plain).unwrap()).unwrap();
        assert_eq!((price.long_context, price.web_search_per_1k, price.fast), (None, 0.0, None));
        let fast = json!({"input": 5, "output": 25, "cache_write": 6.25, "cache_read": 0.5,
            "fast": {"input": 30, "output": 150, "cache_write": 37.5, "cache_read": 3}});
        let price = super::compile_price("p", serde_json::from_value(fast).unwrap()).unwrap();
        let fast = price.fast.unwrap();
        assert_eq!((fast.input, fast.output, fast.cache_write_1h), (30.0, 150.0, 60.0));
    }

    #[test]
    fn tier_defaults_and_limit_overrides() {
        let mut doc = sample();
        doc["tiers"][1]["per"] = json!("person");
        doc["tiers"][1]["limits"] = json!([
            {"limit": 20000, "window_seconds": 60},
            {"limit": 5000000, "window_seconds": 2592000, "per": "tier", "window_type": "fixed", "counts": "prompt_tokens"}
        ]);
        let plan = load(&doc).unwrap();
        let limits = &plan.tiers[1].limits;
        assert_eq!(
            (limits[0].per, limits[0].window_type, limits[0].counts),
            (Per::Person, WindowType::Sliding, Counts::TotalTokens)
        );
        assert_eq!(
            (limits[1].per, limits[1].window_type, limits[1].counts),
            (Per::Tier, WindowType::Fixed, Counts::PromptTokens)
        );
        assert!(limits[0].key.starts_with("csg/b/") && limits[0].key.len() < 40, "{}", limits[0].key);
        assert_eq!(load(&doc).unwrap().tiers[1].limits[0].key, limits[0].key, "keys are stable across reloads");
        // Another configuration in the same host, for another IdP, with a tier of the same name:
        // its counters are its own (it spent the first one's budget).
        let mut other = doc.clone();
        other["oidc"]["issuer"] = json!("https://idp.other.example.com");
        assert_ne!(load(&other).unwrap().tiers[1].limits[0].key, limits[0].key);
    }

    #[test]
    fn cost_limits_need_prices_and_count_micro_dollars() {
        let mut doc = sample();
        doc["tiers"][1]["limits"] = json!([{"limit": 2.5, "window_seconds": 86400, "counts": "cost"}]);
        assert_eq!(
            load(&doc).unwrap_err(),
            "config error: tiers[1].limits[0]: counts cost, but a model of this tier has no price"
        );
        doc["models"][0]["price"] = json!({"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3});
        assert_eq!(load(&doc).unwrap().tiers[1].limits[0].limit, 2_500_000);
    }

    /// One-hour cache writes cost what the price says, or twice the input price (Anthropic's and
    /// Bedrock's multiplier) when it says nothing of them.
    #[test]
    fn one_hour_cache_writes_have_their_own_price() {
        let mut doc = crate::config::tests::sample();
        doc["models"][0]["price"] = json!({"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3});
        doc["models"][1]["price"] =
            json!({"input": 5, "output": 25, "cache_write": 6.25, "cache_read": 0.5, "cache_write_1h": 9});
        let plan = load(&doc).unwrap();
        let hourly = |m: usize| plan.models[m].price.map(|p| p.rates.cache_write_1h);
        assert_eq!((hourly(0), hourly(1)), (Some(6.0), Some(9.0)));
        doc["models"][0]["price"] = json!({"input": 0, "output": 1, "cache_write": 3.75, "cache_read": 0});
        let plan = load(&doc).unwrap();
        assert_eq!(plan.models[0].price.map(|p| p.rates.cache_write_1h), Some(3.75), "never below a five-minute write");
    }

    #[test]
    fn invalid_budget_fields_name_the_field() {
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "fractional tokens",
                |d| d["tiers"][0]["limits"] = json!([{"limit": 1.5, "window_seconds": 60}]),
                "config error: tiers[0].limits[0].limit: a token limit must be a whole number",
            ),
            (
                "zero window",
                |d| d["tiers"][0]["limits"] = json!([{"limit": 1, "window_seconds": 0}]),
                "config error: tiers[0].limits[0].window_seconds: must be greater than 0",
            ),
            (
                "negative limit",
                |d| d["tiers"][0]["limits"] = json!([{"limit": -1, "window_seconds": 60}]),
                "config error: tiers[0].limits[0].limit: must be greater than 0",
            ),
            (
                "window over a year",
                |d| d["tiers"][0]["limits"] = json!([{"limit": 1, "window_seconds": 366 * 86_400 + 1}]),
                "config error: tiers[0].limits[0].window_seconds: must be greater than 0 and at most 31622400",
            ),
            (
                "a limit that is no limit",
                |d| d["tiers"][0]["limits"] = json!([{"limit": 1e30, "window_seconds": 60}]),
                "config error: tiers[0].limits[0].limit: must be between 1 and 9007199254740992 tokens",
            ),
            (
                "same limit twice",
                |d| {
                    d["tiers"][0]["limits"] =
                        json!([{"limit": 1, "window_seconds": 60}, {"limit": 2, "window_seconds": 60}])
                },
                "config error: tiers[0].limits[1]: the same limit is listed twice",
            ),
            (
                "negative price",
                |d| d["models"][0]["price"] = json!({"input": -1, "output": 0, "cache_write": 0, "cache_read": 0}),
                "config error: models[0].price: prices must be non-negative numbers (dollars per million tokens)",
            ),
            (
                "negative fast-mode price",
                |d| d["models"][0]["price"] = price_with(json!({"fast": {"input": -30, "output": 0, "cache_write": 0, "cache_read": 0}})),
                "config error: models[0].price.fast: prices must be non-negative numbers (dollars per million tokens)",
            ),
            (
                "fast-mode price without its output rate",
                |d| d["models"][0]["price"] = price_with(json!({"fast": {"input": 30, "cache_write": 0, "cache_read": 0}})),
                "config error: models[0].price.fast: missing field `output`",
            ),
            (
                "negative one-hour cache write price",
                |d| d["models"][0]["price"] = price_with(json!({"cache_write_1h": -2})),
                "config error: models[0].price: prices must be non-negative numbers (dollars per million tokens)",
            ),
            (
                "a web search price beyond its bound",
                |d| d["models"][0]["price"] = price_with(json!({"web_search_per_1k": 1e9})),
                "config error: models[0].price.web_search_per_1k: must be a number from 0 to 100000 (dollars per 1,000 web searches)",
            ),
            (
                "a negative web search price",
                |d| d["models"][0]["price"] = price_with(json!({"web_search_per_1k": -1})),
                "config error: models[0].price.web_search_per_1k: must be a number from 0 to 100000 (dollars per 1,000 web searches)",
            ),
            (
                "a long-context price without its threshold",
                |d| d["models"][0]["price"] = price_with(json!({"long_context": {"input": 2, "output": 0, "cache_write": 0, "cache_read": 0}})),
                "config error: models[0].price.long_context: missing field `above_prompt_tokens`",
            ),
            (
                "a long-context threshold of nothing",
                |d| d["models"][0]["price"] = price_with(json!({"long_context": {"above_prompt_tokens": 0, "input": 2, "output": 0, "cache_write": 0, "cache_read": 0}})),
                "config error: models[0].price.long_context.above_prompt_tokens: must be from 1 to 100000000 tokens",
            ),
            (
                "a negative long-context price",
                |d| d["models"][0]["price"] = price_with(json!({"long_context": {"above_prompt_tokens": 200000, "input": -2, "output": 0, "cache_write": 0, "cache_read": 0}})),
                "config error: models[0].price.long_context: prices must be non-negative numbers (dollars per million tokens)",
            ),
            (
                "a price of an unknown kind",
                |d| d["models"][0]["price"] = price_with(json!({"cache_write_2h": 2})),
                "config error: models[0].price.cache_write_2h: unknown field `cache_write_2h`",
            ),
            (
                "bad window type",
                |d| d["tiers"][0]["window_type"] = json!("rolling"),
                "config error: tiers[0].window_type: unknown variant `rolling`",
            ),
            (
                "warning share",
                |d| d["budgets"] = json!({"warning_share": 1.5}),
                "config error: budgets.warning_share: must be greater than 0 and at most 1",
            ),
        ];
        for (name, edit, want) in cases {
            let mut doc = sample();
            edit(&mut doc);
            let err = load(&doc).unwrap_err();
            assert!(err.contains(want), "{name}: got {err:?}");
        }
    }
}
