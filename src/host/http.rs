//! Per-request host glue: hold the headers, buffer the body, ask the gateway, apply its answer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::gateway::{Admission, AuthOutcome, FetchProgress, Worker};
use crate::jwt;
use crate::keystore::Fetch;
use crate::metering::Metering;
use crate::reply::{Reply, ToReply};
use crate::routing::{Endpoint, RequestError};

use super::calls::{self, HostShared};
use super::metrics::Metrics;

/// One request's state.
pub struct GatewayHttp {
    worker: Rc<RefCell<Worker>>,
    metrics: Rc<Metrics>,
    token: Option<String>,
    admission: Option<Admission>,
    /// The key callout this request waits for.
    waiting: Option<(u32, Fetch)>,
    /// Set once the whole body is buffered.
    body_size: Option<usize>,
    endpoint: Endpoint,
    /// The request's accounting, once it was forwarded.
    metering: Option<Metering>,
    /// A local answer was sent; nothing more is done.
    answered: bool,
}

impl GatewayHttp {
    /// A request context sharing its worker's state.
    pub fn new(worker: Rc<RefCell<Worker>>, metrics: Rc<Metrics>) -> GatewayHttp {
        GatewayHttp {
            worker,
            metrics,
            token: None,
            admission: None,
            waiting: None,
            body_size: None,
            endpoint: Endpoint::NotFound,
            metering: None,
            answered: false,
        }
    }

    fn answer(&mut self, reply: &Reply) -> Action {
        if reply.status >= 400 {
            self.metrics.record_refusal(reply.status);
            let message = String::from_utf8_lossy(&reply.body);
            calls::log(LogLevel::Info, &format!("claude-sso-gateway: refused {}: {message}", reply.status));
        }
        self.answered = true;
        calls::send_reply(reply);
        Action::Pause
    }

    /// Authenticates the request's token; `Continue` only means "no answer was sent".
    fn authenticate(&mut self, may_fetch: bool) -> Action {
        let Some(token) = self.token.as_deref() else {
            return self.answer(&jwt::AuthError::MissingToken.to_reply());
        };
        let outcome = self.worker.borrow_mut().authenticate(token, calls::now(), may_fetch);
        match outcome {
            AuthOutcome::Admitted(admission) => {
                self.admission = Some(admission);
                Action::Continue
            }
            AuthOutcome::Refused(reply) => self.answer(&reply),
            AuthOutcome::FetchKeys(callout) => {
                let timeout = Duration::from_millis(self.worker.borrow().plan.oidc.callout_timeout_ms);
                match calls::dispatch(&callout, timeout) {
                    Ok(id) => {
                        self.worker.borrow_mut().request_fetch_started();
                        self.waiting = Some((id, callout.fetch));
                        Action::Continue
                    }
                    Err(status) => {
                        calls::log(
                            LogLevel::Warn,
                            &format!(
                                "claude-sso-gateway: key fetch: upstream {} refused: {status:?}",
                                callout.upstream
                            ),
                        );
                        self.authenticate(false)
                    }
                }
            }
        }
    }

    /// With admission and the whole body: check the model, rewrite, set the upstream headers.
    fn forward(&mut self, body_size: usize) -> Action {
        let Some(admission) = &self.admission else {
            return Action::Pause;
        };
        let body = calls::request_body(body_size);
        let forward = self.worker.borrow().forward(&HostShared, admission, self.endpoint, &body, calls::now());
        match forward {
            Err(reply) => self.answer(&reply),
            Ok((forward, metering)) => {
                self.metering = metering;
                if let Some(new_body) = &forward.body {
                    if !calls::replace_request_body(body_size, new_body) {
                        return self.answer(&Reply::error(
                            500,
                            "api_error",
                            "gateway: could not rewrite the request body",
                        ));
                    }
                }
                for (name, value) in &forward.headers {
                    calls::set_request_header(name, value);
                }
                Action::Continue
            }
        }
    }
}

impl GatewayHttp {
    /// Charges the answer's usage once and reports it.
    fn settle(&mut self) {
        let Some(metering) = &mut self.metering else { return };
        let Some(report) = metering.settle(&HostShared, calls::now()) else { return };
        let s = metering.subject();
        self.metrics.record_usage(s, &report);
        let u = report.usage;
        let cost = report.cost_usd.map_or_else(|| "unpriced".to_owned(), |c| format!("{c:.6}"));
        calls::log(
            LogLevel::Info,
            &format!(
                "claude-sso-gateway: usage person={} tier={} model={} input={} output={} cache_write={} cache_read={} cost_usd={cost}",
                s.person, s.tier, s.model, u.input, u.output, u.cache_write, u.cache_read
            ),
        );
    }
}

