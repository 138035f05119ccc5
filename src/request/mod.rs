//! One request's life as a state machine in plain Rust: the host layer turns each host event
//! into one call here and applies the [`Step`] it gets back, so every order in which a host can
//! deliver events is testable natively (see the tests at the end and `fuzz/`).
//!
//! The invariant everything else rests on: **nothing reaches the upstream before the decision,
//! and the decision is taken only with the whole body in hand.** "Reaches the upstream" differs
//! by host, which is what [`HostProfile`] captures:
//! - Envoy (with `allow_on_headers_stop_iteration`): `Continue` from request headers, from a body
//!   chunk or from trailers forwards at once, so every one of them is `Pause` until decided.
//! - ngx_wasm_module (Kong): `Pause` from request headers waits to be resumed and nginx does not
//!   read the body meanwhile, so headers `Continue` unless a key fetch is pending; the body then
//!   arrives once, whole, and nothing goes upstream before the body callback returns.
//!
//! A request ends in exactly one of: a local answer ([`Step::reply`]), or one forward with the
//! header and body changes ([`Step::forwarded`]), after which only the answer is metered.

use crate::gateway::{Admission, AuthOutcome, FetchProgress, Forward, Worker};
use crate::jwt::{self, AuthError};
use crate::keystore::{Callout, Fetch};
use crate::metering::{Metering, Settlement};
use crate::reply::{Reply, ToReply};
use crate::routing::{Endpoint, RequestError};
use crate::shared::SharedStore;

#[cfg(any(test, feature = "fuzzing"))]
pub mod sim;
#[cfg(test)]
mod tests;

/// Which host's event semantics apply (told apart once, at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProfile {
    /// Envoy: headers held while the body streams in chunks; trailers possible.
    Envoy,
    /// nginx + ngx_wasm_module (Kong): a paused request waits to be resumed; the body comes
    /// once with end of stream (or not at all when nginx spilled it to a file).
    Ngx,
}

/// What the machine needs from the host besides events: time, callouts, shared data.
pub trait Host: SharedStore {
    /// Seconds since the epoch.
    fn now(&self) -> u64;
    /// Dispatches a key callout; the answer comes back as [`Request::on_keys_fetched`] with the
    /// returned token. `Err` carries the host's reason.
    fn dispatch(&self, callout: &Callout, timeout_ms: u64) -> Result<u32, String>;
}

/// Whether the host callback that produced the event lets the request go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    /// Let the current stage proceed.
    Continue,
    /// Hold it.
    #[default]
    Pause,
}

/// What the host layer does after an event, in this order: header removals, header sets, body
/// replacement, the local reply, resuming a request paused earlier, then `flow`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// The callback's return value.
    pub flow: Flow,
    /// Request headers to remove.
    pub remove_headers: Vec<String>,
    /// Request headers to set (replace).
    pub set_headers: Vec<(String, String)>,
    /// A new request body.
    pub body: Option<Vec<u8>>,
    /// A local answer; after it nothing is forwarded.
    pub reply: Option<Reply>,
    /// Resume a request a host callback paused earlier.
    pub resume: bool,
    /// True on the one step that lets the request go upstream (for tests and logs).
    pub forwarded: bool,
    /// Response headers to set.
    pub response_headers: Vec<(String, String)>,
    /// A request's accounting finished: report it.
    pub settled: Option<Settlement>,
    /// Problems to log and count; never shown to the client.
    pub warnings: Vec<String>,
}

impl Step {
    fn pause() -> Step {
        Step::default()
    }

    fn flow(flow: Flow) -> Step {
        Step { flow, ..Step::default() }
    }

    fn reply(reply: Reply) -> Step {
        Step { reply: Some(reply), ..Step::default() }
    }
}

/// Where the request is.
#[derive(Debug)]
enum Phase {
    /// Nothing seen yet.
    New,
    /// Headers held; reading the body and/or waiting for keys.
    Deciding,
    /// The request went upstream.
    Forwarded,
    /// A local answer was sent.
    Answered,
}

