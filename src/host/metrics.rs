//! The filter's metrics through the host's metrics API. Envoy shows them under `wasmcustom.` in
//! `/stats` and, with the sample configs' `stats_tags`, as labelled Prometheus series
//! (`claude_sso_gateway_requests_total{tier="standard",model="…",status_class="2xx",provider="anthropic"}`);
//! Kong's Prometheus plugin exports them as `pw:claude_sso_gateway:…` with the meta file's
//! `label_patterns` cutting the same labels out.
//!
//! A name is `<metric>.<label>.<value>...`: the metric part is a valid Prometheus name ending in
//! `_total` for counters (Envoy adds no suffix), and label values never contain a dot. Every
//! series is defined in `on_configure` from the plan, so requests only add by id, and no
//! per-person label exists: people go to the usage records.

use std::cell::Cell;
use std::collections::HashMap;

use proxy_wasm::types::MetricType;

use crate::config::Plan;
use crate::jwt::AuthError;
use crate::metering::Settlement;
use crate::record::UsageRecord;
use crate::reply::Reply;

use super::calls;

/// Token kinds counted per tier and model.
const KINDS: [&str; 4] = ["input", "output", "cache_write", "cache_read"];
/// Status classes of forwarded requests; `none` when no answer came.
const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "none"];
/// Every reason code a local refusal can carry (`Reply::reason`).
const REFUSALS: &[&str] = &[
    "not_found",
    "body_too_large",
    "body_unreadable",
    "invalid_json",
    "invalid_length",
    "content_encoding",
    "bedrock_request",
    "missing_model",
    "repeated_header",
    "model_not_allowed",
    "no_tier",
    "budget_exhausted",
    "budget_in_flight",
    "keys_unavailable",
    "keys_too_old",
    "rewrite_failed",
    "body_not_seen",
    "clock_unavailable",
];
/// Outcomes of a key fetch.
const FETCH_OUTCOMES: [&str; 2] = ["ok", "error"];
/// Outcomes of a budget-store sync (`SyncError::code`, `ok`, `dispatch_failed`).
const SYNC_OUTCOMES: [&str; 8] =
    ["ok", "unreachable", "status", "refused", "garbage", "superseded", "shared_data", "dispatch_failed"];
/// Budget-store health states a node moves into.
const STORE_HEALTH: [&str; 3] = ["starting", "synced", "cut_off"];

/// Series ids of this VM, by full name, and those of each tier and model at hand (by the tier's
/// name, then the model's alias, as a usage record names them: no name is built per request).
#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
    scopes: HashMap<String, HashMap<String, ScopeIds>>,
    /// The host has no timer: the gathered counters are handed over after each request.
    every_request: std::cell::Cell<bool>,
}

/// The series of one tier and model. Its counters are added to in the VM and handed to the host
/// at the next tick ([`Metrics::flush`]): five host calls fewer per answered request, for series
/// that are read every few seconds at most.
#[derive(Default)]
struct ScopeIds {
    /// By status class (`STATUS_CLASSES`), for the model's provider.
    requests: [Option<Pending>; 5],
    /// By token kind (`KINDS`).
    tokens: [Option<Pending>; 4],
    cost: Option<Pending>,
    latency: Option<u32>,
    ttft: Option<u32>,
}

/// A counter series and what was added to it since the last flush.
struct Pending {
    id: u32,
    added: Cell<u64>,
}

impl Pending {
    fn new(id: u32) -> Pending {
        Pending { id, added: Cell::new(0) }
    }

    fn add(&self, value: u64) {
        self.added.set(self.added.get().saturating_add(value));
    }

    fn flush(&self) {
        add(Some(self.id), self.added.replace(0));
    }
}

fn scope(tier: &str, model: &str) -> String {
    format!("tier.{}.model.{}", clean(tier), clean(model))
}

