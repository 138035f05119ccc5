//! Per-request host glue: each callback reads what the host delivered, hands it to the
//! plain-Rust [`Request`] state machine, and applies the [`Step`] it returns. Nothing here
//! decides anything about the request's order of steps.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::body_watch::{self, BodyWatch};
use crate::gateway::Worker;
use crate::header_map;
use crate::reply::Reply;
use crate::request::{AnswerHead, Flow, HostProfile, Request, Step};

use super::calls::{self, HostCalls};
use super::metrics::Metrics;

/// One request's context.
pub struct GatewayHttp {
    /// The host's id for this request's context.
    id: u32,
    worker: Rc<RefCell<Worker>>,
    watch: Rc<RefCell<BodyWatch>>,
    metrics: Rc<Metrics>,
    profile: Rc<Cell<Option<HostProfile>>>,
    request: Request,
    /// Whether the request's last callback ran ([`GatewayHttp::end`]).
    ended: bool,
}

impl GatewayHttp {
    /// A request context sharing its worker's state.
    pub fn new(
        id: u32,
        worker: Rc<RefCell<Worker>>,
        watch: Rc<RefCell<BodyWatch>>,
        metrics: Rc<Metrics>,
        profile: Rc<Cell<Option<HostProfile>>>,
    ) -> Self {
        let request = Request::new(profile.get().unwrap_or(HostProfile::Envoy));
        GatewayHttp { id, worker, watch, metrics, profile, request, ended: false }
    }

    /// A body callback came: holding works on this host; the first time, the other workers are
    /// told.
    fn body_seen(&mut self) {
        if self.watch.borrow_mut().body_seen(self.id) {
            calls::set_shared_flag(body_watch::PROVEN_KEY);
        }
    }

    /// Whether the root's timer answered this request because its body never came
    /// ([`body_watch`]); the first time, the request learns it and hands out its record.
    /// `late` in the request's last callback.
    fn answered_by_timer(&mut self, late: bool) -> bool {
        if !self.watch.borrow().was_answered(self.id) {
            return false;
        }
        let step = self.request.answered_elsewhere(
            &mut self.worker.borrow_mut(),
            &HostCalls::default(),
            body_watch::body_not_seen(),
        );
        self.apply_at(step, late);
        true
    }

    /// The request's last callback (once): streams cut short, cancelled requests and answers a
    /// host never marks as ended are settled here.
    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.answered_by_timer(true);
        let step = self.request.on_done(&mut self.worker.borrow_mut(), &HostCalls::default());
        self.apply_at(step, true);
        self.metrics.request_ended();
    }

    /// Carries out a step in the order [`Step`] documents and returns the callback's action.
    fn apply(&mut self, step: Step) -> Action {
        self.apply_at(step, false)
    }

    /// [`Self::apply`]; `late` in the request's last callback (after Envoy's access log).
    fn apply_at(&mut self, step: Step, late: bool) -> Action {
        let mut written = true;
        for name in &step.remove_headers {
            written &= calls::remove_request_header(name);
        }
        for (name, value) in &step.set_headers {
            written &= calls::set_request_header(name, value);
        }
        // A request whose credentials could not be taken away, or that would go without the
        // provider key, the identity headers or the right length, goes nowhere.
        if !written && step.reply.is_none() {
            let failed = self.request.not_carried_out(&HostCalls::default(), Reply::rewrite_failed("headers"));
            return self.apply_at(failed, late);
        }
        if let Some(edit) = &step.body {
            if !calls::edit_request_body(edit) {
                // Headers are already set for the new body; refuse rather than send a mismatch.
                let failed = self.request.not_carried_out(&HostCalls::default(), Reply::rewrite_failed("body"));
                return self.apply_at(failed, late);
            }
        }
        // Before a local answer: Envoy may finish the stream, and write its access log, inside
        // the call that sends it.
        if let Some(record) = &step.record {
            // A local answer was not forwarded, refusal or not (Bedrock's count_tokens estimate).
            if record.refusal.is_none() && step.reply.is_none() {
                self.metrics.record_forwarded(record, step.settled.as_ref());
            }
            super::publish_record(record, self.profile.get(), late);
        }
        if let Some(reply) = &step.reply {
            if reply.status >= 400 {
                let tier = step.record.as_ref().and_then(|r| r.tier.as_deref());
                self.metrics.record_refusal(reply, tier);
                calls::log(
                    LogLevel::Info,
                    &format!("claude-sso-gateway: refused {}: {}", reply.status, String::from_utf8_lossy(&reply.body)),
                );
            }
            calls::send_reply(reply);
        }
        if let Some(answer) = &step.replaced_answer {
            calls::send_reply(answer);
        }
        for name in &step.remove_response_headers {
            calls::remove_response_header(name);
        }
        for (name, value) in &step.response_headers {
            calls::set_response_header(name, value);
        }

        let settle_warnings = step.settled.iter().flat_map(|s| &s.warnings);
        for warning in step.warnings.iter().chain(settle_warnings) {
            self.metrics.record_warning();
            calls::log(LogLevel::Warn, &format!("claude-sso-gateway: {warning}"));
        }
        if step.resume {
            calls::resume_request();
        }
        match step.flow {
            Flow::Continue => Action::Continue,
            Flow::Pause => Action::Pause,
        }
    }
}

