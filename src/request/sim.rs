//! A model of how each host delivers a request's events, used to drive [`Request`] through
//! every order (unit tests) and random orders (the `request_events` fuzz target), checking the
//! invariant after every step: nothing reaches the upstream before the decision, the decision
//! comes only with the whole body, the upstream never sees the client's credential or its own
//! identity claims, and every request ends (answered, forwarded or reset) without hanging.
//!
//! This is test tooling (compiled for tests and with the `sim` feature), so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;

use super::{Flow, Host, HostProfile, Request, Step};
use crate::config::Plan;
use crate::gateway::Worker;
use crate::keystore::{Callout, Fetch};
use crate::shared::{SharedStore, StoreError};

/// The provider key in the simulated plan; it must reach the upstream and nothing else.
pub const PROVIDER_KEY: &str = "sk-provider-secret";
const ISSUER: &str = "https://idp.test";

// Ed25519: fast to sign and to parse (an EC key builds verification tables when parsed, and
// every simulated request starts a worker that parses the JWKS).
fn signing_key() -> &'static Ed25519KeyPair {
    static KEY: OnceLock<Ed25519KeyPair> = OnceLock::new();
    KEY.get_or_init(|| Ed25519KeyPair::generate().with_key_id("k1"))
}

fn other_key() -> &'static Ed25519KeyPair {
    static KEY: OnceLock<Ed25519KeyPair> = OnceLock::new();
    KEY.get_or_init(|| Ed25519KeyPair::generate().with_key_id("k1"))
}

fn jwks() -> String {
    let x = URL_SAFE_NO_PAD.encode(signing_key().public_key().to_bytes());
    serde_json::json!({"keys": [{"kty": "OKP", "kid": "k1", "crv": "Ed25519", "x": x}]}).to_string()
}

/// The key set the simulated IdP publishes.
pub fn keyset() -> crate::jwks::KeySet {
    crate::jwks::KeySet::parse(jwks().as_bytes()).expect("the simulated JWKS parses")
}

/// The plan every simulated request runs under: two tiers, a model alias that is rewritten.
pub fn plan() -> Plan {
    let doc = serde_json::json!({
        "oidc": {"issuer": ISSUER, "audiences": ["gw"], "upstream": "127.0.0.1:9000"},
        "targets": {
            "anthropic": {"provider": "anthropic", "api_key": PROVIDER_KEY},
            "bedrock": {"provider": "bedrock", "region": "us-east-1", "access_key_id": "AKIDSIM",
                        "secret_access_key": "sim-secret", "session_token": "sim-session-token"}
        },
        "models": [
            {"alias": "claude-sonnet-4-6", "target": "anthropic", "model_id": "claude-sonnet-4-6-20990101"},
            {"alias": "claude-opus-4-7", "target": "anthropic", "model_id": "claude-opus-4-7"},
            {"alias": "claude-haiku-4-5", "target": "bedrock", "model_id": "us.anthropic.claude-haiku-4-5-v1:0"}
        ],
        "tiers": [
            {"name": "power", "groups": ["power"], "models": ["claude-opus-4-7", "claude-sonnet-4-6"]},
            {"name": "standard", "groups": ["standard"], "models": ["claude-sonnet-4-6", "claude-haiku-4-5"],
             "limits": [{"limit": 1000000, "window_seconds": 60}]}
        ],
        "max_body_bytes": 4096
    });
    Plan::from_json(doc.to_string().as_bytes(), &|_| None).expect("the simulated plan compiles")
}

/// The credential a simulated client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Valid, standard tier.
    Good,
    /// Signed by a key the IdP never published (same `kid`).
    Forged,
    /// Valid but in no tier.
    NoTier,
    /// Expired.
    Expired,
    /// No credential at all.
    Missing,
    /// `x-api-key` twice.
    DuplicateApiKey,
}

/// The body a simulated client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Allowed model, rewritten on the way.
    Allowed,
    /// A model the standard tier may not use.
    NotAllowed,
    /// Not JSON.
    Invalid,
    /// Larger than the plan's maximum.
    TooLarge,
}

/// How the IdP answers key callouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idp {
    /// Discovery and JWKS answer.
    Up,
    /// Every callout fails.
    Down,
}