/// The authentication side of a request being decided.
#[derive(Debug)]
enum Auth {
    /// Not decided yet (no token looked at).
    Pending,
    /// Waiting for this key callout.
    Waiting(u32, Fetch),
    /// Verified and placed in a tier.
    Admitted(Admission),
    /// Refused; the answer waits for the body stage (ngx keeps the connection usable only if
    /// the body was read before the answer).
    Refused(Reply),
}

/// Which host callback returned `Pause` last and has not been resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    None,
    Headers,
    Body,
}

/// The request headers the machine reads, taken from the host's full header list.
#[derive(Debug, Default)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    authorization: Vec<&'a str>,
    api_key: Vec<&'a str>,
    content_length: Option<&'a str>,
    chunked: bool,
}

impl<'a> Head<'a> {
    fn read(headers: &'a [(String, String)]) -> Head<'a> {
        let mut head = Head::default();
        for (name, value) in headers {
            // Envoy hands names lower-case; nginx as the client spelt them.
            let lower = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(name.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(name.as_str())
            };
            match &*lower {
                ":method" => head.method = value,
                ":path" => head.path = value,
                "authorization" => head.authorization.push(value),
                "x-api-key" => head.api_key.push(value),
                "content-length" => head.content_length = Some(value),
                "transfer-encoding" => head.chunked = true,
                _ => {}
            }
        }
        head
    }
}

/// One request's state.
#[derive(Debug)]
pub struct Request {
    profile: HostProfile,
    phase: Phase,
    auth: Auth,
    endpoint: Endpoint,
    held: Held,
    /// Bytes the host has buffered so far (Envoy hands the running total).
    buffered: usize,
    /// The whole body, kept while keys are still being fetched.
    body: Option<Vec<u8>>,
    metering: Option<Metering>,
    /// Whether this request holds one of the worker's key-fetch slots.
    fetching: bool,
    /// The bearer token, kept only while a key callout is pending.
    pending_token: Option<String>,
}

impl Request {
    /// A new request on a host with `profile`.
    pub fn new(profile: HostProfile) -> Request {
        Request {
            profile,
            phase: Phase::New,
            auth: Auth::Pending,
            endpoint: Endpoint::NotFound,
            held: Held::None,
            buffered: 0,
            body: None,
            metering: None,
            fetching: false,
            pending_token: None,
        }
    }

    /// Bytes of request body the host holds; the host reads this many at trailers.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether the request went upstream.
    pub fn is_forwarded(&self) -> bool {
        matches!(self.phase, Phase::Forwarded)
    }

    /// Whether a local answer was sent.
    pub fn is_answered(&self) -> bool {
        matches!(self.phase, Phase::Answered)
    }

    /// Request headers arrived (all of them, as the host lists them, names lower-case).
    pub fn on_request_headers(
        &mut self,
        worker: &mut Worker,
        host: &dyn Host,
        headers: &[(String, String)],
        end_of_stream: bool,
    ) -> Step {
        if !matches!(self.phase, Phase::New) {
            return self.settled_flow();
        }
        let head = Head::read(headers);
        self.endpoint = Endpoint::classify(head.method, head.path);
        let declared_empty = head.content_length.is_some_and(|l| l.trim() == "0");
        let has_body = match self.profile {
            HostProfile::Envoy => !end_of_stream && !declared_empty,
            // ngx never says end of stream here and may never call the body callback for a
            // request without one: only a declared length or chunked encoding means a body.
            // (An HTTP/2 request without content-length is therefore answered 400 on ngx.)
            HostProfile::Ngx => head.chunked || (head.content_length.is_some() && !declared_empty),
        };
        match self.endpoint {
            Endpoint::Hello => return self.answer(Reply::empty(200)),
            Endpoint::NotFound => return self.refuse_early(RequestError::NotFound.to_reply(), has_body),
            Endpoint::Messages | Endpoint::CountTokens => {}
        }
        self.phase = Phase::Deciding;
        // Everything the client may not choose is taken away before anything else happens, so no
        // later path can forward it.
        let count = |name: &str| headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count();
        let present: Vec<String> =
            worker.stripped_headers().iter().filter(|name| count(name) > 0).map(|n| (*n).to_owned()).collect();
        let mut step = match present.iter().find(|name| count(name) > 1) {
            // One value each: ngx cannot take every copy of a repeated header away (below).
            Some(name) if name == "authorization" || name == "x-api-key" => {
                self.refuse_early(AuthError::DuplicateCredential.to_reply(), has_body)
            }
            Some(name) => self.refuse_early(RequestError::RepeatedHeader(name.clone()).to_reply(), has_body),
            None => self.decide_head(worker, host, &head, has_body),
        };
        match self.profile {
            HostProfile::Envoy => {
                step.remove_headers = present;
                if head.content_length.is_some() {
                    // The body may be rewritten; the length is set again when the body is known.
                    step.remove_headers.push("content-length".to_owned());
                }
            }
            // ngx_wasm_module only marks a removed request header and nginx's proxy module
            // forwards it anyway; a replaced value does reach the upstream. So each is replaced
            // with "" now (the forward sets the gateway's own values over them; the samples drop
            // an empty Authorization with `proxy_set_header Authorization ""`). nginx computes
            // Content-Length itself from the body it sends.
            HostProfile::Ngx => {
                let cleared = present.into_iter().map(|n| (n, String::new()));
                step.set_headers.splice(0..0, cleared);
            }
        }
        step
    }