impl Drop for GatewayHttp {
    fn drop(&mut self) {
        // nginx skips the log callbacks (`on_done`, `on_log`) of a request an `error_page` sent
        // to another location (Kong's for a provider it could not reach or that timed out): such
        // a request ends here, when its pool is cleaned up, as unknown (at least its estimate,
        // as a cut answer), or its hold would stay on the budget and its record would be lost.
        // Only calls that need no request are made: reading a request property here crashes
        // the nginx worker. (Envoy logs every request.)
        if self.profile.get() == Some(HostProfile::Ngx) && !std::mem::replace(&mut self.ended, true) {
            let step = self.request.on_done(&mut self.worker.borrow_mut(), &HostCalls::default());
            self.apply_at(step, true);
            self.metrics.request_ended();
        }
        self.watch.borrow_mut().ended(self.id);
        self.request.release_fetch(&mut self.worker.borrow_mut());
    }
}

impl Context for GatewayHttp {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if self.answered_by_timer(false) {
            return;
        }
        let (status, body, reason) = calls::call_response(body_size, crate::gateway::MAX_KEY_DOCUMENT_BYTES);
        let step = {
            let mut worker = self.worker.borrow_mut();
            let (step, progress) =
                self.request.on_keys_fetched(&mut worker, &HostCalls::default(), token_id, status, &body);
            if let Some(progress) = progress {
                super::publish_or_log(progress, &worker.plan.oidc.shared_key, reason.as_deref(), &self.metrics);
            }
            step
        };
        self.apply(step);
    }
}

