//! Usage counters through the host's metrics API: Envoy shows them under `wasmcustom.` in
//! `/stats` (and Prometheus), Kong's Prometheus plugin as `pw:<filter>:...`.

use std::collections::HashMap;

use super::calls;
use crate::metering::{Report, Subject};

/// Counter ids of this VM, defined on first use.
#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
}

impl Metrics {
    fn add(&mut self, name: String, value: u64) {
        if value == 0 {
            return;
        }
        let id = match self.ids.get(&name) {
            Some(id) => *id,
            None => match calls::define_counter(&name) {
                Some(id) => {
                    self.ids.insert(name, id);
                    id
                }
                None => return,
            },
        };
        calls::increment_counter(id, value);
    }

    /// Counts one finished request's tokens and cost under its tier and model.
    pub fn record_usage(&mut self, subject: &Subject, report: &Report) {
        let scope = format!("tier.{}.model.{}", clean(&subject.tier), clean(&subject.model));
        let u = &report.usage;
        self.add(format!("claude_sso_gateway.requests.{scope}"), 1);
        for (kind, value) in
            [("input", u.input), ("output", u.output), ("cache_write", u.cache_write), ("cache_read", u.cache_read)]
        {
            self.add(format!("claude_sso_gateway.tokens.{kind}.{scope}"), value);
        }
        if let Some(cost) = report.cost_usd {
            self.add(format!("claude_sso_gateway.cost_micro_usd.{scope}"), (cost * 1e6).round() as u64);
        }
    }

    /// Counts a refusal by status.
    pub fn record_refusal(&mut self, status: u32) {
        self.add(format!("claude_sso_gateway.refused.{status}"), 1);
    }
}

// Metric names are dot-separated paths; keep tier and model names to a safe alphabet.
fn clean(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