    fn decide_head(&mut self, worker: &mut Worker, host: &dyn Host, head: &Head<'_>, has_body: bool) -> Step {
        let max = worker.plan.max_body_bytes;
        let declared = head.content_length.map(|l| l.trim().parse::<usize>());
        match declared {
            Some(Err(_)) => return self.answer(RequestError::InvalidLength.to_reply()),
            Some(Ok(len)) if len > max => {
                return self.refuse_early(RequestError::TooLarge { max }.to_reply(), has_body)
            }
            _ => {}
        }
        if !has_body {
            return self.answer(RequestError::MissingModel.to_reply());
        }
        match jwt::take_token(head.authorization.first().copied(), head.api_key.first().copied()) {
            Ok(token) => self.authenticate(worker, host, &token, true),
            Err(e) => self.auth = Auth::Refused(e.to_reply()),
        }
        self.after_auth_at_headers()
    }

    /// The flow out of request headers once authentication has moved on.
    fn after_auth_at_headers(&mut self) -> Step {
        match (&self.auth, self.profile) {
            (Auth::Refused(reply), HostProfile::Envoy) => {
                let reply = reply.clone();
                self.answer(reply)
            }
            // Envoy holds the headers until the decision, whatever the reason.
            (_, HostProfile::Envoy) => self.hold(Held::Headers),
            // ngx: only a pending callout pauses here; otherwise nginx goes on to read the body,
            // which is where the request is decided (and refused, with the body read).
            (Auth::Waiting(..), HostProfile::Ngx) => self.hold(Held::Headers),
            (_, HostProfile::Ngx) => Step::flow(Flow::Continue),
        }
    }

    fn authenticate(&mut self, worker: &mut Worker, host: &dyn Host, token: &str, may_fetch: bool) {
        self.auth = match worker.authenticate(token, host.now(), may_fetch) {
            AuthOutcome::Admitted(admission) => Auth::Admitted(admission),
            AuthOutcome::Refused(reply) => Auth::Refused(reply),
            AuthOutcome::FetchKeys(callout) => match host.dispatch(&callout, worker.plan.oidc.callout_timeout_ms) {
                Ok(id) => {
                    worker.request_fetch_started();
                    self.fetching = true;
                    Auth::Waiting(id, callout.fetch)
                }
                Err(_) => match worker.authenticate(token, host.now(), false) {
                    AuthOutcome::Admitted(admission) => Auth::Admitted(admission),
                    AuthOutcome::Refused(reply) => Auth::Refused(reply),
                    AuthOutcome::FetchKeys(_) => Auth::Refused(crate::keystore::KeysError::Unavailable.to_reply()),
                },
            },
        };
        // The token is needed again only after a key callout.
        if let Auth::Waiting(..) = self.auth {
            self.pending_token = Some(token.to_owned());
        }
    }