impl Metrics {
    /// Defines every series the plan can produce.
    pub fn define(plan: &Plan) -> Metrics {
        let mut counters: Vec<String> = vec!["claude_sso_gateway_warnings_total".to_owned()];
        let mut histograms = Vec::new();
        let auth_codes = AuthError::ALL.iter().map(AuthError::code);
        for reason in REFUSALS.iter().copied().chain(auth_codes.clone()) {
            counters.push(format!("claude_sso_gateway_refusals_total.reason.{reason}"));
        }
        for reason in auth_codes {
            counters.push(format!("claude_sso_gateway_auth_failures_total.reason.{reason}"));
        }
        for outcome in FETCH_OUTCOMES {
            counters.push(format!("claude_sso_gateway_jwks_fetches_total.outcome.{outcome}"));
        }
        if plan.budget_store.is_some() {
            for outcome in SYNC_OUTCOMES {
                counters.push(format!("claude_sso_gateway_budget_store_syncs_total.outcome.{outcome}"));
            }
            for state in STORE_HEALTH {
                counters.push(format!("claude_sso_gateway_budget_store_health_changes_total.outcome.{state}"));
            }
        }
        for tier in &plan.tiers {
            counters.push(format!("claude_sso_gateway_budget_refusals_total.tier.{}", clean(&tier.name)));
            for &m in &tier.models {
                let Some(model) = plan.models.get(m) else { continue };
                let provider = plan.targets.get(model.target).map_or("none", |t| t.provider.name());
                let scope = scope(&tier.name, &model.alias);
                for class in STATUS_CLASSES {
                    counters.push(format!(
                        "claude_sso_gateway_requests_total.{scope}.status_class.{class}.provider.{provider}"
                    ));
                }
                counters.push(format!("claude_sso_gateway_cost_usd_micros_total.{scope}"));
                counters.extend(KINDS.iter().map(|k| format!("claude_sso_gateway_tokens_total.{scope}.kind.{k}")));
                histograms.push(format!("claude_sso_gateway_latency_ms.{scope}"));
                histograms.push(format!("claude_sso_gateway_ttft_ms.{scope}"));
            }
        }
        let defined = counters
            .into_iter()
            .map(|n| (n, MetricType::Counter))
            .chain(histograms.into_iter().map(|n| (n, MetricType::Histogram)));
        let ids: HashMap<String, u32> =
            defined.filter_map(|(name, kind)| calls::define_metric(kind, &name).map(|id| (name, id))).collect();
        let mut scopes: HashMap<String, HashMap<String, ScopeIds>> = HashMap::new();
        for tier in &plan.tiers {
            for model in tier.models.iter().filter_map(|&m| plan.models.get(m)) {
                let provider = plan.targets.get(model.target).map_or("none", |t| t.provider.name());
                let scope = scope(&tier.name, &model.alias);
                let id = |name: String| ids.get(&name).copied();
                let counter = |name: String| id(name).map(Pending::new);
                let ids = ScopeIds {
                    requests: STATUS_CLASSES.map(|c| {
                        counter(format!(
                            "claude_sso_gateway_requests_total.{scope}.status_class.{c}.provider.{provider}"
                        ))
                    }),
                    tokens: KINDS.map(|k| counter(format!("claude_sso_gateway_tokens_total.{scope}.kind.{k}"))),
                    cost: counter(format!("claude_sso_gateway_cost_usd_micros_total.{scope}")),
                    latency: id(format!("claude_sso_gateway_latency_ms.{scope}")),
                    ttft: id(format!("claude_sso_gateway_ttft_ms.{scope}")),
                };
                scopes.entry(tier.name.clone()).or_default().insert(model.alias.clone(), ids);
            }
        }
        Metrics { ids, scopes, every_request: std::cell::Cell::new(false) }
    }

    fn add(&self, name: &str, value: u64) {
        add(self.ids.get(name).copied(), value);
    }

