//! The only layer that knows Proxy-Wasm: it turns host callbacks into calls on the plain-Rust
//! gateway and turns the gateway's decisions into host calls (all in [`calls`]).

mod calls;
mod http;
mod metrics;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::body_watch::{self, BodyWatch};
use crate::config::Plan;
use crate::gateway::{FetchProgress, Worker};
use crate::keystore::{self, Fetch};
use crate::record::UsageRecord;
use crate::request::HostProfile;
use crate::store_sync::Batch;

use self::calls::HostCalls;

/// How often each worker checks for shared keys and due refreshes.
const TICK: Duration = Duration::from_millis(crate::config::TICK_MS);

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GatewayRoot::default()) });
}}

/// What a callout the root context dispatched is for.
enum Pending {
    /// A key fetch (background refresh).
    Keys(Fetch),
    /// A budget-store sync of this batch.
    Sync(Batch),
}

/// Per-worker root: owns the configuration, the background key refresh and the budget sync.
#[derive(Default)]
struct GatewayRoot {
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<metrics::Metrics>,
    pending: HashMap<u32, Pending>,
    /// Learned at the first request (only a request can tell the hosts apart safely).
    profile: Rc<Cell<Option<HostProfile>>>,
    /// Requests held at their headers while holding is unproven (kept across configurations:
    /// it is a property of the host's filter config, which a new configuration does not change
    /// without a new VM).
    watch: Rc<RefCell<BodyWatch>>,
}

impl GatewayRoot {
    /// Answers the held requests whose body never came (see [`body_watch`]).
    fn answer_unseen_bodies(&mut self) {
        let late = {
            let mut watch = self.watch.borrow_mut();
            if !watch.watching() {
                return;
            }
            if calls::shared_flag(body_watch::PROVEN_KEY) {
                watch.proven_elsewhere();
                return;
            }
            watch.overdue(calls::now_ms())
        };
        for id in late {
            // A request already gone cannot be made current; nothing to answer then.
            if !calls::set_effective_context(id) {
                continue;
            }
            let reply = body_watch::body_not_seen();
            self.metrics.record_refusal(&reply, None);
            calls::log(
                LogLevel::Error,
                &format!(
                    "claude-sso-gateway: a request's body did not reach the filter within {} s of its headers, \
                     so it was refused; if every request ends so, Envoy is not holding the headers: set \
                     `allow_on_headers_stop_iteration: true` in the Wasm filter's config (Envoy 1.35+)",
                    body_watch::BODY_WAIT_MS / 1000
                ),
            );
            calls::send_reply(&reply);
        }
    }

    /// Starts a background key refresh when one is due and none is under way.
    fn refresh_keys(&mut self, worker: &RefCell<Worker>) {
        if self.pending.values().any(|p| matches!(p, Pending::Keys(_))) {
            return;
        }
        let now = calls::now();
        let callout = {
            let mut w = worker.borrow_mut();
            let Worker { plan, keys, .. } = &mut *w;
            keys.due(&plan.oidc, now)
        };
        let Some(callout) = callout else { return };
        let timeout = Duration::from_millis(worker.borrow().plan.oidc.callout_timeout_ms);
        match calls::dispatch(&callout, timeout) {
            Ok(token) => {
                self.pending.insert(token, Pending::Keys(callout.fetch));
            }
            Err(status) => calls::log(
                LogLevel::Warn,
                &format!("claude-sso-gateway: key refresh: could not reach upstream {}: {status:?}", callout.upstream),
            ),
        }
    }