    /// A request body chunk arrived. `body` is the whole buffered body, which the host reads
    /// only at end of stream (`None` there means the host could not hand it over, e.g. nginx
    /// spilled it to a temp file).
    pub fn on_request_body(
        &mut self,
        worker: &mut Worker,
        host: &dyn Host,
        size: usize,
        end_of_stream: bool,
        body: Option<&[u8]>,
    ) -> Step {
        if !matches!(self.phase, Phase::Deciding) {
            return self.settled_flow();
        }
        self.buffered = size;
        let max = worker.plan.max_body_bytes;
        if size > max {
            return self.answer(RequestError::TooLarge { max }.to_reply());
        }
        if !end_of_stream {
            return self.hold(Held::Body);
        }
        self.body_complete(worker, host, body)
    }

    /// Request trailers arrived: the body is complete. `body` is what the host buffered
    /// ([`Request::buffered`] bytes).
    pub fn on_request_trailers(&mut self, worker: &mut Worker, host: &dyn Host, body: Option<&[u8]>) -> Step {
        if !matches!(self.phase, Phase::Deciding) {
            return self.settled_flow();
        }
        self.body_complete(worker, host, body)
    }

    fn body_complete(&mut self, worker: &mut Worker, host: &dyn Host, body: Option<&[u8]>) -> Step {
        // A refusal already decided says more to the person than what the body is.
        if let Auth::Refused(reply) = &self.auth {
            let reply = reply.clone();
            return self.answer(reply);
        }
        let Some(body) = body else {
            return self.answer(RequestError::BodyUnreadable.to_reply());
        };
        let max = worker.plan.max_body_bytes;
        if body.len() > max {
            return self.answer(RequestError::TooLarge { max }.to_reply());
        }
        self.buffered = body.len();
        match &self.auth {
            Auth::Admitted(_) => self.decide(worker, host, body),
            // Keys are being fetched: the callout's answer decides.
            Auth::Waiting(..) => {
                self.body = Some(body.to_vec());
                self.hold(Held::Body)
            }
            // Unreachable with headers seen first; refused rather than trusted.
            Auth::Pending | Auth::Refused(_) => self.answer(RequestError::BodyUnreadable.to_reply()),
        }
    }

    /// A key callout this request dispatched answered (`status` is `None` when the host
    /// reported no response; `reason` is the host's explanation then).
    pub fn on_keys_fetched(
        &mut self,
        worker: &mut Worker,
        host: &dyn Host,
        token_id: u32,
        status: Option<u32>,
        body: &[u8],
    ) -> (Step, Option<FetchProgress>) {
        let Auth::Waiting(id, fetch) = &self.auth else {
            return (Step::pause(), None);
        };
        if *id != token_id {
            return (Step::pause(), None);
        }
        let fetch = fetch.clone();
        self.release_fetch(worker);
        let progress = worker.on_fetched(&fetch, status, body, host.now());
        let mut step = Step::pause();
        if let FetchProgress::Next(callout) = &progress {
            // Discovery just named the JWKS. The request cannot wait for a tick, so it makes the
            // one follow-up fetch itself; the chain ends there (a JWKS answer never yields Next).
            if let Ok(id) = host.dispatch(callout, worker.plan.oidc.callout_timeout_ms) {
                worker.request_fetch_started();
                self.fetching = true;
                self.auth = Auth::Waiting(id, callout.fetch.clone());
                return (step, Some(progress));
            }
            step.warnings.push(format!("key fetch: could not reach upstream {}", callout.upstream));
        }
        let token = self.pending_token.take().unwrap_or_default();
        if matches!(self.phase, Phase::Deciding) {
            self.authenticate(worker, host, &token, false);
            let warnings = std::mem::take(&mut step.warnings);
            step = self.resume_after_keys(worker, host);
            step.warnings.splice(0..0, warnings);
        }
        (step, Some(progress))
    }

