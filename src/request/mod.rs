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

use crate::credential_refusal::{CredentialRefusal, SentCredentials, NOTHING_SENT};
use crate::error_page::ErrorPage;
use crate::gateway::{Admission, AuthOutcome, FetchProgress, Forward, Route, Worker};
use crate::jwt::{self, AuthError};
use crate::keystore::{Callout, Fetch};
use crate::metering::{Metering, Outcome, Settlement};
use crate::record::UsageRecord;
use crate::reply::{Reply, ToReply};
use crate::routing::{BodyEdit, Endpoint, RequestError};
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
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
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
    /// A change to the request body (for ngx always a whole new body).
    pub body: Option<BodyEdit>,
    /// A local answer; after it nothing is forwarded.
    pub reply: Option<Reply>,
    /// Resume a request a host callback paused earlier.
    pub resume: bool,
    /// True on the one step that lets the request go upstream (for tests and logs).
    pub forwarded: bool,
    /// Response headers to set.
    pub response_headers: Vec<(String, String)>,
    /// Response headers to remove.
    pub remove_response_headers: Vec<String>,
    /// Bytes to send in place of the response chunk just delivered.
    pub response_body: Option<Vec<u8>>,
    /// A local answer in place of an upstream answer that ended at its headers, which no body
    /// can be added to (the provider refusing the gateway's key with an empty 401): the gateway's
    /// own replacement of the upstream's answer, not a refusal of the request.
    pub replaced_answer: Option<Reply>,
    /// A request's accounting finished: report it.
    pub settled: Option<Settlement>,
    /// The request's usage record, once, when it is over (answered, settled or abandoned).
    pub record: Option<UsageRecord>,
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

/// `auth`, except that a token refused for an unknown key after the IdP could not be asked (the
/// fetch failed or could not be made) is refused `503` as for missing keys: the key may be one
/// the IdP just rotated in, and a new token, signed with it too, cannot help; a 401 would have
/// Claude Code re-run its sign-in for minutes.
fn unknown_key_is_unavailable(auth: Auth) -> Auth {
    match auth {
        Auth::Refused(reply) if reply.reason == AuthError::UnknownKey.code() => {
            Auth::Refused(crate::keystore::KeysError::Unavailable.to_reply())
        }
        other => other,
    }
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
    /// `content-encoding` values other than `identity`.
    encoded: Option<&'a str>,
    chunked: bool,
    session: Option<&'a str>,
    betas: Vec<&'a str>,
    /// Names of `x-amz…` headers (AWS's own, e.g. `x-amzn-bedrock-service-tier`), lower-case.
    aws: Vec<String>,
}

impl<'a> Head<'a> {
    fn read(headers: &[(&'a str, &'a str)]) -> Head<'a> {
        let mut head = Head::default();
        for &(name, value) in headers {
            // Envoy hands names lower-case; nginx as the client spelt them.
            let lower = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(name.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(name)
            };
            match &*lower {
                ":method" => head.method = value,
                ":path" => head.path = value,
                "authorization" => head.authorization.push(value),
                "x-api-key" => head.api_key.push(value),
                "content-length" => head.content_length = Some(value),
                "content-encoding" if !value.trim().is_empty() && !value.trim().eq_ignore_ascii_case("identity") => {
                    head.encoded = Some(value)
                }
                "transfer-encoding" => head.chunked = true,
                "x-claude-code-session-id" => head.session = Some(value),
                "anthropic-beta" => head.betas.push(value),
                aws if aws.starts_with("x-amz") => head.aws.push(aws.to_owned()),
                _ => {}
            }
        }
        head
    }
}

/// The most header pairs ngx_wasm_module hands a filter (`NGX_HTTP_WASM_MAX_REQ_HEADERS`); it
/// truncates longer lists.
const NGX_MAX_HEADER_PAIRS: usize = 100;

/// Request headers the forward sets or clears besides the stripped ones (Bedrock signs
/// `content-type` and `accept`; `accept-encoding: identity` keeps the answer readable for the
/// meter). ngx sets or clears only a header's first copy and nginx forwards the others, so each
/// may come once.
const SET_BY_FORWARD: [&str; 3] = ["accept-encoding", "content-type", "accept"];

/// Whether the client's header `name` is `wanted` (lower-case, with dashes) under any spelling:
/// any case, and `_` for `-`, since CGI-style readers behind the gateway (`HTTP_X_USER_TIER`)
/// take `x_user_tier` for `x-user-tier`, and Envoy forwards such names by default.
fn same_header(name: &str, wanted: &str) -> bool {
    name.len() == wanted.len()
        && name.bytes().zip(wanted.bytes()).all(|(a, b)| {
            let a = if a == b'_' { b'-' } else { a.to_ascii_lowercase() };
            let b = if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
            a == b
        })
}