    /// Pushes this node's spend to the budget store and pulls the cluster's totals, when this
    /// worker holds the node's sync lease and a sync is due (never on the request path).
    fn sync_budgets(&mut self, worker: &RefCell<Worker>) {
        if self.pending.values().any(|p| matches!(p, Pending::Sync(_))) {
            return;
        }
        let mut w = worker.borrow_mut();
        let Worker { plan, sync, .. } = &mut *w;
        let (Some((syncer, tracked)), Some(store_plan)) = (sync.as_mut(), plan.budget_store.as_ref()) else {
            return;
        };
        let tick = syncer.on_tick(&HostCalls::default(), store_plan, tracked, calls::now_ms());
        sync_log(tick.change, &tick.problems);
        if let Some(change) = tick.change {
            self.metrics.record_store_health(change.to.code());
        }
        let Some(request) = tick.request else { return };
        match calls::dispatch_request(&request.upstream, &request.headers, &request.body, request.timeout_ms) {
            Ok(token) => {
                self.pending.insert(token, Pending::Sync(request.batch));
            }
            Err(status) => {
                self.metrics.record_store_sync("dispatch_failed");
                calls::log(
                    LogLevel::Warn,
                    &format!("claude-sso-gateway: budget store: could not reach {}: {status:?}", request.upstream),
                );
                syncer.on_dispatch_failed(&HostCalls::default(), &request.batch);
            }
        }
    }

    /// Installs keys another worker published, when the record changed since the last look.
    fn adopt_shared(worker: &RefCell<Worker>) {
        let mut worker = worker.borrow_mut();
        let Worker { plan, keys, .. } = &mut *worker;
        keys.adopt_shared(&HostCalls::default(), &plan.oidc.shared_key);
    }
}

impl Context for GatewayRoot {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        let (Some(pending), Some(worker)) = (self.pending.remove(&token_id), self.worker.clone()) else {
            return;
        };
        let max = match &pending {
            Pending::Keys(_) => crate::gateway::MAX_KEY_DOCUMENT_BYTES,
            Pending::Sync(batch) => crate::store_sync::max_answer_bytes(batch.entries.len()),
        };
        let (status, body, reason) = calls::call_response(body_size, max);
        match pending {
            Pending::Keys(fetch) => {
                let mut worker = worker.borrow_mut();
                let progress = worker.on_fetched(&fetch, status, &body, calls::now());
                // A JWKS named by discovery is fetched on the next tick, not from this callback.
                publish_or_log(progress, &worker.plan.oidc.shared_key, reason.as_deref(), &self.metrics);
            }
            Pending::Sync(batch) => {
                let mut w = worker.borrow_mut();
                let Worker { plan, sync, .. } = &mut *w;
                let (Some((syncer, _)), Some(store_plan)) = (sync.as_mut(), plan.budget_store.as_ref()) else {
                    return;
                };
                match syncer.on_answer(&HostCalls::default(), store_plan, &batch, status, &body, calls::now_ms()) {
                    Ok(applied) => {
                        self.metrics.record_store_sync("ok");
                        if let Some(change) = applied.change {
                            self.metrics.record_store_health(change.to.code());
                        }
                        sync_log(applied.change, &applied.problems);
                    }
                    Err(e) => {
                        self.metrics.record_store_sync(e.code());
                        let reason = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                        calls::log(
                            LogLevel::Warn,
                            &format!("claude-sso-gateway: budget store sync failed: {e}{reason}"),
                        );
                    }
                }
            }
        }
    }
}

/// Logs a budget-store health change and the problems of a sync step.
fn sync_log(change: Option<crate::store_sync::HealthChange>, problems: &[String]) {
    if let Some(c) = change {
        let level = if c.to == crate::store_sync::Health::Synced { LogLevel::Info } else { LogLevel::Warn };
        calls::log(level, &format!("claude-sso-gateway: budget store: {} -> {}", c.from.code(), c.to.code()));
    }
    for p in problems {
        calls::log(LogLevel::Warn, &format!("claude-sso-gateway: {p}"));
    }
}