    /// Moves a request on after its keys arrived: answer, decide, or let the body come.
    fn resume_after_keys(&mut self, worker: &mut Worker, host: &dyn Host) -> Step {
        if let Some(body) = self.body.take() {
            // The body stage is paused waiting for this answer.
            let mut step = self.body_complete(worker, host, Some(&body));
            step.resume = step.forwarded;
            step.flow = Flow::Pause;
            return step;
        }
        match (self.profile, &self.auth) {
            (HostProfile::Envoy, Auth::Refused(reply)) => {
                let reply = reply.clone();
                self.answer(reply)
            }
            // ngx waits at the headers for the callout: let nginx read the body now; the body
            // stage answers or forwards. Envoy reads the body meanwhile and decides at its end.
            (HostProfile::Ngx, _) if self.held == Held::Headers => {
                self.held = Held::None;
                Step { resume: true, ..Step::pause() }
            }
            _ => Step::pause(),
        }
    }

    /// With the whole body and an admitted person: check the model, admit against budgets,
    /// rewrite, and forward.
    fn decide(&mut self, worker: &mut Worker, host: &dyn Host, body: &[u8]) -> Step {
        let Auth::Admitted(admission) = &self.auth else {
            return self.answer(crate::keystore::KeysError::Unavailable.to_reply());
        };
        match worker.forward(host, admission, self.endpoint, body, host.now()) {
            Err(refusal) => {
                let mut step = self.answer(refusal.reply);
                step.warnings = refusal.warnings;
                step
            }
            Ok((Forward { body, mut headers }, metering)) => {
                if self.profile == HostProfile::Ngx {
                    headers.retain(|(name, _)| name != "content-length");
                }
                self.metering = metering;
                self.phase = Phase::Forwarded;
                Step { flow: Flow::Continue, set_headers: headers, body, forwarded: true, ..Step::default() }
            }
        }
    }

    /// The response headers arrived (for a forwarded request: the upstream's; otherwise our own
    /// local answer passing through the filter, which is left alone).
    pub fn on_response_headers(&mut self, status: Option<u32>, content_type: &str, length: Option<u64>) -> Step {
        let Some(metering) = &mut self.metering else { return Step::flow(Flow::Continue) };
        let response_headers = metering.headers();
        metering.on_response_headers(status, content_type, length);
        Step { flow: Flow::Continue, response_headers, ..Step::default() }
    }

    /// A response body chunk passed (never held back).
    pub fn on_response_body(&mut self, host: &dyn Host, chunk: &[u8], end_of_stream: bool) -> Step {
        let mut step = Step::flow(Flow::Continue);
        if let Some(metering) = &mut self.metering {
            if metering.on_response_body(chunk, end_of_stream) {
                step.settled = metering.settle(host, host.now());
            }
        }
        step
    }

    /// The request is over (completed, reset or cancelled): charge what is still open and give
    /// back a key-fetch slot.
    pub fn on_done(&mut self, worker: &mut Worker, host: &dyn Host) -> Step {
        self.release_fetch(worker);
        let mut step = Step::pause();
        if let Some(metering) = &mut self.metering {
            step.settled = metering.settle(host, host.now());
        }
        step
    }

    /// Gives back the worker's key-fetch slot this request holds, if any.
    pub fn release_fetch(&mut self, worker: &mut Worker) {
        if std::mem::take(&mut self.fetching) {
            worker.request_fetch_ended();
        }
    }

    /// A refusal known at the request headers. On ngx with a body still unread, the answer is
    /// kept for the body stage so nginx reads the body first and the connection stays usable.
    fn refuse_early(&mut self, reply: Reply, has_body: bool) -> Step {
        if self.profile == HostProfile::Ngx && has_body {
            self.phase = Phase::Deciding;
            self.auth = Auth::Refused(reply);
            return Step::flow(Flow::Continue);
        }
        self.answer(reply)
    }

    fn answer(&mut self, reply: Reply) -> Step {
        self.phase = Phase::Answered;
        self.held = Held::None;
        self.body = None;
        Step::reply(reply)
    }

    fn hold(&mut self, at: Held) -> Step {
        self.held = at;
        Step::pause()
    }

    /// Events after the decision: a forwarded request flows, an answered one stays stopped.
    fn settled_flow(&self) -> Step {
        match self.phase {
            Phase::Forwarded => Step::flow(Flow::Continue),
            _ => Step::pause(),
        }
    }
}