impl Drop for GatewayHttp {
    fn drop(&mut self) {
        if self.waiting.is_some() {
            self.worker.borrow_mut().request_fetch_ended();
        }
    }
}

impl Context for GatewayHttp {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        let Some((_, fetch)) = self.waiting.take_if(|(id, _)| *id == token_id) else {
            return;
        };
        self.worker.borrow_mut().request_fetch_ended();
        let (status, body, reason) = calls::call_response(body_size);
        let progress = self.worker.borrow_mut().on_fetched(&fetch, status, &body, calls::now());
        if let FetchProgress::Next(callout) = &progress {
            // Discovery just named the JWKS. This request cannot wait for a tick, so it makes
            // the one follow-up fetch itself (ngx_wasm_module and Envoy both allow dispatch here);
            // the chain ends there because a JWKS answer never yields `Next`.
            let timeout = Duration::from_millis(self.worker.borrow().plan.oidc.callout_timeout_ms);
            if let Ok(id) = calls::dispatch(callout, timeout) {
                self.worker.borrow_mut().request_fetch_started();
                self.waiting = Some((id, callout.fetch.clone()));
                return;
            }
        }
        super::publish_or_log(progress, reason.as_deref());
        if self.authenticate(false) == Action::Pause || self.waiting.is_some() {
            return;
        }
        if let Some(size) = self.body_size {
            if self.forward(size) == Action::Continue {
                calls::resume_request();
            }
        }
    }
}

impl HttpContext for GatewayHttp {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let method = calls::request_header(":method").unwrap_or_default();
        let path = calls::request_header(":path").unwrap_or_default();
        self.endpoint = Endpoint::classify(&method, &path);
        match self.endpoint {
            Endpoint::Hello => return self.answer(&Reply::empty(200)),
            Endpoint::NotFound => return self.answer(&RequestError::NotFound.to_reply()),
            Endpoint::Messages | Endpoint::CountTokens => {}
        }
        let authorization = calls::request_header("authorization");
        let api_key = calls::request_header("x-api-key");
        let stripped = self.worker.borrow().stripped_headers().map(str::to_owned);
        for name in &stripped {
            calls::remove_request_header(name);
        }
        let max = self.worker.borrow().plan.max_body_bytes;
        let declared = calls::request_header("content-length").and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > max) {
            return self.answer(&RequestError::TooLarge { max }.to_reply());
        }
        // The body may be rewritten; the length is set again once it is known.
        calls::remove_request_header("content-length");
        // ngx_wasm_module never says end of stream here, and may never call the body callback
        // for an empty body: a declared length of 0 is answered now.
        if end_of_stream || declared == Some(0) {
            return self.answer(&RequestError::MissingModel.to_reply());
        }
        match jwt::take_token(authorization.as_deref(), api_key.as_deref()) {
            Ok(token) => self.token = Some(token),
            Err(e) => return self.answer(&e.to_reply()),
        }
        self.authenticate(true);
        // Held until the body is read (allow_on_headers_stop_iteration in Envoy).
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered {
            return Action::Pause;
        }
        let max = self.worker.borrow().plan.max_body_bytes;
        if body_size > max {
            return self.answer(&RequestError::TooLarge { max }.to_reply());
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_size = Some(body_size);
        if self.admission.is_none() {
            // Still waiting for keys: the callout's answer finishes the request.
            return Action::Pause;
        }
        self.forward(body_size)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // Local answers pass here too (on both hosts); only a forwarded request has metering.
        let Some(metering) = &mut self.metering else { return Action::Continue };
        for (name, value) in metering.headers() {
            calls::set_response_header(&name, &value);
        }
        let content_type = calls::response_header("content-type").unwrap_or_default();
        let length = calls::response_header("content-length").and_then(|v| v.parse().ok());
        metering.on_response_headers(&content_type, length);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(metering) = &mut self.metering else { return Action::Continue };
        // Envoy hands each chunk once when the filter continues; nothing is held back.
        let chunk = calls::response_chunk(body_size);
        if metering.on_response_body(&chunk, end_of_stream) {
            self.settle();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Streams cut short, and answers a host never marks as ended, are settled here.
        self.settle();
    }
}