impl RootContext for GatewayRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(bytes) = calls::plugin_configuration() else {
            calls::log(LogLevel::Error, "claude-sso-gateway: config error: no configuration given");
            return false;
        };
        // An empty variable is handed on as empty: the parser says "set but empty", not "not set";
        // one that is not UTF-8 with its bytes replaced, so the parser says what is wrong with it
        // (not ASCII), not that it is missing.
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        match Plan::from_json(&bytes, &env) {
            Ok(plan) => {
                calls::log(
                    LogLevel::Info,
                    &format!(
                        "claude-sso-gateway: configured: issuer {}, {} tiers, {} models",
                        plan.oidc.issuer,
                        plan.tiers.len(),
                        plan.models.len()
                    ),
                );
                for warning in plan.warnings() {
                    calls::log(LogLevel::Warn, &format!("claude-sso-gateway: {warning}"));
                }
                self.metrics = Rc::new(metrics::Metrics::define(&plan));
                let worker = Rc::new(RefCell::new(Worker::new(plan)));
                // A key fetch under way is the old configuration's (perhaps another IdP's): its
                // answer must not land in the new one.
                self.pending.retain(|_, p| !matches!(p, Pending::Keys(_)));
                Self::adopt_shared(&worker);
                self.worker = Some(worker);
                if !calls::set_tick_period(TICK) {
                    // No background work then: keys are fetched when a request needs them, and
                    // the budget store is never synced.
                    self.metrics.flush_after_each_request();
                    calls::log(
                        LogLevel::Error,
                        "claude-sso-gateway: the host has no timer: metrics are handed over after each request, \
                         keys are fetched only when a request needs them, and a budget store is never synced",
                    );
                }
                true
            }
            Err(e) => {
                calls::log(LogLevel::Error, &format!("claude-sso-gateway: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.metrics.flush();
        if let Some(worker) = self.worker.clone() {
            Self::adopt_shared(&worker);
            self.refresh_keys(&worker);
            self.sync_budgets(&worker);
        }
        // Last: it makes each late request the effective context, and a callout dispatched after
        // it in this tick would belong to that request (and end with it) instead of the root.
        self.answer_unseen_bodies();
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK aborts the VM on `None`: a worker whose configuration was refused (hosts do
        // not start one, but nothing here relies on it) refuses requests instead.
        Some(match self.worker.clone() {
            Some(worker) => Box::new(http::GatewayHttp::new(
                id,
                worker,
                Rc::clone(&self.watch),
                Rc::clone(&self.metrics),
                Rc::clone(&self.profile),
            )),
            None => Box::new(http::Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Shares newly installed keys with the other workers, or logs why a fetch failed.
fn publish_or_log(progress: FetchProgress, key: &str, reason: Option<&str>, metrics: &metrics::Metrics) {
    metrics.record_fetch(!matches!(progress, FetchProgress::Failed(_)));
    match progress {
        FetchProgress::Next(_) => {}
        FetchProgress::Installed(record) => {
            if let Err(e) = keystore::publish(&HostCalls::default(), key, &record) {
                calls::log(
                    LogLevel::Warn,
                    &format!("claude-sso-gateway: could not share keys with other workers: {e:?}"),
                );
            }
        }
        FetchProgress::Failed(e) => {
            let reason = reason.map(|r| format!(" ({r})")).unwrap_or_default();
            calls::log(LogLevel::Warn, &format!("claude-sso-gateway: key fetch failed: {e}{reason}"));
        }
    }
}

/// Hands a request's usage record to the host. On Envoy it becomes the property
/// `claude_sso_gateway_usage` (filter state `wasm.claude_sso_gateway_usage`, which the samples'
/// access log writes); Envoy writes its access log before the filter's last callback, so a record
/// made there (`late`: a stream the client abandoned) goes to the log as a line
/// `claude-sso-gateway: usage {…}` instead. ngx_wasm_module has no such property (and answers a
/// status the SDK does not map, which traps), so there every record is a log line.
fn publish_record(record: &UsageRecord, profile: Option<HostProfile>, late: bool) {
    let json = record.to_json();
    // A host that refuses the property gets the record as a log line instead: never lost.
    if profile == Some(HostProfile::Envoy) && calls::set_property("claude_sso_gateway_usage", &json) && !late {
        return;
    }
    // At `warn`, the lowest level hosts keep by default: Kong's `log_level` is `notice` and
    // Istio's Envoy logs at `warning`, and a record at `info` would be dropped there.
    calls::log(LogLevel::Warn, &format!("claude-sso-gateway: usage {json}"));
}
