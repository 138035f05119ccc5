//! Usage counters through the host's metrics API: Envoy shows them under `wasmcustom.` in
//! `/stats` (and Prometheus), Kong's Prometheus plugin as `pw:<filter>:...`.
//!
//! Every counter is defined in `on_configure` from the plan (tiers and their models are known
//! there), so requests only increment by id and never define metrics mid-request, which not
//! every host allows in every callback.

use std::collections::HashMap;

use crate::config::Plan;
use crate::metering::Settlement;

use super::calls;

/// Token kinds counted per tier and model.
const KINDS: [&str; 4] = ["input", "output", "cache_write", "cache_read"];
/// Statuses the gateway answers itself.
const REFUSALS: [u32; 8] = [400, 401, 403, 404, 413, 429, 500, 503];
/// Problems logged as warnings.
const WARNINGS: &str = "claude_sso_gateway_warnings";

/// Counter ids of this VM.
#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
}

// The name is `<metric>.<label>.<value>...`: the metric part is a valid Prometheus name, and
// the labels are cut out by Envoy's tag extraction and Kong's `label_patterns` (meta.json).
fn refused(status: u32) -> String {
    format!("claude_sso_gateway_refused.status.{status}")
}

fn scope(tier: &str, model: &str) -> String {
    format!("tier.{}.model.{}", clean(tier), clean(model))
}

impl Metrics {
    /// Defines every counter the plan can produce.
    pub fn define(plan: &Plan) -> Metrics {
        let mut names: Vec<String> = REFUSALS.iter().map(|s| refused(*s)).collect();
        names.push(WARNINGS.to_owned());
        for tier in &plan.tiers {
            for alias in tier.aliases(plan) {
                let scope = scope(&tier.name, alias);
                names.push(format!("claude_sso_gateway_requests.{scope}"));
                names.push(format!("claude_sso_gateway_cost_micro_usd.{scope}"));
                names.extend(KINDS.iter().map(|k| format!("claude_sso_gateway_tokens_{k}.{scope}")));
            }
        }
        let ids = names.into_iter().filter_map(|name| calls::define_counter(&name).map(|id| (name, id))).collect();
        Metrics { ids }
    }

    fn add(&self, name: &str, value: u64) {
        if let (Some(id), true) = (self.ids.get(name), value > 0) {
            calls::increment_counter(*id, value);
        }
    }

    /// Counts one finished request's tokens and cost under its tier and model.
    pub fn record_usage(&self, settled: &Settlement) {
        let (subject, report) = (&settled.subject, settled);
        let scope = scope(&subject.tier, &subject.model);
        let u = &report.usage;
        self.add(&format!("claude_sso_gateway_requests.{scope}"), 1);
        for (kind, value) in KINDS.iter().zip([u.input, u.output, u.cache_write, u.cache_read]) {
            self.add(&format!("claude_sso_gateway_tokens_{kind}.{scope}"), value);
        }
        if let Some(cost) = report.cost_usd {
            self.add(&format!("claude_sso_gateway_cost_micro_usd.{scope}"), (cost * 1e6).round() as u64);
        }
    }

    /// Counts a problem that was logged (a failed budget write, an implausible upstream usage).
    pub fn record_warning(&self) {
        self.add(WARNINGS, 1);
    }

    /// Counts a refusal by status.
    pub fn record_refusal(&self, status: u32) {
        self.add(&refused(status), 1);
    }
}

// Metric names are dot-separated paths; keep tier and model names to a safe alphabet.
fn clean(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