/// The client's headers that the gateway takes away or sets itself.
#[derive(Debug, Default, PartialEq)]
struct Guarded {
    /// The client's names (lower-case, as spelt) of the stripped headers it sent.
    present: Vec<String>,
    /// The first guarded header sent more than once under one spelling (any case).
    repeated: Option<String>,
}

impl Guarded {
    /// The `stripped` headers and those the forward sets among `headers`, and the `carriers`
    /// (names, lower-case) taken away like the stripped ones.
    fn find(stripped: &[&str], carriers: &[String], headers: &[(&str, &str)], aws: &[String]) -> Guarded {
        let mut guarded = Guarded::default();
        // Each spelling is its own header to the host, taken away or set on its own; a repeated
        // one is refused, since ngx clears or sets its first copy only.
        let mut seen: Vec<&str> = Vec::new();
        for &(name, _) in headers {
            let set_by_forward = || SET_BY_FORWARD.iter().any(|g| same_header(name, g));
            let taken_away =
                stripped.iter().any(|g| same_header(name, g)) || carriers.iter().any(|c| c.eq_ignore_ascii_case(name));
            if !taken_away && !set_by_forward() {
                continue;
            }
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                if guarded.repeated.is_none() {
                    guarded.repeated = Some(name.to_ascii_lowercase());
                }
                continue;
            }
            if taken_away {
                guarded.present.push(name.to_ascii_lowercase());
            }
            seen.push(name);
        }
        // A Bedrock target clears every `x-amz…` header of the client.
        if guarded.repeated.is_none() {
            guarded.repeated = aws.iter().enumerate().find(|(i, n)| aws[..*i].contains(n)).map(|(_, n)| n.clone());
        }
        guarded
    }
}

/// Bytes of a credential that a header value must hold to carry it: fewer would match ordinary
/// values (a JWT's signature has 43 and more).
const MIN_CARRIED_BYTES: usize = 16;

/// Names (lower-case) of the client's headers, besides `authorization` and `x-api-key`, whose
/// value holds the credential those carry: a proxy in front that copied the token into
/// `x-forwarded-access-token`, a cookie holding it. They are taken away like the credential's
/// own headers, so that the provider never gets it. A copy of a JWT holds its signature (the
/// part after the last `.`; the whole credential when that part is shorter than
/// [`MIN_CARRIED_BYTES`]). A value that is not UTF-8 cannot be searched (the host layer hands
/// [`crate::header_map::NOT_UTF8`] for it): with a credential in the request, it is taken away too.
fn credential_carriers(headers: &[(&str, &str)], head: &Head<'_>) -> Vec<String> {
    fn secret(credential: &str) -> Option<&str> {
        // (memrchr goes 16 bytes at a time; `rsplit` one at a time, over a signature of hundreds.)
        let signature = memchr::memrchr(b'.', credential.as_bytes())
            .and_then(|dot| credential.get(dot + 1..))
            .unwrap_or(credential);
        [signature, credential].into_iter().find(|s| s.len() >= MIN_CARRIED_BYTES)
    }
    // A credential sent twice is refused, so the first copies are all a forward can hold.
    let bearer = head.authorization.first().map(|v| v.trim().split_once(' ').map_or(v.trim(), |(_, t)| t.trim()));
    let api_key = head.api_key.first().map(|v| v.trim());
    // Claude Code sends its token in both headers (`same_bytes`: `==` compares byte by byte in
    // the VM, which for a token cost more than the rest of the request's headers' step).
    let api_key = api_key.filter(|key| !bearer.is_some_and(|b| crate::scan::same_bytes(b.as_bytes(), key.as_bytes())));
    let secrets = [bearer.and_then(secret), api_key.and_then(secret)];
    let mut carriers: Vec<String> = Vec::new();
    if secrets.iter().all(Option::is_none) {
        return carriers;
    }
    for &(name, value) in headers {
        // The credential's own headers go anyway; a pseudo-header cannot be taken away.
        if name.starts_with(':') || same_header(name, "authorization") || same_header(name, "x-api-key") {
            continue;
        }
        let unreadable = value == crate::header_map::NOT_UTF8;
        // (Most values are shorter than a signature: no search at all.)
        let holds = |s: &&str| value.len() >= s.len() && memchr::memmem::find(value.as_bytes(), s.as_bytes()).is_some();
        if (unreadable || secrets.iter().flatten().any(holds)) && !carriers.iter().any(|c| c.eq_ignore_ascii_case(name))
        {
            carriers.push(name.to_ascii_lowercase());
        }
    }
    carriers
}