/// One simulated request and its surroundings.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Which host semantics apply.
    pub profile: HostProfile,
    /// Whether the worker already has keys.
    pub keys_loaded: bool,
    /// The IdP.
    pub idp: Idp,
    /// The credential.
    pub token: Token,
    /// The body.
    pub body: Body,
    /// Body chunks (Envoy; ngx hands the body whole).
    pub chunks: usize,
    /// HTTP/2 trailers end the request (Envoy only).
    pub trailers: bool,
    /// nginx spilled the body to a file and hands none (ngx only).
    pub spilled: bool,
}

/// What the test driver does next; events a host cannot deliver at that point are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The client sends the next body chunk (ngx: nginx reads the whole body, if it may).
    Chunk,
    /// The client sends trailers.
    Trailers,
    /// The oldest pending key callout answers.
    Answer,
    /// The client resets the stream.
    Reset,
}

/// How the request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A local answer with this status.
    Answered(u32),
    /// Forwarded upstream.
    Forwarded,
    /// The client reset it before either.
    Reset,
}

struct FakeHost {
    idp_up: bool,
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_id: Cell<u32>,
    pending: RefCell<VecDeque<(u32, Fetch)>>,
}

impl SharedStore for FakeHost {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        Ok(self.data.borrow().get(key).map_or((None, None), |(v, c)| (Some(v.clone()), Some(*c))))
    }

    fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut data = self.data.borrow_mut();
        if data.get(key).map(|(_, c)| *c) != cas {
            return Err(StoreError::CasMismatch);
        }
        data.insert(key.to_owned(), (value.to_vec(), cas.unwrap_or(0) + 1));
        Ok(())
    }
}

impl Host for FakeHost {
    fn now(&self) -> u64 {
        NOW
    }

    fn now_ms(&self) -> u64 {
        NOW * 1000
    }

    fn dispatch(&self, callout: &Callout, _: u64) -> Result<u32, String> {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        self.pending.borrow_mut().push_back((id, callout.fetch.clone()));
        Ok(id)
    }
}

const NOW: u64 = 1_800_000_000;

fn token(kind: Token) -> String {
    thread_local! {
        static SIGNED: RefCell<HashMap<String, String>> = RefCell::default();
    }
    let name = format!("{kind:?}");
    if let Some(t) = SIGNED.with(|s| s.borrow().get(&name).cloned()) {
        return t;
    }
    let t = sign(kind);
    SIGNED.with(|s| s.borrow_mut().insert(name, t.clone()));
    t
}

fn sign(kind: Token) -> String {
    let claims = |groups: &[&str], exp: u64| {
        let custom = serde_json::json!({"iss": ISSUER, "aud": "gw", "sub": "alice", "groups": groups, "exp": exp});
        let mut c = Claims::with_custom_claims(custom, Duration::from_secs(0));
        (c.issued_at, c.expires_at, c.invalid_before) = (None, None, None);
        c
    };
    match kind {
        Token::Forged => other_key().sign(claims(&["standard"], NOW + 600)).unwrap(),
        Token::NoTier => signing_key().sign(claims(&["sales"], NOW + 600)).unwrap(),
        Token::Expired => signing_key().sign(claims(&["standard"], NOW - 600)).unwrap(),
        _ => signing_key().sign(claims(&["standard"], NOW + 600)).unwrap(),
    }
}

