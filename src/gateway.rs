//! One worker's gateway: the compiled plan, the keys and the verified-token cache, and the
//! decisions a request needs (admit, refuse, fetch keys first; which body and headers go
//! upstream). The host layer turns these decisions into host calls.

use std::rc::Rc;

use crate::config::Plan;
use crate::jwt::{self, AuthError, Identity};
use crate::keystore::{Callout, Fetch, FetchError, KeyStore, KeysError, SharedRecord};
use crate::metering::{Metering, Subject};
use crate::refused_tokens;
use crate::reply::{Reply, ToReply};
use crate::routing::{asks_beta, BodyEdit, Endpoint, RequestBody, RequestError, ADVISOR_TOOL_BETA, FAST_MODE_BETA};
use crate::shared::SharedStore;
use crate::store_sync::{self, Syncer, Tracked};
use crate::tier::{self, NoTier};
use crate::token_cache::TokenCache;
use crate::usage::input_estimate;
use crate::validated_elements::ValidatedElements;

/// Most key fetches that waiting requests of one worker may have under way at once; beyond
/// it a request without keys is answered 503 instead of adding load on the IdP. High enough for a
/// burst of sessions at startup; a dead IdP is protected by the cool-down after a failed fetch.
pub const MAX_REQUEST_FETCHES: usize = 32;

/// A verified person with a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Who the token says (shared with the token cache: a cached token costs no copy).
    pub identity: Rc<Identity>,
    /// Index of the tier in [`Plan::tiers`].
    pub tier: usize,
}

/// Largest discovery or JWKS document taken (Entra ID's, certificates included, is ~20 KB).
pub const MAX_KEY_DOCUMENT_BYTES: usize = 512 * 1024;

/// The outcome of authenticating a token.
#[derive(Debug)]
pub enum AuthOutcome {
    /// Verified and placed in a tier.
    Admitted(Admission),
    /// Refused; the client gets this answer.
    Refused(Reply),
    /// Keys are needed first: make this callout, then authenticate again without fetching.
    FetchKeys(Callout),
}

/// What the callout that just answered led to.
#[derive(Debug)]
pub enum FetchProgress {
    /// Discovery named the JWKS: fetch it next.
    Next(Callout),
    /// New keys are installed; share the record with the other workers.
    Installed(SharedRecord),
    /// The fetch failed; keys stay as they were.
    Failed(FetchError),
}

/// What goes upstream for an admitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The change to the body, when `model` was rewritten (or the body translated).
    pub body: Option<BodyEdit>,
    /// Headers to set (after the client's credential and identity headers were removed).
    pub headers: Vec<(String, String)>,
    /// Client headers to take away besides the ones taken at the request headers.
    pub remove_headers: Vec<String>,
    /// The answer comes from Bedrock and is translated back (event stream to SSE, errors).
    pub bedrock: bool,
    /// Where it goes, for the usage record.
    pub route: Route,
    /// The target's credentials, which no answer may hand the client.
    pub sent: std::sync::Arc<crate::credential_refusal::SentCredentials>,
    /// Problems to log (a budget-store index write that failed).
    pub warnings: Vec<String>,
}

/// The tier, model and provider a forwarded request was routed to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// Tier name.
    pub tier: String,
    /// The alias the client asked for.
    pub model: String,
    /// What the provider receives.
    pub provider_model: String,
    /// Provider name.
    pub provider: &'static str,
}

/// A refusal of an admitted request, with problems to log that the client never sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The answer.
    pub reply: Reply,
    /// E.g. a budget hold that could not be given back.
    pub warnings: Vec<String>,
    /// The `model` the body asked for, when that is what was refused (its first
    /// [`REFUSED_MODEL_CHARS`] characters), for the usage record.
    pub model: Option<String>,
}

/// Most characters of a refused `model` kept in the usage record (the client chooses it).
pub const REFUSED_MODEL_CHARS: usize = 100;

impl From<Reply> for Refusal {
    fn from(reply: Reply) -> Refusal {
        Refusal { reply, warnings: Vec::new(), model: None }
    }
}

/// The state one worker (one Wasm VM) keeps between requests.
#[derive(Debug)]
pub struct Worker {
    /// The compiled configuration.
    pub plan: Plan,
    /// The IdP's keys as this worker has them.
    pub keys: KeyStore,
    tokens: TokenCache,
    validated: ValidatedElements,
    request_fetches: usize,
    /// The cluster-wide budget sync, when `budget_store` is configured, and the tier-wide
    /// counters it always syncs.
    pub sync: Option<(Syncer, Vec<Tracked>)>,
    /// The operator was told, once, that this host cannot forward to a Bedrock target.
    pub bedrock_unreachable_told: bool,
}

impl Worker {
    /// A worker for `plan`, with no keys yet.
    pub fn new(plan: Plan) -> Worker {
        let keys = KeyStore::new(&plan.oidc);
        let tokens = TokenCache::new(plan.oidc.token_cache_entries);
        let sync = plan.budget_store.as_ref().map(|_| {
            // A random node id per worker VM; the shared-data lease makes one worker per node sync.
            let mut id = [0u8; 8];
            let _ = getrandom::getrandom(&mut id);
            (Syncer::new(u64::from_le_bytes(id)), store_sync::tier_counters(&plan.tiers))
        });
        let validated = ValidatedElements::new(plan.validation_cache_bytes);
        Worker { plan, keys, tokens, validated, request_fetches: 0, sync, bedrock_unreachable_told: false }
    }