impl HttpContext for GatewayHttp {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let profile = match self.profile.get() {
            Some(p) => p,
            None => {
                let p = calls::host_profile();
                self.profile.set(Some(p));
                p
            }
        };
        self.request = Request::new(profile);
        let raw = calls::request_headers();
        let mut headers = header_map::pairs(&raw);
        // nginx proxies the client's URI, not the normalised one it lists as `:path`
        // (`/v1/messages/batches/..%2F..%2Fmessages` is listed as `/v1/messages`): the request is
        // classified by what will be forwarded, as on Envoy.
        let uri = (profile == HostProfile::Ngx).then(calls::ngx_request_uri);
        if let Some(uri) = &uri {
            // Without the URI nginx forwards, nothing is classified by the one it normalised: an
            // empty path is no endpoint (answered 404, never forwarded).
            let uri = match uri {
                Some(uri) => std::str::from_utf8(uri).unwrap_or(header_map::NOT_UTF8),
                None => {
                    calls::log(LogLevel::Warn, "claude-sso-gateway: the host did not give ngx.request_uri; refused");
                    ""
                }
            };
            for pair in headers.iter_mut().filter(|(name, _)| *name == ":path") {
                pair.1 = uri;
            }
        }
        let step = self.request.on_request_headers(
            &mut self.worker.borrow_mut(),
            &HostCalls::default(),
            &headers,
            end_of_stream,
        );
        let held = step.flow == Flow::Pause && step.reply.is_none() && !end_of_stream;
        let action = self.apply(step);
        // Envoy holds the headers only with `allow_on_headers_stop_iteration`; until a body shows
        // that it does, a held request is watched (see body_watch).
        if held && profile == HostProfile::Envoy {
            let mut watch = self.watch.borrow_mut();
            if watch.watching() {
                watch.held(self.id, calls::now_ms());
            }
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered_by_timer(false) {
            return Action::Pause;
        }
        self.body_seen();
        // The body is read only once it is whole; Envoy hands the running total each time. A
        // host that ends with an empty callback of size 0 still holds what came before.
        let body_size = body_size.max(self.request.buffered());
        let body = (end_of_stream && self.request.wants_body()).then(|| calls::request_body(body_size)).flatten();
        let step = self.request.on_request_body(
            &mut self.worker.borrow_mut(),
            &HostCalls::default(),
            body_size,
            end_of_stream,
            body.as_deref(),
        );
        self.apply(step)
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        if self.answered_by_timer(false) {
            return Action::Pause;
        }
        self.body_seen();
        let body = self.request.wants_body().then(|| calls::request_body(self.request.buffered())).flatten();
        let step =
            self.request.on_request_trailers(&mut self.worker.borrow_mut(), &HostCalls::default(), body.as_deref());
        self.apply(step)
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if !self.request.is_forwarded() {
            if self.request.proxied_undecided() {
                let status = calls::response_header(":status").and_then(|s| s.parse().ok());
                if let Some((step, reply)) = self.request.on_undecided_answer(status) {
                    if reply.status >= 400 {
                        self.metrics.record_refusal(&reply, None);
                    }
                    return self.apply(step);
                }
            }
            // Our own local answers pass here too, on both hosts: leave them alone.
            return Action::Continue;
        }
        // One host call for every header the request reads; a host whose list leaves out the
        // pseudo-header is asked for it by name.
        let raw = calls::response_headers();
        let headers = header_map::pairs(&raw);
        let find = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, v)| v);
        let status = find(":status").map(str::to_owned).or_else(|| calls::response_header(":status"));
        let status = status.and_then(|s| s.parse().ok());
        let content_type = find("content-type").unwrap_or_default();
        let length = find("content-length").and_then(|v| v.parse().ok());
        let error_type = self.request.translates_answer().then(|| find("x-amzn-errortype")).flatten();
        let answer = AnswerHead { status, content_type, length, error_type, headers: &headers };
        let step = self.request.on_response_headers(&HostCalls::default(), answer, end_of_stream);
        self.apply(step)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.request.is_forwarded() {
            if let Some(bytes) = self.request.replaced_chunk() {
                calls::replace_response_chunk(body_size, &bytes);
            }
            return Action::Continue;
        }
        // Each chunk passes at once; nothing is held back.
        let chunk = calls::response_chunk(body_size);
        let step = self.request.on_response_body(&HostCalls::default(), &chunk, end_of_stream);
        if let Some(bytes) = &step.response_body {
            calls::replace_response_chunk(body_size, bytes);
        }
        self.apply(step)
    }

    fn on_log(&mut self) {
        self.end();
    }
}

/// A request on a worker without a configuration: refused, never forwarded.
pub struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        calls::send_reply(&Reply::unconfigured());
        Action::Pause
    }
}