fn body(kind: Body) -> Vec<u8> {
    match kind {
        // `model` in the middle: the rewrite keeps bytes on both sides of it.
        Body::Allowed => br#"{"max_tokens":10,"model":"claude-sonnet-4-6","messages":[]}"#.to_vec(),
        Body::NotAllowed => br#"{"model":"claude-opus-4-7","max_tokens":10,"messages":[]}"#.to_vec(),
        Body::Invalid => b"{\"model\":".to_vec(),
        Body::TooLarge => format!(r#"{{"model":"claude-sonnet-4-6","pad":"{}"}}"#, "x".repeat(5000)).into_bytes(),
    }
}

/// The answers a correct gateway may give `setup`, whatever the event order. Only a body too
/// large has two where the size and the credential can be found wrong in either order.
pub fn expected(setup: &Setup) -> Vec<End> {
    let keys = setup.keys_loaded || setup.idp == Idp::Up;
    let credential = match setup.token {
        // An expired token fails a check that needs no key: refused even while keys are missing.
        Token::Missing | Token::DuplicateApiKey | Token::Expired => Some(401),
        _ if !keys => Some(503),
        Token::Forged => Some(401),
        Token::NoTier => Some(400),
        Token::Good => None,
    };
    let declared = !(setup.trailers && setup.profile == HostProfile::Envoy);
    // A declared length too large asks the IdP for no keys: a token that needs them to be
    // refused is not refused, and the length answers.
    let refused_without_fetch =
        setup.keys_loaded || matches!(setup.token, Token::Missing | Token::DuplicateApiKey | Token::Expired);
    match (setup.body, credential) {
        // The token is looked at before the declared length.
        (Body::TooLarge, Some(status)) if declared && refused_without_fetch => vec![End::Answered(status)],
        // Without a declared length, the body may pass the limit before a key fetch answers.
        (Body::TooLarge, Some(status)) if !declared => vec![End::Answered(400), End::Answered(status)],
        (Body::TooLarge, _) => vec![End::Answered(400)],
        (_, Some(status)) => vec![End::Answered(status)],
        _ if setup.spilled && setup.profile == HostProfile::Ngx => vec![End::Answered(500)],
        (Body::NotAllowed | Body::Invalid, None) => vec![End::Answered(400)],
        (Body::Allowed, None) => vec![End::Forwarded],
    }
}

/// A worker on the sim's plan (with the IdP's keys when `keys_loaded`) and a host whose IdP is
/// `idp`.
fn worker_and_host(keys_loaded: bool, idp: Idp) -> (Worker, FakeHost) {
    let mut worker = Worker::new(plan());
    let host = FakeHost {
        idp_up: idp == Idp::Up,
        data: RefCell::default(),
        next_id: Cell::new(0),
        pending: RefCell::default(),
    };
    if keys_loaded {
        let discovery = serde_json::json!({"issuer": ISSUER, "jwks_uri": "https://idp.test/keys"}).to_string();
        worker.on_fetched(&Fetch::Discovery, Some(200), discovery.as_bytes(), NOW);
        worker.on_fetched(&Fetch::Jwks, Some(200), jwks().as_bytes(), NOW);
    }
    (worker, host)
}

/// The step a request's headers get on `profile` from a worker with keys, for a good token
/// sent as `Authorization` and `x-api-key` after `headers`.
pub fn headers_step(profile: HostProfile, headers: &[(&str, &str)]) -> Step {
    let (mut worker, host) = worker_and_host(true, Idp::Up);
    let (token, bearer) = (token(Token::Good), format!("Bearer {}", token(Token::Good)));
    let mut all = headers.to_vec();
    all.extend([("Authorization", bearer.as_str()), ("x-api-key", token.as_str())]);
    Request::new(profile).on_request_headers(&mut worker, &host, &all, false)
}

/// The credential a simulated client sends as `kind`.
pub fn token_of(kind: Token) -> String {
    token(kind)
}

/// The step for request headers `headers` alone (no credential added), on a worker with keys.
pub fn bare_headers_step(profile: HostProfile, headers: &[(&str, &str)]) -> Step {
    let (mut worker, host) = worker_and_host(true, Idp::Up);
    Request::new(profile).on_request_headers(&mut worker, &host, headers, false)
}

/// A request with `kind`'s credential (none for [`Token::Missing`]) and `headers`, on a worker
/// with keys when `keys_loaded` (the IdP up): the headers' step, then, when the request was
/// not answered at its headers, the step a body of `body_len` bytes gets (the whole body in one
/// callback, as ngx hands it), and the key fetches dispatched.
pub fn head_and_body(
    profile: HostProfile,
    kind: Token,
    keys_loaded: bool,
    headers: &[(&str, &str)],
    body_len: usize,
) -> (Step, Option<Step>, usize) {
    let (mut worker, host) = worker_and_host(keys_loaded, Idp::Up);
    let t = token(kind);
    let bearer = format!("Bearer {t}");
    let mut all = headers.to_vec();
    if kind != Token::Missing {
        all.extend([("authorization", bearer.as_str()), ("x-api-key", t.as_str())]);
    }
    let mut request = Request::new(profile);
    let head = request.on_request_headers(&mut worker, &host, &all, false);
    let body = (head.reply.is_none()).then(|| {
        let bytes = vec![b' '; body_len];
        request.on_request_body(&mut worker, &host, bytes.len(), true, Some(&bytes))
    });
    let fetches = host.pending.borrow().len();
    (head, body, fetches)
}

/// Owned header pairs as the machine takes them.
fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

/// A worker with keys, its host, and a good request's simulation (one chunk) on `profile`.
fn good_request(profile: HostProfile) -> (Worker, FakeHost, Sim) {
    let (worker, host) = worker_and_host(true, Idp::Up);
    let sim = Sim::new(&Setup {
        profile,
        keys_loaded: true,
        idp: Idp::Up,
        token: Token::Good,
        body: Body::Allowed,
        chunks: 1,
        trailers: false,
        spilled: false,
    });
    (worker, host, sim)
}

/// A good request forwarded on `profile` (its body read whole), then the provider's answer
/// headers: returns that step.
pub fn answer_headers_step(profile: HostProfile, answer: super::AnswerHead<'_>, end_of_stream: bool) -> Step {
    let (mut worker, host, mut sim) = good_request(profile);
    let _ = sim.request.on_request_headers(&mut worker, &host, &pairs(&sim.headers), false);
    let body = sim.body.clone();
    let forwarded = sim.request.on_request_body(&mut worker, &host, body.len(), true, Some(&body));
    assert!(forwarded.forwarded, "the request is forwarded");
    sim.request.on_response_headers(&host, answer, end_of_stream)
}

/// A good request forwarded on `profile` that the host could not carry out (a header write
/// failed): the step that answers it, the step its own answer gets passing through, the step of
/// its end, and the units its tier's budget holds afterwards.
pub fn not_carried_out_steps(profile: HostProfile) -> ([Step; 3], u64) {
    let (mut worker, host, mut sim) = good_request(profile);
    let _ = sim.request.on_request_headers(&mut worker, &host, &pairs(&sim.headers), false);
    let body = sim.body.clone();
    let forwarded = sim.request.on_request_body(&mut worker, &host, body.len(), true, Some(&body));
    assert!(forwarded.forwarded, "the request is forwarded");
    let held: u64 = held_units(&host);
    assert!(held > 0, "admission held an estimate");
    let failed = sim.request.not_carried_out(&host, crate::reply::Reply::rewrite_failed("headers"));
    let answer = super::AnswerHead {
        status: Some(500),
        content_type: "application/json",
        length: None,
        error_type: None,
        headers: &[],
    };
    let passing = sim.request.on_response_headers(&host, answer, false);
    let done = sim.request.on_done(&mut worker, &host);
    ([failed, passing, done], held_units(&host))
}

/// A good request for the Bedrock-backed alias on `profile`, its body read whole: that step,
/// its end, and the units the budget counters hold afterwards.
pub fn bedrock_steps(profile: HostProfile) -> (Step, Step, u64) {
    let (mut worker, host, mut sim) = good_request(profile);
    let _ = sim.request.on_request_headers(&mut worker, &host, &pairs(&sim.headers), false);
    let body = String::from_utf8(sim.body.clone()).unwrap().replace("claude-sonnet-4-6", "claude-haiku-4-5");
    let step = sim.request.on_request_body(&mut worker, &host, body.len(), true, Some(body.as_bytes()));
    let done = sim.request.on_done(&mut worker, &host);
    (step, done, held_units(&host))
}

/// Units the budget counters in `host`'s shared data hold.
fn held_units(host: &FakeHost) -> u64 {
    let keys: Vec<String> = host.data.borrow().keys().filter(|k| k.starts_with("csg/b/")).cloned().collect();
    keys.iter().map(|k| crate::budget::read(host, k).c).sum()
}

/// A good request held at its headers on Envoy, then answered by the host layer with `reply`,
/// answered so again, then its body and its end arriving: the four steps.
pub fn answered_elsewhere_steps(reply: crate::reply::Reply) -> [Step; 4] {
    let (mut worker, host, mut sim) = good_request(HostProfile::Envoy);
    let held = sim.request.on_request_headers(&mut worker, &host, &pairs(&sim.headers), false);
    assert!(held.reply.is_none() && held.flow == Flow::Pause, "the request is held");
    let answered = sim.request.answered_elsewhere(&mut worker, &host, reply.clone());
    let again = sim.request.answered_elsewhere(&mut worker, &host, reply);
    let body = sim.body.clone();
    let late = sim.request.on_request_body(&mut worker, &host, body.len(), true, Some(&body));
    let done = sim.request.on_done(&mut worker, &host);
    [answered, again, late, done]
}

/// A request on Envoy whose token names a key the worker's JWKS lacks: its refetch answered by
/// an IdP that is `idp` (up: still without that key). Returns the answer it gets.
pub fn unknown_kid_answer(idp: Idp) -> Option<crate::reply::Reply> {
    let (mut worker, mut host) = worker_and_host(true, Idp::Up);
    host.idp_up = idp == Idp::Up;
    let claims =
        serde_json::json!({"iss": ISSUER, "aud": "gw", "sub": "alice", "groups": ["standard"], "exp": NOW + 600});
    let mut claims = Claims::with_custom_claims(claims, Duration::from_secs(0));
    (claims.issued_at, claims.expires_at, claims.invalid_before) = (None, None, None);
    let rotated = Ed25519KeyPair::generate().with_key_id("k2");
    let token = rotated.sign(claims).ok()?;
    let bearer = format!("Bearer {token}");
    let body = br#"{"model":"claude-haiku-4-5","max_tokens":10,"messages":[]}"#;
    let length = body.len().to_string();
    let headers = [
        (":method", "POST"),
        (":path", "/v1/messages"),
        ("content-length", length.as_str()),
        ("authorization", bearer.as_str()),
    ];
    let mut request = Request::new(HostProfile::Envoy);
    let mut steps = vec![request.on_request_headers(&mut worker, &host, &headers, false)];
    steps.push(request.on_request_body(&mut worker, &host, body.len(), true, Some(body)));
    while let Some((id, fetch)) = host.pending.borrow_mut().pop_front() {
        let (status, doc) = match (host.idp_up, fetch) {
            (false, _) => (Some(503), String::new()),
            (true, _) => (Some(200), jwks()),
        };
        steps.push(request.on_keys_fetched(&mut worker, &host, id, status, doc.as_bytes()).0);
    }
    steps.into_iter().find_map(|step| step.reply)
}

/// Drives one request through `events` (then lets the host finish what is left) and checks the
/// invariant at every step. Returns how it ended, or the violated rule.
pub fn run(setup: &Setup, events: &[Event]) -> Result<End, String> {
    let (mut worker, host) = worker_and_host(setup.keys_loaded, setup.idp);
    let mut sim = Sim::new(setup);
    let step = {
        let eos = sim.body.is_empty() && !sim.trailers;
        sim.request.on_request_headers(&mut worker, &host, &pairs(&sim.headers), eos)
    };
    sim.apply(step, Stage::Headers)?;
    for event in events.iter().chain(std::iter::repeat_n(&Event::Answer, 4)) {
        sim.event(*event, &mut worker, &host)?;
    }
    // The host finishes: the client sends the rest, callouts answer.
    for _ in 0..(sim.chunks.len() + 8) {
        for event in [Event::Chunk, Event::Trailers, Event::Answer] {
            sim.event(event, &mut worker, &host)?;
        }
    }
    let step = sim.request.on_done(&mut worker, &host);
    if step.reply.is_some() || step.resume || step.forwarded {
        return Err("the end of a request produced an answer or a forward".into());
    }
    sim.count_record(&step)?;
    if sim.records != 1 {
        return Err(format!("{} usage records for one request", sim.records));
    }
    sim.end.clone().ok_or_else(|| "the request hangs: neither answered, forwarded nor reset".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Headers,
    Body,
    Trailers,
    Callout,
}

struct Sim {
    profile: HostProfile,
    request: Request,
    headers: Vec<(String, String)>,
    token: String,
    body: Vec<u8>,
    chunks: Vec<usize>,
    sent: usize,
    trailers: bool,
    trailers_sent: bool,
    spilled: bool,
    /// Which callback is paused and waits for a resume.
    paused: Option<Stage>,
    /// ngx: nginx may read the body (headers continued or were resumed).
    may_read: bool,
    end: Option<End>,
    records: usize,
}

impl Sim {
    fn new(setup: &Setup) -> Sim {
        let token = token(setup.token);
        let body = body(setup.body);
        let mut headers: Vec<(String, String)> = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/v1/messages?beta=true".into()),
            ("content-type".into(), "application/json".into()),
            // nginx hands names as the client spelt them.
            ("X-User-Tier".into(), "power".into()),
            ("x-authenticated-user".into(), "mallory".into()),
        ];
        match setup.token {
            Token::Missing => {}
            Token::DuplicateApiKey => {
                headers.push(("x-api-key".into(), token.clone()));
                headers.push(("x-api-key".into(), "other".into()));
            }
            _ => {
                headers.push(("Authorization".into(), format!("Bearer {token}")));
                headers.push(("x-api-key".into(), token.clone()));
                // A proxy in front that copied the token, a cookie holding it.
                headers.push(("X-Forwarded-Access-Token".into(), token.clone()));
                headers.push(("cookie".into(), format!("theme=dark; id_token={token}")));
            }
        }
        headers.push(("Proxy-Authorization".into(), "Basic YWxpY2U6cHJveHktcGFzc3dvcmQ=".into()));
        let trailers = setup.trailers && setup.profile == HostProfile::Envoy;
        if !trailers {
            headers.push(("Content-Length".into(), body.len().to_string()));
        }
        let n = if setup.profile == HostProfile::Ngx { 1 } else { setup.chunks.clamp(1, 8) };
        let cuts: Vec<usize> = (1..=n).map(|i| body.len() * i / n).collect();
        Sim {
            profile: setup.profile,
            request: Request::new(setup.profile),
            headers,
            token,
            body,
            chunks: cuts,
            sent: 0,
            trailers,
            trailers_sent: false,
            spilled: setup.spilled && setup.profile == HostProfile::Ngx,
            paused: None,
            may_read: false,
            end: None,
            records: 0,
        }
    }

    fn body_done(&self) -> bool {
        self.sent == self.chunks.len() && (!self.trailers || self.trailers_sent)
    }

    fn event(&mut self, event: Event, worker: &mut Worker, host: &FakeHost) -> Result<(), String> {
        if self.end.is_some() {
            // After the end only callouts still answer (their context may be gone on Envoy).
            if event == Event::Answer {
                host.pending.borrow_mut().pop_front();
            }
            return Ok(());
        }
        match event {
            Event::Chunk => self.chunk(worker, host),
            Event::Trailers if self.trailers && !self.trailers_sent && self.sent == self.chunks.len() => {
                self.trailers_sent = true;
                let step = self.request.on_request_trailers(worker, host, Some(&self.body));
                self.apply(step, Stage::Trailers)
            }
            Event::Trailers => Ok(()),
            Event::Answer => {
                let Some((id, fetch)) = host.pending.borrow_mut().pop_front() else { return Ok(()) };
                let (status, doc) = match (host.idp_up, fetch) {
                    (false, _) => (Some(503), String::new()),
                    (true, Fetch::Discovery) => (
                        Some(200),
                        serde_json::json!({"issuer": ISSUER, "jwks_uri": "https://idp.test/keys"}).to_string(),
                    ),
                    (true, Fetch::Jwks) => (Some(200), jwks()),
                };
                let (step, _) = self.request.on_keys_fetched(worker, host, id, status, doc.as_bytes());
                self.apply(step, Stage::Callout)
            }
            Event::Reset => {
                self.end = Some(End::Reset);
                let step = self.request.on_done(worker, host);
                self.count_record(&step)
            }
        }
    }

    fn chunk(&mut self, worker: &mut Worker, host: &FakeHost) -> Result<(), String> {
        if self.sent == self.chunks.len() {
            return Ok(());
        }
        if self.profile == HostProfile::Ngx {
            if !self.may_read {
                return Ok(());
            }
            self.sent = self.chunks.len();
            let body = if self.spilled { None } else { Some(self.body.clone()) };
            let step = self.request.on_request_body(worker, host, self.body.len(), true, body.as_deref());
            return self.apply(step, Stage::Body);
        }
        let size = self.chunks[self.sent];
        self.sent += 1;
        let eos = self.sent == self.chunks.len() && !self.trailers;
        let whole = eos.then(|| self.body[..size].to_vec());
        let step = self.request.on_request_body(worker, host, size, eos, whole.as_deref());
        self.apply(step, Stage::Body)
    }

    fn count_record(&mut self, step: &Step) -> Result<(), String> {
        if let Some(record) = &step.record {
            self.records += 1;
            if record.to_json().contains(&self.token) {
                return Err("the token is in the usage record".into());
            }
        }
        Ok(())
    }

    fn apply(&mut self, step: Step, stage: Stage) -> Result<(), String> {
        self.count_record(&step)?;
        for name in &step.remove_headers {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
        for (name, value) in &step.set_headers {
            let first = self.headers.iter().position(|(n, _)| n.eq_ignore_ascii_case(name));
            match (self.profile, first) {
                // ngx_wasm_module sets a header's first copy; nginx proxies the others as sent.
                (HostProfile::Ngx, Some(i)) => self.headers[i].1 = value.clone(),
                _ => {
                    self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                    self.headers.push((name.clone(), value.clone()));
                }
            }
        }
        if step.resume && self.paused.is_none() {
            return Err(format!("{stage:?}: resume without a paused callback"));
        }
        if step.body.is_some() && !step.forwarded {
            return Err(format!("{stage:?}: body replaced outside the forwarding step"));
        }
        let reaches_upstream = match (self.profile, stage, step.flow) {
            // ngx resumed at the headers goes on to read the body; anything else resumed goes up.
            (HostProfile::Ngx, Stage::Callout, _) if self.paused == Some(Stage::Headers) => false,
            (_, Stage::Callout, _) => step.resume,
            // ngx does not send anything before the body callback returns.
            (HostProfile::Ngx, Stage::Headers, _) => false,
            (_, _, Flow::Continue) => true,
            (_, _, Flow::Pause) => step.resume,
        };
        if let Some(reply) = &step.reply {
            if step.forwarded || reaches_upstream {
                return Err(format!("{stage:?}: answered and forwarded at once"));
            }
            let closes = reply.headers.iter().any(|(n, v)| n == "connection" && v == "close");
            if self.profile == HostProfile::Ngx
                && !self.body_done()
                && self.sent == 0
                && !self.body.is_empty()
                && !closes
            {
                return Err(format!("{stage:?}: ngx answer {} with the body unread (breaks keep-alive)", reply.status));
            }
            self.end = Some(End::Answered(reply.status));
            return Ok(());
        }
        if reaches_upstream {
            self.check_forward(&step, stage)?;
            self.end = Some(End::Forwarded);
            return Ok(());
        }
        if step.forwarded {
            return Err(format!("{stage:?}: decided to forward but the host was told to hold"));
        }
        match (self.profile, stage, step.flow, step.resume) {
            (HostProfile::Ngx, Stage::Headers, Flow::Continue, _) => self.may_read = true,
            (HostProfile::Ngx, Stage::Callout, _, true) => {
                self.may_read = true;
                self.paused = None;
            }
            (_, Stage::Headers | Stage::Body | Stage::Trailers, Flow::Pause, _) => self.paused = Some(stage),
            _ => {}
        }
        Ok(())
    }

    fn check_forward(&self, step: &Step, stage: Stage) -> Result<(), String> {
        if !step.forwarded && !self.request.is_forwarded() {
            return Err(format!("{stage:?}: request reached the upstream before the decision"));
        }
        if !self.body_done() {
            return Err(format!("{stage:?}: forwarded before the whole body was seen"));
        }
        let get = |name: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        if get("x-api-key") != [PROVIDER_KEY] {
            return Err(format!("x-api-key upstream is {:?}", get("x-api-key")));
        }
        if get("authorization").iter().any(|v| !v.is_empty()) {
            return Err("the client's Authorization reached the upstream".into());
        }
        if get("x-user-tier") != ["standard"] || get("x-authenticated-user") != ["alice"] {
            return Err("identity headers upstream are not the gateway's own".into());
        }
        // (Its signature alone is as good as the token to whoever has the rest.)
        let signature = self.token.rsplit('.').next().unwrap_or(&self.token);
        if self.headers.iter().any(|(_, v)| v.contains(&self.token) || v.contains(signature)) {
            return Err("the user's token reached the upstream".into());
        }
        if get("cookie").iter().chain(&get("proxy-authorization")).any(|v| !v.is_empty()) {
            return Err("the client's cookies or proxy credential reached the upstream".into());
        }
        // What each host makes of the edit (Envoy's `Buffer::copyFrom` at offset 0 drains and
        // prepends; ngx_wasm_module's `ngx_wasm_chain_append` at 0 replaces the body with the
        // bytes cut to the size given, or prepends them when that size is 0).
        let body = match (&step.body, self.profile) {
            (None, _) => self.body.clone(),
            (Some(edit), HostProfile::Envoy) => {
                [edit.bytes.as_slice(), self.body.get(edit.replaced..).unwrap_or_default()].concat()
            }
            (Some(edit), HostProfile::Ngx) if edit.replaced == 0 => [edit.bytes.as_slice(), &self.body].concat(),
            (Some(edit), HostProfile::Ngx) => edit.bytes.get(..edit.replaced).unwrap_or(&edit.bytes).to_vec(),
        };
        // nginx sets Content-Length itself from the body it sends.
        if self.profile == HostProfile::Envoy && get("content-length") != [body.len().to_string().as_str()] {
            return Err("content-length does not match the forwarded body".into());
        }
        // The body upstream is the client's with only `model` changed.
        let mut expected: serde_json::Value =
            serde_json::from_slice(&self.body).map_err(|e| format!("the client's body: {e}"))?;
        expected["model"] = "claude-sonnet-4-6-20990101".into();
        if serde_json::from_slice::<serde_json::Value>(&body).ok() != Some(expected) {
            return Err(format!(
                "the body upstream is not the client's with the model rewritten: {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    }
}

/// A good request on `profile` with `extra` headers after its own, its body read whole: the
/// headers' step and the body's.
pub fn steps_with(profile: HostProfile, extra: &[(&str, &str)]) -> (Step, Step) {
    let (mut worker, host, mut sim) = good_request(profile);
    let mut headers = pairs(&sim.headers);
    headers.extend_from_slice(extra);
    let head = sim.request.on_request_headers(&mut worker, &host, &headers, false);
    let body = sim.body.clone();
    let step = sim.request.on_request_body(&mut worker, &host, body.len(), true, Some(&body));
    (head, step)
}

/// A request on ngx to `method` `path` with `token`, its headers saying `Transfer-Encoding:
/// chunked`; the body turns out empty, so ngx_wasm_module calls no body callback and nginx
/// proxies the request. Returns the headers' step, whether the machine took it as proxied
/// undecided, and the step the upstream's answer gets.
pub fn ngx_empty_chunked(method: &str, path: &str, kind: Token, status: u32) -> (Step, bool, Option<Step>) {
    let (mut worker, host) = worker_and_host(true, Idp::Up);
    let t = token(kind);
    let bearer = format!("Bearer {t}");
    let mut headers = vec![(":method", method), (":path", path), ("transfer-encoding", "chunked")];
    if kind != Token::Missing {
        headers.extend([("authorization", bearer.as_str()), ("x-api-key", t.as_str())]);
    }
    let mut request = Request::new(HostProfile::Ngx);
    let head = request.on_request_headers(&mut worker, &host, &headers, false);
    let undecided = request.proxied_undecided();
    let Some((answer, _)) = request.on_undecided_answer(Some(status)) else {
        assert_eq!(request.replaced_chunk(), None, "an answer that stands is not replaced");
        return (head, undecided, None);
    };
    let first = request.replaced_chunk();
    assert_eq!(request.replaced_chunk().as_deref(), Some(&[][..]), "later chunks are dropped");
    (head, undecided, Some(Step { response_body: first, ..answer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a restart, requests without keys each fetch them; one whose discovery answers after
    /// another request installed the keys fetches nothing more, and goes on at once.
    #[test]
    fn a_discovery_answered_after_another_request_installed_the_keys_fetches_nothing_more() {
        let (mut worker, host) = worker_and_host(false, Idp::Up);
        let token = token(Token::Good);
        let bearer = format!("Bearer {token}");
        let headers = [
            (":method", "POST"),
            (":path", "/v1/messages"),
            ("content-type", "application/json"),
            ("content-length", "40"),
            ("authorization", bearer.as_str()),
        ];
        let (mut a, mut b) = (Request::new(HostProfile::Envoy), Request::new(HostProfile::Envoy));
        a.on_request_headers(&mut worker, &host, &headers, false);
        b.on_request_headers(&mut worker, &host, &headers, false);
        let discoveries: Vec<(u32, Fetch)> = host.pending.borrow_mut().drain(..).collect();
        assert!(discoveries.iter().all(|(_, f)| *f == Fetch::Discovery) && discoveries.len() == 2, "{discoveries:?}");
        let discovery = serde_json::json!({"issuer": ISSUER, "jwks_uri": "https://idp.test/keys"}).to_string();
        a.on_keys_fetched(&mut worker, &host, discoveries[0].0, Some(200), discovery.as_bytes());
        let (jwks_id, fetch) = host.pending.borrow_mut().pop_front().unwrap();
        assert_eq!(fetch, Fetch::Jwks);
        a.on_keys_fetched(&mut worker, &host, jwks_id, Some(200), jwks().as_bytes());
        assert!(matches!(a.auth, super::super::Auth::Admitted(_)));
        b.on_keys_fetched(&mut worker, &host, discoveries[1].0, Some(200), discovery.as_bytes());
        assert!(host.pending.borrow().is_empty(), "a JWKS fetch for keys already installed");
        assert!(matches!(b.auth, super::super::Auth::Admitted(_)));
    }
}