/// What the response headers say, as far as the request reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerHead<'a> {
    /// `:status`.
    pub status: Option<u32>,
    /// `content-type` (empty when absent).
    pub content_type: &'a str,
    /// `content-length`.
    pub length: Option<u64>,
    /// Bedrock's `x-amzn-errortype`, read only when [`Request::translates_answer`].
    pub error_type: Option<&'a str>,
    /// Every header of the answer, as the host listed them.
    pub headers: &'a [(&'a str, &'a str)],
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
    /// The `model` the body asked for, when it was refused (for the usage record).
    refused_model: Option<String>,
    /// The bearer token, kept only while a key callout is pending.
    pending_token: Option<String>,
    /// Host time at the latest event, milliseconds.
    now_ms: u64,
    started_ms: u64,
    first_byte_ms: Option<u64>,
    session: Option<String>,
    route: Option<Route>,
    /// The usage record was handed out.
    recorded: bool,
    /// The answer's status.
    status: Option<u32>,
    /// The tier of an admitted person, for the record of a refusal after admission.
    admitted_tier: Option<String>,
    /// An admitted person whose request ngx refuses at the body, for that refusal's record.
    refused_identity: Option<std::rc::Rc<crate::jwt::Identity>>,
    /// The client's `anthropic-beta` header values (a Bedrock target moves them into the body).
    betas: Vec<String>,
    /// The client's `x-amz…` header names: Bedrock takes parameters (service tier, guardrails,
    /// latency) as headers, and only the gateway chooses what a Bedrock request costs.
    aws_headers: Vec<String>,
    /// The answer comes from Bedrock and is translated back.
    answer_translation: Option<crate::bedrock::Answer>,
    /// The credentials the gateway sent upstream (its target's), which no answer may hand the client.
    sent: Option<std::sync::Arc<SentCredentials>>,
    /// The proxy refused the forwarded request itself, for a reason it named in the answer
    /// ([`crate::answer_headers::NO_ROUTE`]): recorded as that refusal.
    proxy_refusal: Option<&'static str>,
    /// Anthropic refused the gateway's own key: the answer is replaced by a 502.
    credential_refusal: Option<CredentialRefusal>,
    /// A proxy's HTML error page being replaced by Anthropic's error shape.
    error_page: Option<ErrorPage>,
    /// The body replacing the upstream's answer to a request ngx proxied undecided (empty once
    /// handed out: later chunks are dropped).
    replacement: Option<Vec<u8>>,
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
            refused_model: None,
            pending_token: None,
            now_ms: 0,
            started_ms: 0,
            first_byte_ms: None,
            session: None,
            route: None,
            recorded: false,
            status: None,
            admitted_tier: None,
            refused_identity: None,
            betas: Vec::new(),
            aws_headers: Vec::new(),
            answer_translation: None,
            sent: None,
            proxy_refusal: None,
            credential_refusal: None,
            error_page: None,
            replacement: None,
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

    /// Whether the host sent the request upstream before the filter decided it: ngx calls no
    /// body callback for a chunked body that turns out empty, and nginx then proxies the request
    /// (which carries nothing of the client's: the stripped headers were emptied at the headers).
    pub fn proxied_undecided(&self) -> bool {
        self.profile == HostProfile::Ngx && matches!(self.phase, Phase::Deciding) && matches!(self.held, Held::None)
    }

    /// The upstream answered a request the host proxied undecided ([`Self::proxied_undecided`]):
    /// the client gets what the request would have got with its empty body (the refusal already
    /// decided, or "no model"), never the upstream's answer. The answer is rewritten in place
    /// (status and headers here, the body by [`Self::replaced_chunk`]): a local answer sent at
    /// this point hangs the request on ngx. Returns the step and the reply it stands for, or
    /// `None` for nginx's own answer about reading the body (408, 413: nginx answers those
    /// itself, without proxying), which stands.
    pub fn on_undecided_answer(&mut self, status: Option<u32>) -> Option<(Step, Reply)> {
        if matches!(status, Some(408 | 413)) {
            return None;
        }
        let reply = match &self.auth {
            Auth::Refused(reply) => reply.clone(),
            _ => RequestError::MissingModel.to_reply(),
        };
        let mut step = self.answer(reply.clone());
        step.reply = None;
        step.flow = Flow::Continue;
        step.response_headers = vec![(":status".to_owned(), reply.status.to_string())];
        step.response_headers.extend(reply.headers.iter().cloned());
        step.remove_response_headers = vec!["content-length".to_owned(), "content-encoding".to_owned()];
        self.status = Some(reply.status);
        self.replacement = Some(reply.body.clone());
        Some((step, reply))
    }

    /// What replaces a chunk of the upstream's answer to a request ngx proxied undecided: the
    /// reply's body for the first, nothing for the rest; `None` for any other request.
    pub fn replaced_chunk(&mut self) -> Option<Vec<u8>> {
        self.replacement.as_mut().map(std::mem::take)
    }

    /// Request headers arrived (all of them, as the host lists them; names in any case).
    pub fn on_request_headers(
        &mut self,
        worker: &mut Worker,
        host: &dyn Host,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Step {
        if !matches!(self.phase, Phase::New) {
            return self.settled_flow();
        }
        self.now_ms = host.now_ms();
        self.started_ms = self.now_ms;
        let mut head = Head::read(headers);
        self.betas = head.betas.iter().map(|b| (*b).to_owned()).collect();
        self.aws_headers = std::mem::take(&mut head.aws);
        // An id for grouping a person's requests, not trusted for anything else: kept short and
        // printable so it cannot break a log line.
        self.session =
            head.session.filter(|s| s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).map(str::to_owned);
        self.endpoint = Endpoint::classify(head.method, head.path);
        // By its number, as the host reads it: nginx takes `Content-Length: 00` for no body.
        let declared_empty = head.content_length.is_some_and(|l| l.trim().parse::<u64>() == Ok(0));
        let has_body = match self.profile {
            HostProfile::Envoy => !end_of_stream && !declared_empty,
            // ngx never says end of stream here and may never call the body callback for a
            // request without one: only a declared length or chunked encoding means a body.
            // (An HTTP/2 request without content-length is therefore answered 400 on ngx.)
            HostProfile::Ngx => head.chunked || (head.content_length.is_some() && !declared_empty),
        };
        // ngx_wasm_module hands a filter the first 100 header pairs (its pseudo-headers among
        // them) and drops the rest unseen, where a second `x-api-key` or identity header could
        // pass; Envoy itself refuses more than 100. So on ngx a full list is refused at once.
        if self.profile == HostProfile::Ngx && headers.len() >= NGX_MAX_HEADER_PAIRS {
            return self
                .refuse_repeated(RequestError::TooManyHeaders { max: NGX_MAX_HEADER_PAIRS }.to_reply(), has_body);
        }
        // Everything the client may not choose is taken away before anything else happens, so no
        // later path can forward it.
        let carriers = credential_carriers(headers, &head);
        let Guarded { present, repeated } =
            Guarded::find(&worker.stripped_headers(), &carriers, headers, &self.aws_headers);
        let early = match self.endpoint {
            // Whatever the path, below: on ngx such a request must be answered at once.
            _ if repeated.is_some() => None,
            // A body sent with the check is read first on ngx, like any other (below).
            Endpoint::Hello => Some(Reply::empty(200)),
            Endpoint::NotFound => {
                let path = head.path.split_once('?').map_or(head.path, |(path, _)| path);
                Some(RequestError::NotFound { method: head.method.to_owned(), path: path.to_owned() }.to_reply())
            }
            _ => None,
        };
        if let Some(reply) = early {
            let mut step = self.refuse_early(reply, has_body);
            // ngx answers at the body, and never calls the filter there for a chunked body that
            // turns out empty: nginx then proxies the request, which must carry nothing of the
            // client's (no provider key is ever set on this path).
            if self.profile == HostProfile::Ngx {
                step.set_headers = present.into_iter().map(|n| (n, String::new())).collect();
            }
            return step;
        }
        self.phase = Phase::Deciding;
        let mut step = match repeated {
            // One value each: ngx cannot take every copy of a repeated header away (below).
            Some(name) if name == "authorization" || name == "x-api-key" => {
                self.refuse_repeated(AuthError::DuplicateCredential.to_reply(), has_body)
            }
            Some(name) => self.refuse_repeated(RequestError::RepeatedHeader(name).to_reply(), has_body),
            None => self.decide_head(worker, host, &head, has_body),
        };
        match self.profile {
            // Content-Length stays: the headers are held until the decision, and the forward sets
            // it whenever it changes the body (a body sent as it came keeps the client's framing).
            HostProfile::Envoy => step.remove_headers = present,
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
        // A length past what usize holds (32 bits in the VM) or past u64 is too large, not "not
        // a number".
        let declared = head.content_length.map(|l| match l.trim().parse::<u64>() {
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(u64::MAX),
            parsed => parsed,
        });
        // Broken framing, which the hosts themselves answer 400 before any filter.
        if let Some(Err(_)) = declared {
            return self.answer(RequestError::InvalidLength.to_reply());
        }
        // Who asks comes before what is asked, as Anthropic's API and Envoy's `jwt_authn` answer:
        // a request without a usable token is a 401 whatever its body, and says nothing of the
        // limits behind the gateway.
        let token = match jwt::take_token(head.authorization.first().copied(), head.api_key.first().copied()) {
            Ok(token) => token,
            Err(e) => return self.refuse_early(e.to_reply(), has_body),
        };
        let body_problem = match declared {
            Some(Ok(len)) if len > u64::try_from(max).unwrap_or(u64::MAX) => {
                Some(RequestError::TooLarge { max }.to_reply())
            }
            _ if !has_body => Some(RequestError::MissingModel.to_reply()),
            // Claude Code never compresses a request; a provider that decodes one would read
            // another body than the one checked here.
            _ => head.encoded.map(|coding| RequestError::Encoded(coding.trim().to_owned()).to_reply()),
        };
        // A request the body alone refuses asks the IdP for no keys: no callout may outlive it.
        self.authenticate(worker, host, token, body_problem.is_none());
        if let Some(problem) = body_problem {
            let reply = match &self.auth {
                // A token refused on its own merits answers first; one refused only because its
                // key could not be fetched here might be good.
                Auth::Refused(refusal) if refusal.status < 500 && refusal.reason != AuthError::UnknownKey.code() => {
                    refusal.clone()
                }
                _ => problem,
            };
            return self.refuse_early(reply, has_body);
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
        self.auth = match worker.authenticate(host, token, host.now(), may_fetch) {
            AuthOutcome::Admitted(admission) => Auth::Admitted(admission),
            AuthOutcome::Refused(reply) => Auth::Refused(reply),
            AuthOutcome::FetchKeys(callout) => match host.dispatch(&callout, worker.plan.oidc.callout_timeout_ms) {
                Ok(id) => {
                    worker.request_fetch_started();
                    self.fetching = true;
                    Auth::Waiting(id, callout.fetch)
                }
                Err(_) => unknown_key_is_unavailable(match worker.authenticate(host, token, host.now(), false) {
                    AuthOutcome::Admitted(admission) => Auth::Admitted(admission),
                    AuthOutcome::Refused(reply) => Auth::Refused(reply),
                    AuthOutcome::FetchKeys(_) => Auth::Refused(crate::keystore::KeysError::Unavailable.to_reply()),
                }),
            },
        };
        if let Auth::Admitted(a) = &self.auth {
            self.admitted_tier = worker.plan.tiers.get(a.tier).map(|t| t.name.clone());
        }
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
        self.now_ms = host.now_ms();
        self.buffered = size;
        let max = worker.plan.max_body_bytes;
        if size > max {
            // A refusal already decided (ngx answers at the body) says more than the size.
            let reply = match &self.auth {
                Auth::Refused(reply) => reply.clone(),
                _ => RequestError::TooLarge { max }.to_reply(),
            };
            return self.answer(reply);
        }
        if !end_of_stream {
            return self.hold(Held::Body);
        }
        self.body_complete(worker, host, body)
    }

    /// Whether the body, once whole, will be read: not for a request already refused (nginx
    /// answers its refusals at the body, and a refused client's 16 MiB need not be copied into
    /// the VM).
    pub fn wants_body(&self) -> bool {
        !matches!(self.auth, Auth::Refused(_))
    }

    /// Request trailers arrived: the body is complete. `body` is what the host buffered
    /// ([`Request::buffered`] bytes).
    pub fn on_request_trailers(&mut self, worker: &mut Worker, host: &dyn Host, body: Option<&[u8]>) -> Step {
        if !matches!(self.phase, Phase::Deciding) {
            return self.settled_flow();
        }
        self.now_ms = host.now_ms();
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
        self.now_ms = host.now_ms();
        self.release_fetch(worker);
        let progress = worker.on_fetched(&fetch, status, body, host.now());
        let mut step = Step::pause();
        // Another request's fetch may have installed the keys while this one's discovery was
        // under way (a burst of sessions after a restart): then it fetches nothing more.
        let installed_meanwhile =
            matches!(progress, FetchProgress::Next(_)) && worker.keys.keys(&worker.plan.oidc, host.now()).is_ok();
        if let (FetchProgress::Next(callout), false) = (&progress, installed_meanwhile) {
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
            if !matches!(progress, FetchProgress::Installed(_)) && !installed_meanwhile {
                self.auth = unknown_key_is_unavailable(std::mem::replace(&mut self.auth, Auth::Pending));
            }
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
        let betas: Vec<&str> = self.betas.iter().map(String::as_str).collect();
        match worker.forward(host, admission, self.endpoint, body, &betas, host.now()) {
            Err(refusal) => {
                self.refused_model = refusal.model;
                let mut step = self.answer(refusal.reply);
                step.warnings = refusal.warnings;
                step
            }
            Ok((Forward { body: edit, mut headers, mut remove_headers, bedrock, route, warnings, sent }, metering)) => {
                if bedrock && self.profile == HostProfile::Ngx {
                    // Nothing is sent; the hold just taken is given back.
                    let plan = &worker.plan;
                    let tier = match &self.auth {
                        Auth::Admitted(a) => plan.tiers.get(a.tier),
                        _ => None,
                    };
                    let usable: Vec<&str> = tier.map(|t| t.anthropic_aliases(plan).collect()).unwrap_or_default();
                    let reply = crate::bedrock::needs_envoy(&route.model, &usable);
                    let target = headers.iter().find(|(n, _)| n == "x-gateway-target").map(|(_, v)| v.as_str());
                    let warning = crate::bedrock::needs_envoy_warning(target.unwrap_or("?"));
                    self.route = Some(route);
                    self.metering = metering;
                    let mut step = self.not_carried_out(host, reply);
                    step.warnings.extend(warnings);
                    // Once per worker: every such request is refused alike, and counted.
                    if !std::mem::replace(&mut worker.bedrock_unreachable_told, true) {
                        step.warnings.push(warning);
                    }
                    return step;
                }
                if bedrock {
                    remove_headers.append(&mut self.aws_headers);
                }
                self.route = Some(route);
                self.answer_translation = bedrock.then(|| crate::bedrock::Answer::new(std::sync::Arc::clone(&sent)));
                self.sent = Some(sent);
                let mut step = Step { flow: Flow::Continue, body: edit, forwarded: true, warnings, ..Step::default() };
                match self.profile {
                    HostProfile::Envoy => step.remove_headers = remove_headers,
                    HostProfile::Ngx => {
                        // ngx_wasm_module replaces the whole body with what it is given.
                        step.body = step.body.map(|edit| edit.into_whole(body));
                        // nginx computes Content-Length itself, takes the authority from `host`
                        // (`:authority` is read-only there) and cannot remove a request header.
                        headers.retain(|(name, _)| name != "content-length");
                        for (name, _) in headers.iter_mut().filter(|(n, _)| n == ":authority") {
                            *name = "host".to_owned();
                        }
                        step.set_headers = remove_headers.into_iter().map(|n| (n, String::new())).collect();
                    }
                }
                step.set_headers.extend(headers);
                self.metering = metering;
                self.phase = Phase::Forwarded;
                step
            }
        }
    }

    /// The response headers arrived (for a forwarded request: the upstream's; otherwise our own
    /// local answer passing through the filter, which is left alone).
    /// `error_type` is Bedrock's `x-amzn-errortype`, read only when [`Request::translates_answer`].
    /// `end_of_stream`: the answer has no body (an HTTP/2 answer that ends with its headers), so
    /// no body callback will come: it is settled here.
    pub fn on_response_headers(&mut self, host: &dyn Host, answer: AnswerHead<'_>, end_of_stream: bool) -> Step {
        let mut step = self.answer_head(answer);
        if end_of_stream {
            let end = self.on_response_body(host, &[], true);
            step.record = end.record;
            step.settled = end.settled;
            step.warnings.extend(end.warnings);
            // No body callback follows an answer that ended at its headers, so a replacement
            // body goes out as a local answer, with the headers this step would have set.
            if let Some(body) = end.response_body.filter(|b| !b.is_empty()) {
                // The status is the one the answer's head already set (`self.status`).
                let mut headers = std::mem::take(&mut step.response_headers);
                headers.retain(|(name, _)| name != ":status");
                step.remove_response_headers.clear();
                let status = self.status.unwrap_or(CredentialRefusal::STATUS);
                step.replaced_answer = Some(Reply { status, headers, body, reason: "answer_replaced" });
                step.flow = Flow::Pause;
                // The local answer passes the response callbacks again on ngx: leave it alone.
                self.phase = Phase::Answered;
            }
        }
        step
    }

    fn answer_head(&mut self, answer: AnswerHead<'_>) -> Step {
        let AnswerHead { status, content_type, length, error_type, headers } = answer;
        let mut step = Step::flow(Flow::Continue);
        // Removed before anything is set (ngx drops a value set on a header the upstream repeated).
        let sent = self.sent.as_deref().unwrap_or(&NOTHING_SENT);
        let unwanted = crate::answer_headers::unwanted(headers, sent);
        // Only on the 502 the samples' route answers: an upstream's stray header changes nothing.
        if status == Some(502) && crate::answer_headers::no_route(headers) {
            self.proxy_refusal = Some("no_route");
            let model = self.route.as_ref().map_or("?", |r| r.model.as_str());
            step.warnings.push(format!(
                "the proxy has no route for the target of model {model:?} (x-gateway-target): add one, and its \
                 cluster, to the Envoy config; its requests are refused with a 502 meanwhile"
            ));
        }
        self.status = status;
        let (mut content_type, mut length) = (content_type, length);
        if let Some(answer) = &mut self.answer_translation {
            let (set, remove, meter_as) = answer.on_headers(status.unwrap_or(0), content_type, error_type);
            // The status the client gets (Bedrock refusing the gateway's credentials becomes a 502).
            if let Some(sent) = set.iter().find(|(name, _)| name == ":status").and_then(|(_, v)| v.parse().ok()) {
                self.status = Some(sent);
            }
            step.response_headers = set;
            step.remove_response_headers = remove;
            content_type = meter_as;
            // The translated body has another length; the end of stream ends it.
            length = None;
        } else if let Some(refusal) = CredentialRefusal::of(status, length, sent) {
            (step.response_headers, step.remove_response_headers) = CredentialRefusal::headers();
            self.credential_refusal = Some(refusal);
            self.status = Some(CredentialRefusal::STATUS);
            (content_type, length) = ("application/json", None);
        } else if let Some(page) = ErrorPage::of(status, content_type, length) {
            (step.response_headers, step.remove_response_headers) = ErrorPage::headers();
            self.error_page = Some(page);
            (content_type, length) = ("application/json", None);
        }
        if let Some(metering) = &mut self.metering {
            step.response_headers.extend(metering.headers());
            metering.on_response_headers(self.status, content_type, length);
        }
        if !unwanted.is_empty() {
            step.remove_response_headers.splice(0..0, unwanted);
        }
        step
    }

    /// Whether the answer is translated (a Bedrock target): the host then also reads
    /// `x-amzn-errortype` for [`Request::on_response_headers`].
    pub fn translates_answer(&self) -> bool {
        self.answer_translation.is_some()
    }

    /// A response body chunk passed (never held back).
    pub fn on_response_body(&mut self, host: &dyn Host, chunk: &[u8], end_of_stream: bool) -> Step {
        let mut step = Step::flow(Flow::Continue);
        // The clock is read for the first byte and at the end only (one host call each), not
        // for every chunk of a stream.
        if !chunk.is_empty() && self.first_byte_ms.is_none() {
            self.now_ms = host.now_ms();
            self.first_byte_ms = Some(self.now_ms);
        }
        // A translated answer (Bedrock) is metered as the client receives it.
        if let Some(answer) = &mut self.answer_translation {
            if let crate::bedrock::Chunk::Replace(bytes) = answer.on_body(chunk, end_of_stream) {
                step.response_body = Some(bytes);
            }
            step.warnings.extend(answer.take_warning());
        }
        let mut end_of_stream = end_of_stream;
        if let Some(refusal) = &mut self.credential_refusal {
            let bytes = refusal.on_body(chunk, end_of_stream);
            if !bytes.is_empty() {
                step.warnings.push(refusal.warning());
                // The replacement is the whole answer, whether or not the host marks its end.
                end_of_stream = true;
            }
            step.response_body = Some(bytes);
        }
        if let Some(page) = &mut self.error_page {
            let bytes = page.on_body(chunk, end_of_stream);
            end_of_stream |= !bytes.is_empty();
            step.response_body = Some(bytes);
        }
        let seen = step.response_body.as_deref().unwrap_or(chunk);
        let complete = match &mut self.metering {
            Some(metering) => metering.on_response_body(seen, end_of_stream),
            None => end_of_stream,
        };
        if complete {
            if let (Some(m), Some(usage)) =
                (&mut self.metering, self.answer_translation.as_ref().and_then(crate::bedrock::Answer::metrics))
            {
                m.use_reported_usage(usage);
            }
        }
        if complete {
            self.finish(host, &mut step);
        }
        step
    }

    /// The request is over (completed, reset or cancelled): charge what is still open, hand out
    /// the record if not yet done, and give back a key-fetch slot.
    pub fn on_done(&mut self, worker: &mut Worker, host: &dyn Host) -> Step {
        self.release_fetch(worker);
        let mut step = Step::pause();
        match self.phase {
            Phase::Forwarded => self.finish(host, &mut step),
            // Gone before a decision: nothing went upstream and nothing is charged.
            Phase::New | Phase::Deciding if self.started_ms > 0 && !std::mem::replace(&mut self.recorded, true) => {
                self.now_ms = host.now_ms();
                step.record = Some(self.record(None, Some("cancelled")));
            }
            _ => {}
        }
        step
    }

    /// The host layer answered this request itself with `reply` (a request whose body never
    /// came, see [`crate::body_watch`]): the request ends as answered, and its record is handed
    /// out once. Nothing happens to a request already answered or forwarded.
    pub fn answered_elsewhere(&mut self, worker: &mut Worker, host: &dyn Host, reply: Reply) -> Step {
        if !matches!(self.phase, Phase::New | Phase::Deciding) {
            return Step::pause();
        }
        self.release_fetch(worker);
        self.now_ms = host.now_ms();
        let mut step = self.answer(reply);
        step.reply = None;
        step
    }

    /// The host could not carry out this request's step (a header or the body could not be
    /// written) and answers it with `reply` instead: nothing went upstream. A forwarded request
    /// gives back what admission held (its answer is charged nothing) and, like any request
    /// answered here, leaves a record that says why. A request already answered or settled
    /// stays as it is.
    pub fn not_carried_out(&mut self, host: &dyn Host, reply: Reply) -> Step {
        if matches!(self.phase, Phase::Answered) || self.recorded {
            return Step { reply: Some(reply), ..Step::pause() };
        }
        self.now_ms = host.now_ms();
        let mut warnings = Vec::new();
        if let Some(metering) = self.metering.as_mut() {
            metering.never_sent();
            warnings = metering.settle(host, host.now()).map(|s| s.warnings).unwrap_or_default();
        }
        let mut step = self.answer(reply);
        step.warnings = warnings;
        step
    }

    /// Settles a forwarded request once and hands out its record.
    fn finish(&mut self, host: &dyn Host, step: &mut Step) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.now_ms = host.now_ms();
        let settled = self.metering.as_mut().and_then(|m| m.settle(host, host.now()));
        let mut record = self.record(self.status, self.proxy_refusal);
        if let Some(s) = &settled {
            record.usage = s.usage;
            record.cost_usd = s.cost_usd;
            record.estimated = s.outcome == Outcome::Unknown;
        }
        record.latency_ms = Some(self.now_ms.saturating_sub(self.started_ms));
        record.ttft_ms = self.first_byte_ms.map(|t| t.saturating_sub(self.started_ms));
        step.settled = settled;
        step.record = Some(record);
    }

    /// The record as far as this request got.
    fn record(&self, status: Option<u32>, refusal: Option<&'static str>) -> UsageRecord {
        let identity = match &self.auth {
            Auth::Admitted(a) => Some(&a.identity),
            _ => self.refused_identity.as_ref(),
        };
        let route = self.route.as_ref();
        UsageRecord {
            time_ms: self.now_ms,
            sub: identity.map(|i| i.subject.clone()),
            email: identity.and_then(|i| i.email.clone()),
            tier: route.map(|r| r.tier.clone()).or_else(|| self.admitted_tier.clone()),
            model: route.map(|r| r.model.clone()).or_else(|| self.refused_model.clone()),
            provider_model: route.map(|r| r.provider_model.clone()),
            provider: route.map(|r| r.provider),
            status,
            session: self.session.clone(),
            refusal,
            ..UsageRecord::default()
        }
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
            if let Auth::Admitted(a) = std::mem::replace(&mut self.auth, Auth::Refused(reply)) {
                self.refused_identity = Some(a.identity);
            }
            return Step::flow(Flow::Continue);
        }
        self.answer(reply)
    }

    /// A refusal for a guarded header sent twice. ngx sets or clears only a header's first copy
    /// and proxies the rest as the client sent them, so on ngx such a request is never left to go
    /// on undecided (as [`Self::refuse_early`] would, and nginx proxies it when no body callback
    /// ever comes, as for an empty chunked body): it is answered at once, and the connection
    /// closed after the answer since its body stays unread (nginx would take that body for the
    /// next request).
    fn refuse_repeated(&mut self, reply: Reply, has_body: bool) -> Step {
        if self.profile == HostProfile::Ngx && has_body {
            return self.answer(reply.with_header("connection", "close"));
        }
        self.refuse_early(reply, has_body)
    }

    fn answer(&mut self, reply: Reply) -> Step {
        self.phase = Phase::Answered;
        self.held = Held::None;
        self.body = None;
        let mut step = Step::default();
        // The connectivity check is not a use of the gateway and leaves no record.
        if self.endpoint != Endpoint::Hello && !std::mem::replace(&mut self.recorded, true) {
            // A local success (Bedrock's count_tokens, answered with the estimate) refuses nothing.
            let refusal = (reply.status >= 400).then_some(reply.reason);
            let mut record = self.record(Some(reply.status), refusal);
            record.latency_ms = Some(self.now_ms.saturating_sub(self.started_ms));
            step.record = Some(record);
        }
        step.reply = Some(reply);
        step
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