    /// Request headers removed before anything is forwarded: the client's credential, any
    /// identity headers it tried to set itself, its cookies (of the company's own domain when
    /// the gateway lives under it: a session of another of its applications) and a credential
    /// meant for a proxy on the way. No provider API reads the last two.
    pub fn stripped_headers(&self) -> [&str; 8] {
        let h = &self.plan.identity_headers;
        ["authorization", "x-api-key", &h.user, &h.email, &h.tier, "x-gateway-target", "cookie", "proxy-authorization"]
    }

    /// Verifies `token` and places the person in a tier. With `may_fetch`, missing keys, an
    /// unknown `kid` or a signature the keys held cannot verify ask for a fetch (throttled);
    /// without it they are final.
    pub fn authenticate(&mut self, store: &dyn SharedStore, token: &str, now: u64, may_fetch: bool) -> AuthOutcome {
        let oidc = &self.plan.oidc;
        // A host that cannot tell the time reads 0 here, and every expiry would pass.
        if now == 0 {
            return AuthOutcome::Refused(Reply::clock_unavailable());
        }
        let keys = match self.keys.keys(oidc, now).or_else(|_| {
            // Another worker of this node may have fetched them since this one last looked (its
            // tick does every 500 ms): taken from shared data before any request fetches its own.
            self.keys.adopt_shared(store, &oidc.shared_key);
            self.keys.keys(oidc, now)
        }) {
            Ok(keys) => keys,
            Err(e) => {
                // A token that fails the checks needing no key (not a JWT, another issuer,
                // expired) is refused as it is: it neither waits for keys nor takes a fetch.
                if let Err(refusal) = jwt::check_claims(token, oidc, now) {
                    return refusal_of(store, token, &refusal, now);
                }
                if may_fetch && self.request_fetches < MAX_REQUEST_FETCHES && !self.keys.cooling_down(now) {
                    return AuthOutcome::FetchKeys(self.keys.fetch_now(oidc, now));
                }
                return AuthOutcome::Refused(
                    e.to_reply_after(self.keys.missing_for(oidc, now), oidc.keys_fail_fast_seconds),
                );
            }
        };
        let digest = self.tokens.digest(token);
        let cached = self.tokens.get(&digest, now, oidc.leeway_seconds, |key| keys.has_key(key));
        let identity = match cached {
            Some(identity) => identity,
            None => {
                let verified = jwt::check_claims(token, oidc, now).and_then(|parsed| {
                    let kid_unknown = parsed.kid().is_some_and(|k| !keys.has_kid(k, parsed.alg()));
                    if kid_unknown && may_fetch {
                        if let Some(callout) = self.keys.allow_kid_refetch(oidc, store, now) {
                            return Ok(Err(callout));
                        }
                    }
                    match parsed.verify(token, &keys, oidc, now) {
                        // An IdP that published a new key under a kid already known (or under
                        // none) signs tokens the keys held here cannot verify: one refetch,
                        // under the same cool-down as an unknown kid (a flood of forged
                        // tokens gets no more fetches than one of unknown kids).
                        // The same for a key outside the policy: the IdP may have replaced it.
                        Err(e @ (AuthError::BadSignature | AuthError::KeyNotAccepted)) if may_fetch => {
                            self.keys.allow_kid_refetch(oidc, store, now).map(Err).ok_or(e)
                        }
                        verified => verified.map(Ok),
                    }
                });
                match verified {
                    Ok(Ok(identity)) => {
                        let identity = Rc::new(identity);
                        self.tokens.insert(digest, Rc::clone(&identity), now);
                        identity
                    }
                    Ok(Err(callout)) => return AuthOutcome::FetchKeys(callout),
                    Err(e) => return refusal_of(store, token, &e, now),
                }
            }
        };
        match tier::select(&self.plan, &identity.groups) {
            Some((tier, _)) => AuthOutcome::Admitted(Admission { identity, tier }),
            None => AuthOutcome::Refused(NoTier::new(&self.plan).overage(identity.groups_overage).to_reply()),
        }
    }

    /// Notes that a waiting request dispatched a key fetch.
    pub fn request_fetch_started(&mut self) {
        self.request_fetches += 1;
    }

    /// Notes that a waiting request's key fetch ended (answered, failed or abandoned).
    pub fn request_fetch_ended(&mut self) {
        self.request_fetches = self.request_fetches.saturating_sub(1);
    }

    /// Takes the answer of a key callout (`status` is `None` when the host reported no response).
    pub fn on_fetched(&mut self, fetch: &Fetch, status: Option<u32>, body: &[u8], now: u64) -> FetchProgress {
        // Every worker parses the keys again, and they are copied into shared data: a document
        // far beyond any IdP's (thousands of keys) is refused, not parsed.
        let result = if body.len() > MAX_KEY_DOCUMENT_BYTES {
            // (The host reads at most one byte more than that: the answer's length is not known here.)
            Err(FetchError::Unreachable(format!(
                "an answer over the {MAX_KEY_DOCUMENT_BYTES} bytes a key document may have"
            )))
        } else {
            match fetch {
                Fetch::Discovery => self.keys.on_discovery(&self.plan.oidc, status, body).map(FetchProgress::Next),
                Fetch::Jwks => self.keys.on_jwks(status, body, now).map(FetchProgress::Installed),
            }
        };
        result.unwrap_or_else(|e| {
            self.keys.note_failure(now);
            FetchProgress::Failed(e)
        })
    }