    /// Counts one forwarded request by its record: status class, tokens, cost, latency.
    pub fn record_forwarded(&self, record: &UsageRecord, settled: Option<&Settlement>) {
        let (Some(tier), Some(model)) = (&record.tier, &record.model) else { return };
        let Some(ids) = self.scopes.get(tier.as_str()).and_then(|models| models.get(model.as_str())) else { return };
        let class = match record.status {
            Some(s @ 200..=599) => (s / 100 - 2) as usize,
            _ => 4,
        };
        let gather = |counter: &Option<Pending>, value: u64| counter.iter().for_each(|c| c.add(value));
        gather(&ids.requests[class], 1);
        if let Some(settled) = settled {
            let u = &settled.usage;
            for (counter, value) in ids.tokens.iter().zip([u.input, u.output, u.cache_write, u.cache_read]) {
                gather(counter, value);
            }
            if let Some(cost) = settled.cost_usd {
                gather(&ids.cost, (cost * 1e6).round() as u64);
            }
        }
        if let (Some(id), Some(ms)) = (ids.latency, record.latency_ms) {
            calls::record_metric(id, ms);
        }
        if let (Some(id), Some(ms)) = (ids.ttft, record.ttft_ms) {
            calls::record_metric(id, ms);
        }
    }

    /// The host has no timer ([`Self::flush`] would never run): flush after every request.
    pub fn flush_after_each_request(&self) {
        self.every_request.set(true);
    }

    /// A request ended: flushes when the host has no timer.
    pub fn request_ended(&self) {
        if self.every_request.get() {
            self.flush();
        }
    }

    /// Hands the counts gathered since the last flush to the host (at each tick).
    pub fn flush(&self) {
        for ids in self.scopes.values().flat_map(HashMap::values) {
            ids.requests.iter().chain(&ids.tokens).chain([&ids.cost]).flatten().for_each(Pending::flush);
        }
    }

    /// Counts a local refusal by reason (and authentication failures and budget refusals apart).
    pub fn record_refusal(&self, reply: &Reply, tier: Option<&str>) {
        self.add(&format!("claude_sso_gateway_refusals_total.reason.{}", reply.reason), 1);
        // Every token refusal, the 400s a new sign-in cannot fix (a wrong audience) included.
        if AuthError::ALL.iter().any(|e| e.code() == reply.reason) {
            self.add(&format!("claude_sso_gateway_auth_failures_total.reason.{}", reply.reason), 1);
        }
        // A budget spent, not one full with running requests' holds (Claude Code retries those
        // within seconds: each retry would count again).
        if let ("budget_exhausted", Some(tier)) = (reply.reason, tier) {
            self.add(&format!("claude_sso_gateway_budget_refusals_total.tier.{}", clean(tier)), 1);
        }
    }

    /// Counts a key fetch by outcome.
    pub fn record_fetch(&self, ok: bool) {
        self.add(&format!("claude_sso_gateway_jwks_fetches_total.outcome.{}", if ok { "ok" } else { "error" }), 1);
    }

    /// Counts a budget-store sync by outcome.
    pub fn record_store_sync(&self, outcome: &str) {
        self.add(&format!("claude_sso_gateway_budget_store_syncs_total.outcome.{outcome}"), 1);
    }

    /// Counts a move of this node's budget-store health into `state`.
    pub fn record_store_health(&self, state: &str) {
        self.add(&format!("claude_sso_gateway_budget_store_health_changes_total.outcome.{state}"), 1);
    }

    /// Counts a problem that was logged (a failed budget write, an implausible upstream usage).
    pub fn record_warning(&self) {
        self.add("claude_sso_gateway_warnings_total", 1);
    }
}

impl Drop for Metrics {
    // A reconfigured root replaces its metrics while requests still hold the old ones: the last
    // of them hands over what it gathered.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Adds to a counter defined at configure time (nothing for zero or an undefined series).
fn add(id: Option<u32>, value: u64) {
    if let (Some(id), true) = (id, value > 0) {
        calls::increment_counter(id, value);
    }
}

fn clean(name: &str) -> String {
    crate::config::metric_label(name)
}