    /// Checks the body's model against the admitted tier and its budgets, and builds what goes
    /// upstream. Messages requests are metered; `count_tokens` is free and is not.
    pub fn forward(
        &mut self,
        store: &dyn SharedStore,
        admission: &Admission,
        endpoint: Endpoint,
        body: &[u8],
        beta_headers: &[&str],
        now: u64,
    ) -> Result<(Forward, Option<Metering>), Refusal> {
        let Worker { plan, sync, validated, .. } = self;
        let plan = &*plan;
        let tier = plan.tiers.get(admission.tier).ok_or_else(|| NoTier::new(plan).to_reply())?;
        let repeats = validated.enabled().then_some(validated as &mut dyn crate::scan::Repeats);
        let parsed = RequestBody::parse_with(body, repeats).map_err(|e| e.to_reply())?;
        let model = parsed.resolve(plan, tier).map_err(|e| Refusal {
            model: Some(parsed.model.chars().take(REFUSED_MODEL_CHARS).collect()),
            ..e.to_reply().into()
        })?;
        // The advisor tool's model is named inside `tools`, past the tier's check, and its tokens
        // are reported apart from the answer's usage: refused rather than used unchecked.
        if endpoint == Endpoint::Messages && asks_beta(beta_headers, ADVISOR_TOOL_BETA) {
            return Err(Refusal { model: Some(model.alias.clone()), ..RequestError::AdvisorTool.to_reply().into() });
        }
        let fast = asks_beta(beta_headers, FAST_MODE_BETA);
        // A priced model's cost in fast mode is known only from its fast-mode rates.
        if fast && model.price.as_ref().is_some_and(|p| p.fast.is_none()) {
            let refusal = RequestError::FastModeNotPriced { model: model.alias.clone() }.to_reply();
            return Err(Refusal { model: Some(model.alias.clone()), ..refusal.into() });
        }
        let target = plan.targets.get(model.target).ok_or_else(|| KeysError::Unavailable.to_reply())?;
        if let (Some(_), Endpoint::CountTokens) = (&target.bedrock, endpoint) {
            // Bedrock's CountTokens takes another body: answered here with the estimate the
            // budgets use (body bytes / 4, images at most what they cost), which is what Claude
            // Code needs it for.
            let reply =
                Reply::json(200, "count_tokens_estimate", &serde_json::json!({"input_tokens": input_estimate(body)}));
            // Its record names the model it counted for, as a forwarded count would.
            return Err(Refusal { model: Some(model.alias.clone()), ..reply.into() });
        }
        // Translated (and refused if it cannot be) before any budget is held.
        let bedrock = match &target.bedrock {
            Some(b) => {
                Some(crate::bedrock::prepare(b, &model.model_id, body, beta_headers, now).map_err(|e| e.to_reply())?)
            }
            None => None,
        };
        let mut warnings = Vec::new();
        let metering = match endpoint {
            Endpoint::Messages => {
                let subject = Subject {
                    person: admission.identity.subject.clone(),
                    person_key: admission.identity.person_key.clone(),
                    tier: tier.name.clone(),
                    model: model.alias.clone(),
                    price: model.price,
                    provider: target.provider.name(),
                    fast,
                };
                // With a budget store, admission uses its limits (divided while cut off from it).
                let limits = match (sync.as_ref(), &plan.budget_store) {
                    (Some((syncer, _)), Some(store_plan)) => syncer.admission_limits(store_plan, &tier.limits),
                    _ => std::borrow::Cow::Borrowed(tier.limits.as_slice()),
                };
                let person_key = subject.person_key.clone();
                let admitted = Metering::admit(
                    store,
                    &limits,
                    &plan.budgets,
                    subject,
                    input_estimate(body),
                    parsed.max_tokens,
                    now,
                );
                // The record of a budget refusal names the model it was for, as any other does.
                let mut metering = admitted.map_err(|(reply, warnings)| Refusal {
                    reply,
                    warnings,
                    model: Some(model.alias.clone()),
                })?;
                warnings.append(&mut metering.take_warnings());
                if let Some((syncer, _)) = sync.as_mut() {
                    // A person's counters are synced from their first admission on; a failed
                    // note only delays that to the next admission.
                    if let Err(e) = syncer.note_admitted(store, &tier.limits, &person_key, now.saturating_mul(1000)) {
                        warnings.push(format!("budget store: could not note a person's counters: {e:?}"));
                    }
                }
                Some(metering)
            }
            _ => None,
        };
        let route = Route {
            tier: tier.name.clone(),
            model: model.alias.clone(),
            provider_model: model.model_id.clone(),
            provider: target.provider.name(),
        };
        if let Some(out) = bedrock {
            let mut headers = out.set_headers;
            headers.push(("x-gateway-target".to_owned(), target.name.clone()));
            headers.push(("accept-encoding".to_owned(), "identity".to_owned()));
            headers.push(("content-length".to_owned(), out.body.len().to_string()));
            let forward = Forward {
                body: Some(BodyEdit::whole(body.len(), out.body)),
                headers,
                remove_headers: out.remove_headers,
                bedrock: true,
                route,
                warnings,
                sent: std::sync::Arc::clone(&target.sent),
            };
            return Ok((forward, metering));
        }
        let edit = parsed.rewrite(body, &model.model_id);
        let names = &plan.identity_headers;
        let mut headers = vec![
            ("x-api-key".to_owned(), target.api_key.clone()),
            (names.user.clone(), admission.identity.subject.clone()),
            (names.tier.clone(), tier.name.clone()),
            ("x-gateway-target".to_owned(), target.name.clone()),
            ("accept-encoding".to_owned(), "identity".to_owned()),
        ];
        // A body that goes as it came keeps the client's framing (one header write fewer).
        if let Some(edit) = &edit {
            headers.push(("content-length".to_owned(), edit.new_len(body.len()).to_string()));
        }
        if let Some(email) = &admission.identity.email {
            headers.push((names.email.clone(), email.clone()));
        }
        let sent = std::sync::Arc::clone(&target.sent);
        let forward =
            Forward { body: edit, headers, remove_headers: Vec::new(), bedrock: false, route, warnings, sent };
        Ok((forward, metering))
    }
}

/// The answer to a refused token: its 401, or a 400 once the same token has been refused again
/// and again ([`refused_tokens`]).
fn refusal_of(store: &dyn SharedStore, token: &str, error: &AuthError, now: u64) -> AuthOutcome {
    if error.fixed_by_a_new_token() && refused_tokens::refused(store, token, now) {
        return AuthOutcome::Refused(error.to_repeated_reply());
    }
    AuthOutcome::Refused(error.to_reply())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::tests::TestKeys;
    use crate::jwt::tests::{good_claims, plan, sign, NOW};
    use serde_json::json;

    fn worker_with_keys(keys: &TestKeys) -> Worker {
        worker_with_plan(plan(), keys)
    }

    fn worker_with_plan(plan: Plan, keys: &TestKeys) -> Worker {
        let mut w = Worker::new(plan);
        let discovery =
            json!({"issuer": "https://idp.example.com/oauth2/default", "jwks_uri": "https://idp.example.com/keys"});
        assert!(matches!(
            w.on_fetched(&Fetch::Discovery, Some(200), discovery.to_string().as_bytes(), NOW),
            FetchProgress::Next(_)
        ));
        assert!(matches!(
            w.on_fetched(&Fetch::Jwks, Some(200), keys.jwks().as_bytes(), NOW),
            FetchProgress::Installed(_)
        ));
        w
    }

    fn status(outcome: &AuthOutcome) -> u32 {
        match outcome {
            AuthOutcome::Admitted(_) => 200,
            AuthOutcome::Refused(r) => r.status,
            AuthOutcome::FetchKeys(_) => 0,
        }
    }

    #[test]
    fn admits_and_caches() {
        let keys = TestKeys::new();
        let mut w = worker_with_keys(&keys);
        let token = sign(&keys, good_claims());
        let AuthOutcome::Admitted(a) = w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW, true)
        else {
            panic!("not admitted")
        };
        assert_eq!((a.identity.subject.as_str(), a.tier), ("alice", 1));
        assert_eq!(w.tokens.len(), 1);
        assert!(matches!(
            w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW + 1, false),
            AuthOutcome::Admitted(_)
        ));
    }

    #[test]
    fn without_keys_a_request_fetches_then_gets_503() {
        let keys = TestKeys::new();
        let mut w = Worker::new(plan());
        let token = sign(&keys, good_claims());
        assert!(matches!(
            w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW, true),
            AuthOutcome::FetchKeys(Callout { fetch: Fetch::Discovery, .. })
        ));
        assert_eq!(status(&w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW, false)), 503);
        assert!(matches!(w.on_fetched(&Fetch::Discovery, None, b"", NOW), FetchProgress::Failed(_)));
        assert_eq!(
            status(&w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW + 1, true)),
            503,
            "cooling down after a failure"
        );
        assert!(
            matches!(
                w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW + 2, true),
                AuthOutcome::FetchKeys(_)
            ),
            "tries again"
        );
        for _ in 0..MAX_REQUEST_FETCHES {
            w.request_fetch_started();
        }
        assert_eq!(
            status(&w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW + 3, true)),
            503,
            "fetch cap reached"
        );
    }

    /// A worker that finds no keys takes those another worker of the node fetched and shared
    /// before fetching its own (its tick would adopt them only within 500 ms).
    #[test]
    fn without_keys_a_worker_takes_the_keys_another_one_shared_before_fetching() {
        let keys = TestKeys::new();
        let store = crate::shared::tests::FakeStore::default();
        let token = sign(&keys, good_claims());
        let mut first = Worker::new(plan());
        let discovery =
            json!({"issuer": "https://idp.example.com/oauth2/default", "jwks_uri": "https://idp.example.com/keys"});
        first.on_fetched(&Fetch::Discovery, Some(200), discovery.to_string().as_bytes(), NOW);
        let FetchProgress::Installed(record) = first.on_fetched(&Fetch::Jwks, Some(200), keys.jwks().as_bytes(), NOW)
        else {
            panic!("installed")
        };
        let mut other = Worker::new(plan());
        assert!(matches!(other.authenticate(&store, &token, NOW, true), AuthOutcome::FetchKeys(_)), "nothing shared");
        crate::keystore::publish(&store, &other.plan.oidc.shared_key, &record).unwrap();
        let mut other = Worker::new(plan());
        assert!(matches!(other.authenticate(&store, &token, NOW + 1, true), AuthOutcome::Admitted(_)));
        assert_eq!(other.request_fetches, 0);
    }

    /// Claude Code re-runs its helper and retries every 401 for four minutes: a helper handing
    /// out the same expired token again and again gets a 400 it shows at once, from the fourth
    /// refusal on; one refusal (the stale token of a session resuming) stays a 401.
    #[test]
    fn the_same_refused_token_again_and_again_gets_a_400_that_stops_the_retries() {
        let keys = TestKeys::new();
        let store = crate::shared::tests::FakeStore::default();
        let mut expired = good_claims();
        expired["exp"] = (NOW - 3600).into();
        let expired = sign(&keys, expired);
        let unknown_key = sign(&TestKeys::new(), good_claims());
        // With keys and without (refused by the checks that need none).
        for mut w in [worker_with_keys(&keys), Worker::new(plan())] {
            let store = crate::shared::tests::FakeStore::default();
            let statuses = [0, 1, 2, 4, 9].map(|t| status(&w.authenticate(&store, &expired, NOW + t, false)));
            assert_eq!(statuses, [401, 401, 401, 400, 400]);
            let AuthOutcome::Refused(reply) = w.authenticate(&store, &expired, NOW + 10, false) else {
                panic!("refused")
            };
            assert!(reply.headers.iter().any(|(k, v)| k == "x-should-retry" && v == "false"));
            assert!(String::from_utf8_lossy(&reply.body).contains("keeps handing out this same token"));
            // Counted anew after the window.
            assert_eq!(status(&w.authenticate(&store, &expired, NOW + 100, false)), 401);
        }
        let mut w = worker_with_keys(&keys);
        let statuses = [0, 1, 2, 3].map(|t| status(&w.authenticate(&store, &unknown_key, NOW + t, false)));
        assert_eq!(statuses, [401, 401, 401, 400], "a key the IdP withdrew");
        // The retries of one loop land on any worker: the count is the node's.
        let (mut a, mut b) = (worker_with_keys(&keys), worker_with_keys(&keys));
        let store = crate::shared::tests::FakeStore::default();
        let statuses = [0, 1, 2, 4].map(|t| {
            let w = if t % 2 == 0 { &mut a } else { &mut b };
            status(&w.authenticate(&store, &expired, NOW + t, false))
        });
        assert_eq!(statuses, [401, 401, 401, 400]);
    }

    #[test]
    fn without_keys_a_token_failing_the_keyless_checks_is_refused_at_once() {
        let keys = TestKeys::new();
        let mut w = Worker::new(plan());
        let store = crate::shared::tests::FakeStore::default();
        let mut expired = good_claims();
        expired["exp"] = (NOW - 3600).into();
        let expired = sign(&keys, expired);
        for (token, want) in [("x", 400), ("a.b.c", 401), (expired.as_str(), 401)] {
            assert_eq!(status(&w.authenticate(&store, token, NOW, true)), want, "{token}: no fetch for it");
        }
        let mut other = good_claims();
        other["iss"] = "https://elsewhere.example.com".into();
        assert_eq!(status(&w.authenticate(&store, &sign(&keys, other), NOW, true)), 400);
        assert!(matches!(w.authenticate(&store, &sign(&keys, good_claims()), NOW, true), AuthOutcome::FetchKeys(_)));
    }

    /// A host whose clock cannot be read gives 0: every expiry would pass, cached or not.
    #[test]
    fn a_clock_at_zero_admits_nobody() {
        let keys = TestKeys::new();
        let mut w = worker_with_keys(&keys);
        let store = crate::shared::tests::FakeStore::default();
        let token = sign(&keys, good_claims());
        assert!(matches!(w.authenticate(&store, &token, NOW, true), AuthOutcome::Admitted(_)));
        let AuthOutcome::Refused(reply) = w.authenticate(&store, &token, 0, true) else { panic!("admitted at time 0") };
        assert_eq!((reply.status, reply.reason), (503, "clock_unavailable"));
    }

    #[test]
    fn a_key_document_beyond_any_idps_is_refused_unparsed() {
        let keys = TestKeys::new();
        let mut w = worker_with_keys(&keys);
        let mut huge = keys.jwks().into_bytes();
        huge.truncate(huge.len() - 2);
        huge.extend(format!(r#"],"pad":"{}"}}"#, "x".repeat(MAX_KEY_DOCUMENT_BYTES)).bytes());
        assert!(matches!(w.on_fetched(&Fetch::Jwks, Some(200), &huge, NOW + 1), FetchProgress::Failed(_)));
        assert!(w.keys.keys(&w.plan.oidc, NOW + 1).is_ok(), "the keys it had are kept");
    }

    #[test]
    fn unknown_kid_refetches_once_per_interval() {
        let keys = TestKeys::new();
        let mut w = worker_with_keys(&keys);
        let rotated = TestKeys::new();
        let token = {
            use jwt_simple::prelude::*;
            let pair = rotated.rsa.clone().with_key_id("rsa-2");
            pair.sign(crate::jwt::tests::bare(good_claims())).unwrap()
        };
        assert!(matches!(
            w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW, true),
            AuthOutcome::FetchKeys(Callout { fetch: Fetch::Jwks, .. })
        ));
        assert_eq!(
            status(&w.authenticate(&crate::shared::tests::FakeStore::default(), &token, NOW, true)),
            401,
            "throttled: refused without a fetch"
        );
    }

    #[test]
    fn a_remembered_token_is_refused_once_older_than_max_token_age() {
        let keys = TestKeys::new();
        let mut doc = crate::config::tests::sample();
        doc["oidc"]["max_token_age_seconds"] = json!(300);
        doc["oidc"]["leeway_seconds"] = json!(0);
        let plan = Plan::from_json(doc.to_string().as_bytes(), &|_| Some("sk-test".to_owned())).unwrap();
        let mut claims = good_claims();
        claims["iat"] = json!(NOW);
        claims["exp"] = json!(NOW + 3600);
        let token = sign(&keys, claims);
        let store = crate::shared::tests::FakeStore::default();
        let mut seen = worker_with_plan(plan.clone(), &keys);
        assert_eq!(status(&seen.authenticate(&store, &token, NOW, true)), 200, "young: admitted and remembered");
        assert_eq!(status(&seen.authenticate(&store, &token, NOW + 299, true)), 200, "just before the limit");
        // At the age limit, the worker that remembers the token answers as one that never saw it.
        let mut fresh = worker_with_plan(plan, &keys);
        for (name, worker) in [("remembered", &mut seen), ("new", &mut fresh)] {
            let AuthOutcome::Refused(reply) = worker.authenticate(&store, &token, NOW + 300, true) else {
                panic!("{name}: admitted past max_token_age_seconds");
            };
            assert_eq!((reply.status, reply.reason), (401, "token_too_old"), "{name}");
        }
    }

    /// An IdP that rotates to a new key under a kid already known: the first token the keys
    /// held cannot verify gets one refetch (the same cool-down as an unknown kid), and is
    /// admitted with the new keys; within the cool-down a bad signature is refused at once.
    #[test]
    fn a_bad_signature_under_a_known_kid_refetches_once_per_interval() {
        let store = crate::shared::tests::FakeStore::default();
        let (old, new) = (TestKeys::new(), TestKeys::new());
        let mut w = worker_with_keys(&old);
        let token = sign(&new, good_claims());
        assert!(matches!(
            w.authenticate(&store, &token, NOW, true),
            AuthOutcome::FetchKeys(Callout { fetch: Fetch::Jwks, .. })
        ));
        // Without a fetch allowed (the request's own after its refetch), a bad signature is final.
        assert_eq!(status(&w.authenticate(&store, &token, NOW, false)), 401);
        assert!(matches!(
            w.on_fetched(&Fetch::Jwks, Some(200), new.jwks().as_bytes(), NOW),
            FetchProgress::Installed(_)
        ));
        assert_eq!(status(&w.authenticate(&store, &token, NOW, false)), 200, "verified by the new key");
        // A forged token within the cool-down: refused without a fetch.
        let forged = sign(&TestKeys::new(), good_claims());
        assert_eq!(status(&w.authenticate(&store, &forged, NOW, true)), 401, "throttled");
    }

    /// A key of the vectors outside the key policy (RSA-1024).
    fn weak_key() -> serde_json::Value {
        let doc: serde_json::Value = serde_json::from_str(include_str!("jwks/vectors.json")).unwrap();
        doc["jwks"]["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rsa1024").unwrap().clone()
    }

    /// An IdP that publishes only keys outside the key policy has withdrawn the keys it no longer
    /// lists: tokens signed by them, new or remembered, stop verifying at once. Its own tokens are
    /// the administrator's problem: a 400 that says so, not a 401 that sends Claude Code to sign
    /// in again, and no refetch.
    #[test]
    fn keys_outside_the_policy_replace_withdrawn_ones_and_their_tokens_are_refused_as_the_idps() {
        use base64::Engine;
        let keys = TestKeys::new();
        let store = crate::shared::tests::FakeStore::default();
        let mut w = worker_with_keys(&keys);
        let cached = sign(&keys, good_claims());
        assert_eq!(status(&w.authenticate(&store, &cached, NOW, true)), 200);
        let only_weak = json!({"keys": [weak_key()]}).to_string();
        assert!(matches!(
            w.on_fetched(&Fetch::Jwks, Some(200), only_weak.as_bytes(), NOW + 1),
            FetchProgress::Installed(_)
        ));
        let mut claims = good_claims();
        claims["jti"] = json!("new");
        let fresh = sign(&keys, claims);
        assert_ne!(status(&w.authenticate(&store, &fresh, NOW + 2, false)), 200, "rsa-1 is withdrawn");
        assert_ne!(status(&w.authenticate(&store, &cached, NOW + 2, false)), 200, "remembered, rsa-1 is withdrawn");

        // A token naming a key outside the policy, beside usable keys (an IdP rotating to one).
        let mut mixed: serde_json::Value = serde_json::from_str(&keys.jwks()).unwrap();
        mixed["keys"].as_array_mut().unwrap().push(weak_key());
        assert!(matches!(
            w.on_fetched(&Fetch::Jwks, Some(200), mixed.to_string().as_bytes(), NOW + 3),
            FetchProgress::Installed(_)
        ));
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token =
            format!("{}.{}.c2ln", enc(json!({"alg": "RS256", "kid": "rsa1024", "typ": "JWT"})), enc(good_claims()));
        // One refetch (the IdP may have just replaced the key), under the unknown-kid cool-down.
        assert!(matches!(w.authenticate(&store, &token, NOW + 400, true), AuthOutcome::FetchKeys(_)));
        let AuthOutcome::Refused(reply) = w.authenticate(&store, &token, NOW + 400, false) else {
            panic!("refused after the refetch")
        };
        assert_eq!((reply.status, reply.reason), (400, "key_not_accepted"));
        assert!(reply.headers.contains(&("x-should-retry".into(), "false".into())));
        let AuthOutcome::Refused(throttled) = w.authenticate(&store, &token, NOW + 400, true) else {
            panic!("no second refetch within the cool-down")
        };
        assert_eq!(throttled.reason, "key_not_accepted");
        assert_eq!(status(&w.authenticate(&store, &sign(&keys, good_claims()), NOW + 400, true)), 200);
    }

    /// An IdP that replaces its key outside the policy by a good one under the same kid, or
    /// rotates to a new kid beside a kid-less key outside the policy: the first token of the new
    /// key takes a refetch and verifies (review of 1fe6fb1). A kid-less key outside the policy
    /// beside a usable one makes no kid-less token ambiguous.
    #[test]
    fn a_key_outside_the_policy_replaced_by_the_idp_is_picked_up_and_makes_no_token_ambiguous() {
        let keys = TestKeys::new();
        let store = crate::shared::tests::FakeStore::default();
        let set_with = |weak: serde_json::Value| {
            let mut set: serde_json::Value = serde_json::from_str(&keys.jwks()).unwrap();
            set["keys"].as_array_mut().unwrap().retain(|k| k["kid"] != "rsa-1");
            set["keys"].as_array_mut().unwrap().push(weak);
            set.to_string()
        };
        let mut same_kid = weak_key();
        same_kid["kid"] = json!("rsa-1");
        let mut kidless = weak_key();
        kidless.as_object_mut().unwrap().remove("kid");
        for weak in [same_kid, kidless] {
            // Each on a node of its own: the refetch cool-down is shared by the node's workers.
            let store = crate::shared::tests::FakeStore::default();
            let mut w = worker_with_keys(&keys);
            assert!(matches!(
                w.on_fetched(&Fetch::Jwks, Some(200), set_with(weak).as_bytes(), NOW),
                FetchProgress::Installed(_)
            ));
            let token = sign(&keys, good_claims());
            assert!(matches!(w.authenticate(&store, &token, NOW + 400, true), AuthOutcome::FetchKeys(_)));
            assert!(matches!(
                w.on_fetched(&Fetch::Jwks, Some(200), keys.jwks().as_bytes(), NOW + 400),
                FetchProgress::Installed(_)
            ));
            assert_eq!(status(&w.authenticate(&store, &token, NOW + 400, false)), 200);
        }
        // Kid-less keys: one usable RSA key and one outside the policy; a kid-less RS256 token.
        use jwt_simple::prelude::*;
        let mut usable: serde_json::Value = serde_json::from_str(&keys.jwks()).unwrap();
        let mut rsa = usable["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rsa-1").unwrap().clone();
        rsa.as_object_mut().unwrap().remove("kid");
        let mut weak = weak_key();
        weak.as_object_mut().unwrap().remove("kid");
        usable["keys"] = json!([rsa, weak]);
        let mut w = worker_with_keys(&keys);
        assert!(matches!(
            w.on_fetched(&Fetch::Jwks, Some(200), usable.to_string().as_bytes(), NOW),
            FetchProgress::Installed(_)
        ));
        let unnamed = RS256KeyPair::from_pem(&keys.rsa.to_pem().unwrap()).unwrap();
        let kidless_token = unnamed.sign(crate::jwt::tests::bare(good_claims())).unwrap();
        assert_eq!(status(&w.authenticate(&store, &kidless_token, NOW, false)), 200);
    }

    #[test]
    fn a_remembered_token_goes_with_the_key_that_verified_it_named_or_not() {
        use jwt_simple::prelude::*;
        let without_kids = |keys: &TestKeys| {
            let mut doc: serde_json::Value = serde_json::from_str(&keys.jwks()).unwrap();
            for key in doc["keys"].as_array_mut().unwrap() {
                key.as_object_mut().unwrap().remove("kid");
            }
            doc.to_string()
        };
        let store = crate::shared::tests::FakeStore::default();
        let (old, new) = (TestKeys::new(), TestKeys::new());
        let unnamed = RS256KeyPair::from_pem(&old.rsa.to_pem().unwrap()).unwrap();
        let unnamed_token = unnamed.sign(crate::jwt::tests::bare(good_claims())).unwrap();
        let named_token = sign(&old, good_claims());
        for (name, token, rotated) in [
            ("no kid", &unnamed_token, without_kids(&new)),
            // An IdP that reuses a kid for a new key.
            ("the same kid, another key", &named_token, new.jwks()),
        ] {
            let mut w = worker_with_keys(&old);
            if name == "no kid" {
                assert!(matches!(
                    w.on_fetched(&Fetch::Jwks, Some(200), without_kids(&old).as_bytes(), NOW),
                    FetchProgress::Installed(_)
                ));
            }
            assert_eq!(status(&w.authenticate(&store, token, NOW, true)), 200, "{name}: admitted, remembered");
            assert!(matches!(
                w.on_fetched(&Fetch::Jwks, Some(200), rotated.as_bytes(), NOW + 1),
                FetchProgress::Installed(_)
            ));
            assert_eq!(status(&w.authenticate(&store, token, NOW + 1, false)), 401, "{name}: its key is gone");
        }
    }

    #[test]
    fn no_tier_is_refused() {
        let keys = TestKeys::new();
        let mut w = worker_with_keys(&keys);
        let mut claims = good_claims();
        claims["groups"] = json!(["sales"]);
        assert_eq!(
            status(&w.authenticate(&crate::shared::tests::FakeStore::default(), &sign(&keys, claims), NOW, true)),
            400
        );
    }

    #[test]
    fn forward_sets_key_identity_and_length() {
        let keys = TestKeys::new();
        let mut w = worker_with_keys(&keys);
        let AuthOutcome::Admitted(a) =
            w.authenticate(&crate::shared::tests::FakeStore::default(), &sign(&keys, good_claims()), NOW, true)
        else {
            panic!()
        };
        let store = crate::shared::tests::FakeStore::default();
        let mut forward = |body: &[u8]| w.forward(&store, &a, Endpoint::Messages, body, &[], NOW);
        let (f, metering) = forward(br#"{"model":"claude-sonnet-4-6","max_tokens":5}"#).unwrap();
        assert!(metering.is_some());
        assert_eq!(f.body, None, "alias equals model id: body untouched");
        let get = |name: &str| f.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("x-api-key"), Some("sk-test"));
        assert_eq!(get("x-authenticated-user"), Some("alice"));
        assert_eq!(get("x-user-email"), Some("alice@example.com"));
        assert_eq!(get("x-user-tier"), Some("standard"));
        assert_eq!(get("content-length"), None, "the client's length stands for a body that goes as it came");
        let refused = forward(br#"{"model":"claude-opus-4-7"}"#).unwrap_err();
        assert_eq!((refused.reply.status, refused.model.as_deref()), (400, Some("claude-opus-4-7")));
        // The client chooses it: the record keeps its start only.
        let long = format!(r#"{{"model":"{}"}}"#, "é".repeat(5000));
        assert_eq!(forward(long.as_bytes()).unwrap_err().model.map(|m| m.chars().count()), Some(REFUSED_MODEL_CHARS));
        assert_eq!(forward(br#"{"model":"claude-sonnet-4-6","model":"x"}"#).unwrap_err().model, None);
        // A rewritten body's length: the simulator checks it on every forward (request::sim).
        assert_eq!(forward(b"{").unwrap_err().reply.status, 400);
    }

    #[test]
    fn a_budget_refusal_names_the_model_it_was_for() {
        let keys = TestKeys::new();
        let mut doc = crate::config::tests::sample();
        doc["tiers"][1]["limits"] = json!([{"limit": 10, "window_seconds": 60}]);
        let plan = Plan::from_json(doc.to_string().as_bytes(), &|_| Some("sk-test".to_owned())).unwrap();
        let mut w = worker_with_plan(plan, &keys);
        let store = crate::shared::tests::FakeStore::default();
        let AuthOutcome::Admitted(a) = w.authenticate(&store, &sign(&keys, good_claims()), NOW, true) else { panic!() };
        let body = br#"{"model":"claude-sonnet-4-6","max_tokens":100}"#;
        assert!(w.forward(&store, &a, Endpoint::Messages, body, &[], NOW).is_ok(), "the first holds the budget");
        let refused = w.forward(&store, &a, Endpoint::Messages, body, &[], NOW).unwrap_err();
        // The first is still running: its hold, not spend, fills the budget.
        assert_eq!((refused.reply.status, refused.reply.reason), (429, "budget_in_flight"));
        assert_eq!(refused.model.as_deref(), Some("claude-sonnet-4-6"));
    }

    /// Fast mode on a priced model is forwarded only when the model has fast-mode rates: its cost
    /// could not be told otherwise (2 to 6 times the standard rates). An unpriced model's tokens
    /// count as ever.
    #[test]
    fn fast_mode_goes_through_only_where_its_cost_can_be_told() {
        let keys = TestKeys::new();
        let rates = json!({"input": 5, "output": 25, "cache_write": 6.25, "cache_read": 0.5});
        let mut doc = crate::config::tests::sample();
        doc["models"][0]["price"] = rates.clone();
        doc["models"][1]["price"] =
            json!({"input": 5, "output": 25, "cache_write": 6.25, "cache_read": 0.5, "fast": rates});
        doc["models"]
            .as_array_mut()
            .unwrap()
            .push(json!({"alias": "unpriced", "target": "anthropic", "model_id": "u"}));
        doc["tiers"][0]["models"] = json!(["claude-opus-4-7", "claude-sonnet-4-6", "unpriced"]);
        let plan = Plan::from_json(doc.to_string().as_bytes(), &|_| Some("sk-test".to_owned())).unwrap();
        let mut w = worker_with_plan(plan, &keys);
        let store = crate::shared::tests::FakeStore::default();
        let mut claims = good_claims();
        claims["groups"] = json!(["claude-power-users"]);
        let AuthOutcome::Admitted(a) = w.authenticate(&store, &sign(&keys, claims), NOW, true) else { panic!() };
        let betas = ["claude-code-20250219,fast-mode-2026-02-01"];
        let body = |model: &str| format!(r#"{{"model":"{model}","max_tokens":100}}"#);
        let refused = w.forward(&store, &a, Endpoint::Messages, body("claude-sonnet-4-6").as_bytes(), &betas, NOW);
        let refused = refused.unwrap_err();
        assert_eq!((refused.reply.status, refused.reply.reason), (400, "fast_mode_not_priced"));
        assert!(String::from_utf8_lossy(&refused.reply.body).contains("/fast"));
        assert_eq!(refused.model.as_deref(), Some("claude-sonnet-4-6"));
        for (model, betas) in
            [("claude-sonnet-4-6", &[][..]), ("claude-opus-4-7", &betas[..]), ("unpriced", &betas[..])]
        {
            assert!(w.forward(&store, &a, Endpoint::Messages, body(model).as_bytes(), betas, NOW).is_ok(), "{model}");
        }
        // The advisor tool consults a model named inside `tools`: refused, whatever the model.
        let advisor = ["claude-code-20250219,advisor-tool-2026-03-01"];
        let refused =
            w.forward(&store, &a, Endpoint::Messages, body("unpriced").as_bytes(), &advisor, NOW).unwrap_err();
        assert_eq!((refused.reply.status, refused.reply.reason), (400, "advisor_tool"));
        assert!(String::from_utf8_lossy(&refused.reply.body).contains("CLAUDE_CODE_DISABLE_ADVISOR_TOOL=1"));
    }
}
