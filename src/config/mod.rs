//! Filter configuration: the JSON document as written by an operator (`raw` types with
//! `deny_unknown_fields`) and its compiled, checked form ([`Plan`]) that requests use.
//!
//! The document is parsed and checked once, in `on_configure`; a bad document never loads.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::budget::Limit;
use crate::credential_refusal::SentCredentials;
use crate::url::HttpUrl;

mod bedrock;
mod limits;
mod raw;
mod store;

use raw::{RawConfig, RawIdentityHeaders, RawModel, RawOidc, RawTarget, RawTier};

/// Longest timeout for a callout: a host takes it as 32-bit milliseconds.
pub(crate) const MAX_TIMEOUT_MS: u64 = 300_000;
/// Most clock skew forgiven on a token's time claims (Envoy's `jwt_authn` defaults to 60 s).
const MAX_LEEWAY_SECONDS: u64 = 600;

/// Longest token taken (`oidc.max_token_bytes`).
const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Most verified tokens a worker remembers (`oidc.token_cache_entries`).
const MAX_TOKEN_CACHE_ENTRIES: usize = 1 << 20;

/// Most `max_body_bytes`: twice the Anthropic API's own request limit (32 MB). Every byte is held
/// by the proxy and copied into the VM before the request goes on.
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Most `validation_cache_bytes` (each worker holds its own).
const MAX_VALIDATION_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest period or age in seconds: a year.
pub(crate) const MAX_SECONDS: u64 = 366 * 86_400;

pub use bedrock::BedrockTarget;
pub use limits::{short_digest, Budgets, LongContext, Price, Rates, Reserve, MAX_UNITS};
pub(crate) use store::MAX_PERIOD_MS;
pub use store::{OnStoreFailure, StoreKind, StorePlan, TICK_MS};

/// A configuration problem, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `tiers[1].models[0]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "config error: {}", self.problem)
        } else {
            write!(f, "config error: {}: {}", self.field, self.problem)
        }
    }
}

/// Which wire protocol and credential a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// The Anthropic Messages API, authenticated by `x-api-key`.
    Anthropic,
    /// Amazon Bedrock `InvokeModel`, signed with AWS SigV4 (see [`crate::bedrock`]).
    Bedrock,
}

impl Provider {
    /// The name used in rate-limit header names.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Bedrock => "bedrock",
        }
    }
}

/// Where the filter finds the IdP's signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcPlan {
    /// Expected `iss`, exactly as configured.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// The claim that carries the audience: `aud`, or `client_id` for an IdP whose access tokens
    /// have none (Amazon Cognito).
    pub audience_claim: String,
    /// `<issuer>/.well-known/openid-configuration`, used when no JWKS URL is configured.
    pub discovery_url: HttpUrl,
    /// Callout upstream for discovery (`host:port`, also the Envoy cluster name).
    pub upstream: String,
    /// Explicit JWKS URL; when absent the discovery document names it.
    pub jwks_uri: Option<HttpUrl>,
    /// Callout upstream for the JWKS.
    pub jwks_upstream: String,
    /// Dotted path of the claim that lists the person's groups.
    pub groups_claim: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub leeway_seconds: u64,
    /// Longest token accepted, bytes.
    pub max_token_bytes: usize,
    /// How often keys are refreshed in the background, seconds.
    pub jwks_refresh_seconds: u64,
    /// How long keys stay usable without a successful refresh, seconds.
    pub jwks_max_age_seconds: u64,
    /// Least time between two refetches caused by unknown `kid`s, seconds.
    pub unknown_kid_refetch_seconds: u64,
    /// Timeout of each IdP callout, milliseconds.
    pub callout_timeout_ms: u64,
    /// Most verified tokens remembered per worker.
    pub token_cache_entries: usize,
    /// Tokens issued (`iat`) longer ago than this are refused: the revocation delay.
    pub max_token_age_seconds: Option<u64>,
    /// After keys have been missing this long, refusals tell clients not to retry.
    pub keys_fail_fast_seconds: u64,
    /// The shared-data keys of this key source's record and unknown-`kid` cool-down: one per
    /// issuer and configured JWKS URL, so that configurations for other IdPs (Kong's filter
    /// chains, Envoy listeners sharing a VM id, a reload to another IdP) never take each
    /// other's keys, and a reload for the same IdP keeps them.
    pub shared_key: String,
    /// See [`OidcPlan::shared_key`].
    pub kid_refetch_key: String,
}

/// What a person without access is told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// Whom to ask for access (a name, channel or URL), shown in the refusal.
    pub contact: Option<String>,
    /// Whether the refusal lists the groups that give access (off: the company's group names
    /// are not shown to everyone who signs in).
    pub show_groups: bool,
}

/// Names of the identity headers set for the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Carries `sub`.
    pub user: String,
    /// Carries `email`.
    pub email: String,
    /// Carries the tier name.
    pub tier: String,
}

/// A provider endpoint with its credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Config name, sent upstream as `x-gateway-target` for routing.
    pub name: String,
    /// Wire protocol.
    pub provider: Provider,
    /// The provider key. Never logged: `Debug` hides it. Empty for Bedrock targets.
    pub api_key: String,
    /// Region, AWS credentials and betas; `Some` exactly for [`Provider::Bedrock`].
    pub bedrock: Option<BedrockTarget>,
    /// What of it goes upstream and must never come back to a client, shared by every request.
    pub(crate) sent: Arc<SentCredentials>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("api_key", &"<redacted>")
            .field("bedrock", &self.bedrock)
            .finish()
    }
}

/// A model alias a client may send, and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// What Claude Code sends as `model`.
    pub alias: String,
    /// Index into [`Plan::targets`].
    pub target: usize,
    /// What the provider receives as `model`.
    pub model_id: String,
    /// Dollars per million tokens, when configured.
    pub price: Option<Price>,
}

/// A group of people with the same models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Tier name, sent upstream and shown in messages.
    pub name: String,
    /// IdP groups that place a person in this tier.
    pub groups: Vec<String>,
    /// Indexes into [`Plan::models`], in config order.
    pub models: Vec<usize>,
    /// Token or cost budgets, all enforced together.
    pub limits: Vec<Limit>,
}

impl Tier {
    /// The aliases of this tier, in config order, for messages.
    pub fn aliases<'a>(&'a self, plan: &'a Plan) -> impl Iterator<Item = &'a str> {
        self.models.iter().filter_map(|&m| plan.models.get(m)).map(|m| m.alias.as_str())
    }

    /// The aliases of this tier served by the Anthropic API (not by Bedrock), in config order.
    pub fn anthropic_aliases<'a>(&'a self, plan: &'a Plan) -> impl Iterator<Item = &'a str> {
        let on_anthropic = |m: &&Model| plan.targets.get(m.target).is_some_and(|t| t.bedrock.is_none());
        self.models.iter().filter_map(|&m| plan.models.get(m)).filter(on_anthropic).map(|m| m.alias.as_str())
    }
}

/// The checked, compiled configuration that every request reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Key discovery and token rules.
    pub oidc: OidcPlan,
    /// Identity header names.
    pub identity_headers: IdentityHeaders,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Bytes of request-body elements each worker remembers as validated
    /// ([`crate::validated_elements`]); 0 remembers none.
    pub validation_cache_bytes: usize,
    /// Targets, sorted by name.
    pub targets: Vec<Target>,
    /// Models, in config order.
    pub models: Vec<Model>,
    /// Tiers, in config order (the first matching tier wins).
    pub tiers: Vec<Tier>,
    /// Reserve and warning behaviour of the budgets.
    pub budgets: Budgets,
    /// What a person without access is told.
    pub access: Access,
    /// The cluster-wide budget store, when the counters are shared between nodes.
    pub budget_store: Option<StorePlan>,
    /// What the configuration allows but an operator should hear of when it loads (a
    /// configuration that loaded before must keep loading after an update: these were accepted).
    pub notes: Vec<String>,
}

impl Plan {
    /// Parses and compiles a configuration document. `env` looks up VM environment variables.
    pub fn from_json(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, ConfigError> {
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        // Anything after the document (a second object from a merge, a stray brace) would
        // otherwise be dropped without a word, and with it settings the operator meant to apply.
        json.end().map_err(|e| ConfigError::new("", format!("text after the configuration document: {e}")))?;
        let document = serde_json::from_slice(bytes).map_err(|e| ConfigError::new("", e.to_string()))?;
        raw::no_positional_objects(&document)?;
        compile(raw, env)
    }

    /// The model entry for `alias` if `tier` may use it.
    pub fn model_for(&self, tier: &Tier, alias: &str) -> Option<&Model> {
        tier.models.iter().filter_map(|&m| self.models.get(m)).find(|m| m.alias == alias)
    }

    /// What the configuration allows but an operator should hear of when it loads.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.notes.clone();
        // The keys come from the configured JWKS URL, or else by way of the issuer's discovery.
        let (field, keys_from) = match &self.oidc.jwks_uri {
            Some(jwks) => ("oidc.jwks_uri", jwks),
            None => ("oidc.issuer", &self.oidc.discovery_url),
        };
        if keys_from.scheme == "http" && !is_loopback(&keys_from.host) {
            warnings.push(format!(
                "{field} is http:// on {}: the signing keys are fetched in plaintext, and anyone on the way \
                 could serve their own, unless the proxy's cluster or upstream for it uses TLS that verifies the IdP's \
                 certificate",
                keys_from.host
            ));
        }
        warnings
    }
}

/// Whether `host` is this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn compile(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, ConfigError> {
    let oidc = compile_oidc(raw.oidc)?;
    let identity_headers = compile_identity_headers(raw.identity_headers)?;
    if raw.max_body_bytes == 0 {
        return Err(ConfigError::new("max_body_bytes", "must be greater than 0"));
    }
    check_at_most(&[("validation_cache_bytes", raw.validation_cache_bytes, MAX_VALIDATION_CACHE_BYTES)])?;
    let mut notes = Vec::new();
    if raw.max_body_bytes > MAX_BODY_BYTES {
        notes.push(format!(
            "max_body_bytes: {} is more than the gateway holds; {MAX_BODY_BYTES} (64 MiB, twice the Anthropic \
             API's own limit) is used",
            raw.max_body_bytes
        ));
    }
    if raw.targets.is_empty() {
        return Err(ConfigError::new("targets", "at least one target is required"));
    }
    let mut names: Vec<String> = raw.targets.keys().cloned().collect();
    names.sort();
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        let Some(target) = raw.targets.get(&name) else {
            continue;
        };
        targets.push(compile_target(&name, target, env)?);
    }
    let models = compile_models(raw.models, &targets)?;
    let tiers = compile_tiers(raw.tiers, &models, &oidc.issuer, &mut notes)?;
    note_shared_labels("models", "alias", models.iter().map(|m| m.alias.as_str()), &mut notes);
    note_shared_labels("tiers", "name", tiers.iter().map(|t| t.name.as_str()), &mut notes);
    let budgets = limits::compile_budgets(raw.budgets)?;
    let access =
        Access { contact: raw.access.contact.filter(|c| !c.trim().is_empty()), show_groups: raw.access.show_groups };
    let budget_store = raw.budget_store.map(store::compile_store).transpose()?;
    Ok(Plan {
        budgets,
        budget_store,
        oidc,
        identity_headers,
        max_body_bytes: usize::try_from(raw.max_body_bytes.min(MAX_BODY_BYTES)).unwrap_or(usize::MAX),
        validation_cache_bytes: usize::try_from(raw.validation_cache_bytes).unwrap_or(usize::MAX),
        targets,
        models,
        tiers,
        access,
        notes,
    })
}

fn compile_oidc(raw: RawOidc) -> Result<OidcPlan, ConfigError> {
    let issuer_url = HttpUrl::parse(&raw.issuer).map_err(|e| ConfigError::new("oidc.issuer", e))?;
    // OpenID Connect Discovery: an issuer has no query or fragment (its discovery document is
    // found by appending to the path).
    if raw.issuer.contains(['?', '#']) {
        return Err(ConfigError::new("oidc.issuer", "must not have a query or fragment"));
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
        return Err(ConfigError::new("oidc.audiences", "at least one non-empty audience is required"));
    }
    // A token's `aud` is compared byte for byte: a space around one never matches.
    if let Some(i) = raw.audiences.iter().position(|a| a.trim() != a || a.chars().any(char::is_control)) {
        return Err(ConfigError::new(
            format!("oidc.audiences[{i}]"),
            "must not have spaces around it or control characters",
        ));
    }
    if raw.audience_claim.is_empty()
        || raw.audience_claim.trim() != raw.audience_claim
        || raw.audience_claim.chars().any(char::is_control)
    {
        return Err(ConfigError::new(
            "oidc.audience_claim",
            "must be a claim name (`aud`, or `client_id` for Cognito)",
        ));
    }
    // A claim every token of the IdP carries alike (`iss`), or one the person is known by, would
    // take tokens the IdP issued for any other application: the audience check would be gone.
    let groups_top = raw.groups_claim.split('.').next().unwrap_or_default();
    if NOT_AUDIENCE_CLAIMS.contains(&raw.audience_claim.as_str()) || raw.audience_claim == groups_top {
        return Err(ConfigError::new(
            "oidc.audience_claim",
            format!(
                "{:?} does not name the application a token is for, so any application's tokens would pass; \
                 use `aud` (or `client_id` for Cognito, `azp`, `cid`, `appid`)",
                raw.audience_claim
            ),
        ));
    }
    let upstream = match raw.upstream {
        Some(u) => check_upstream("oidc.upstream", u)?,
        None => issuer_url.host_port(),
    };
    let jwks_uri = match raw.jwks_uri {
        Some(u) => Some(HttpUrl::parse(&u).map_err(|e| ConfigError::new("oidc.jwks_uri", e))?),
        None => None,
    };
    let jwks_upstream = match raw.jwks_upstream {
        Some(u) => check_upstream("oidc.jwks_upstream", u)?,
        // Callouts go to the issuer's upstream: a JWKS elsewhere would be asked of the wrong
        // server and keys would never load (discovery refuses the same case at run time).
        None if jwks_uri.as_ref().is_some_and(|j| !j.same_origin(&issuer_url)) => {
            return Err(ConfigError::new(
                "oidc.jwks_upstream",
                "required when oidc.jwks_uri is on another host than the issuer",
            ))
        }
        None => upstream.clone(),
    };
    let groups_claim: Vec<String> = raw.groups_claim.split('.').map(str::to_owned).collect();
    // A name with spaces around it matches no claim: everyone would be in no tier.
    if groups_claim.iter().any(|part| part.is_empty() || part.trim() != part) {
        return Err(ConfigError::new("oidc.groups_claim", "must be a claim name or a dotted path"));
    }
    let positive = [
        ("oidc.jwks_refresh_seconds", raw.jwks_refresh_seconds),
        ("oidc.jwks_max_age_seconds", raw.jwks_max_age_seconds),
        ("oidc.callout_timeout_ms", raw.callout_timeout_ms),
        // 0 would let a flood of tokens naming unknown keys refetch the JWKS on every request.
        ("oidc.unknown_kid_refetch_seconds", raw.unknown_kid_refetch_seconds),
        ("oidc.max_token_bytes", raw.max_token_bytes),
        ("oidc.token_cache_entries", raw.token_cache_entries as u64),
    ];
    if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(ConfigError::new(*field, "must be greater than 0"));
    }
    // Upper bounds: a timeout reaches the host as 32-bit milliseconds (a larger one wrapped to a
    // few ms, or to 0, which Envoy reads as "no timeout"), and a leeway of years would accept
    // expired tokens.
    let at_most = [
        ("oidc.callout_timeout_ms", raw.callout_timeout_ms, MAX_TIMEOUT_MS),
        ("oidc.leeway_seconds", raw.leeway_seconds, MAX_LEEWAY_SECONDS),
        ("oidc.jwks_refresh_seconds", raw.jwks_refresh_seconds, MAX_SECONDS),
        ("oidc.jwks_max_age_seconds", raw.jwks_max_age_seconds, MAX_SECONDS),
        ("oidc.unknown_kid_refetch_seconds", raw.unknown_kid_refetch_seconds, MAX_SECONDS),
        ("oidc.keys_fail_fast_seconds", raw.keys_fail_fast_seconds, MAX_SECONDS),
        ("oidc.max_token_age_seconds", raw.max_token_age_seconds.unwrap_or(0), MAX_SECONDS),
    ];
    check_at_most(&at_most)?;
    // A header line longer than any proxy takes (Envoy's limit is at most 96 KiB, nginx's
    // large_client_header_buffers a few); a u64, not a usize, so the VM (32 bits) and a native
    // build give the same answer.
    if raw.max_token_bytes > MAX_TOKEN_BYTES {
        return Err(ConfigError::new("oidc.max_token_bytes", format!("must be at most {MAX_TOKEN_BYTES}")));
    }
    // Each entry holds a person's identity and groups: a bound on what a worker may keep.
    if raw.token_cache_entries > MAX_TOKEN_CACHE_ENTRIES {
        return Err(ConfigError::new("oidc.token_cache_entries", format!("must be at most {MAX_TOKEN_CACHE_ENTRIES}")));
    }
    if raw.max_token_age_seconds == Some(0) {
        return Err(ConfigError::new("oidc.max_token_age_seconds", "must be greater than 0"));
    }
    if raw.jwks_max_age_seconds < raw.jwks_refresh_seconds {
        return Err(ConfigError::new("oidc.jwks_max_age_seconds", "must not be less than oidc.jwks_refresh_seconds"));
    }
    let source = limits::short_digest(&format!(
        "{}\n{}",
        raw.issuer,
        jwks_uri.as_ref().map(|u: &HttpUrl| format!("{}://{}{}", u.scheme, u.authority, u.path)).unwrap_or_default()
    ));
    Ok(OidcPlan {
        shared_key: format!("csg/jwks/{source}"),
        kid_refetch_key: format!("csg/kidfetch/{source}"),
        discovery_url: issuer_url.join_path("/.well-known/openid-configuration"),
        issuer: raw.issuer,
        audiences: raw.audiences,
        audience_claim: raw.audience_claim,
        upstream,
        jwks_uri,
        jwks_upstream,
        groups_claim,
        leeway_seconds: raw.leeway_seconds,
        max_token_bytes: usize::try_from(raw.max_token_bytes).unwrap_or(usize::MAX),
        jwks_refresh_seconds: raw.jwks_refresh_seconds,
        jwks_max_age_seconds: raw.jwks_max_age_seconds,
        unknown_kid_refetch_seconds: raw.unknown_kid_refetch_seconds,
        callout_timeout_ms: raw.callout_timeout_ms,
        token_cache_entries: raw.token_cache_entries,
        max_token_age_seconds: raw.max_token_age_seconds,
        keys_fail_fast_seconds: raw.keys_fail_fast_seconds,
    })
}

/// Refuses the first `(field, value, most)` whose value is above its most.
fn check_at_most(checks: &[(&str, u64, u64)]) -> Result<(), ConfigError> {
    match checks.iter().find(|(_, value, most)| value > most) {
        Some((field, _, most)) => Err(ConfigError::new(*field, format!("must be at most {most}"))),
        None => Ok(()),
    }
}

fn check_upstream(field: &str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() || value.contains('/') || value.chars().any(char::is_whitespace) {
        return Err(ConfigError::new(field, "must be host:port (the Envoy cluster name / Kong upstream)"));
    }
    Ok(value)
}

fn compile_identity_headers(raw: RawIdentityHeaders) -> Result<IdentityHeaders, ConfigError> {
    let check = |field: &str, name: String| -> Result<String, ConfigError> {
        let name = name.to_ascii_lowercase();
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        // Headers that frame or route the request, or that the gateway sets itself.
        let reserved = matches!(
            name.as_str(),
            "authorization"
                | "x-api-key"
                | "host"
                | "content-length"
                | "content-type"
                | "content-encoding"
                | "accept-encoding"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "upgrade"
                | "expect"
                | "cookie"
                | "x-gateway-target"
                // Set by the proxy or the client for tracing and routing: overwriting them with an
                // identity would merge a person's requests into one trace or hide where they came from.
                | "x-request-id"
                | "forwarded"
                | "via"
                | "x-real-ip"
                | "user-agent"
                | "accept"
                | "x-claude-code-session-id"
                | "traceparent"
                | "tracestate"
                | "b3"
                | "x-client-trace-id"
                | "x-ot-span-context"
                // Anthropic takes a request with `Origin` for a browser's (CORS).
                | "origin"
        ) || ["proxy-", "anthropic-", "x-envoy-", "x-amz", "x-forwarded-", "x-b3-", "x-datadog-"]
            .iter()
            .any(|p| name.starts_with(p));
        if !valid || reserved {
            return Err(ConfigError::new(field, format!("{name:?} is not a usable header name")));
        }
        Ok(name)
    };
    let headers = IdentityHeaders {
        user: check("identity_headers.user", raw.user)?,
        email: check("identity_headers.email", raw.email)?,
        tier: check("identity_headers.tier", raw.tier)?,
    };
    if headers.email == headers.user {
        return Err(ConfigError::new("identity_headers.email", "must differ from identity_headers.user"));
    }
    if headers.tier == headers.user || headers.tier == headers.email {
        return Err(ConfigError::new("identity_headers.tier", "must differ from identity_headers.user and .email"));
    }
    Ok(headers)
}

/// The value of the VM environment variable `var`, named in the config field `field` (an
/// `*_env` field). A name is printable ASCII without `=` or spaces, as hosts take them
/// (`anthropic-api-key` included). What cannot be a name, and a name that is not a plain
/// identifier, is not repeated in the error: it may be the secret itself, pasted into the wrong
/// field, and config errors reach the log.
pub(crate) fn from_env(field: &str, var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let is_name = !var.is_empty() && var.len() <= 256 && var.bytes().all(|b| b.is_ascii_graphic() && b != b'=');
    if !is_name {
        return Err(ConfigError::new(
            field,
            "must be the name of an environment variable of the VM (printable, without '=' or spaces), not a \
             value; it is not repeated here in case it is a secret: give a secret in the field without `_env`, \
             or better, put it in a variable and name that",
        ));
    }
    env(var).ok_or_else(|| {
        let message = if plain_identifier(var) {
            format!("environment variable {var} is not set in the VM")
        } else {
            "the environment variable it names is not set in the VM (the name is not repeated here: it is not a \
             plain identifier, and may be a secret pasted into the wrong field)"
                .to_owned()
        };
        ConfigError::new(field, message)
    })
}

/// Whether a variable's name may be repeated in an error: a plain identifier, not a secret pasted
/// into the `_env` field.
fn plain_identifier(var: &str) -> bool {
    !var.starts_with(|c: char| c.is_ascii_digit()) && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a provider credential (`what`, e.g. "the api key") read from `field`, or from the
/// environment variable `var` when the field is an `_env` one. The value is never quoted.
pub(crate) fn check_credential(field: &str, what: &str, value: &str, var: Option<&str>) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        let message = match var {
            Some(var) if plain_identifier(var) => format!("environment variable {var} is set but empty"),
            Some(_) => format!("the environment variable it names is set but empty ({what} is empty)"),
            None => format!("{what} is empty"),
        };
        return Err(ConfigError::new(field, message));
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(ConfigError::new(field, format!("{what} contains control characters")));
    }
    // A credential pasted with a space or a stray character around it would be refused by the
    // provider on every request (and a SigV4 secret would sign every request wrongly): refused
    // here instead, without quoting it.
    if value.trim() != value || !value.is_ascii() {
        return Err(ConfigError::new(field, format!("{what} has spaces around it or characters that are not ASCII")));
    }
    Ok(())
}

fn compile_target(name: &str, raw: &RawTarget, env: &dyn Fn(&str) -> Option<String>) -> Result<Target, ConfigError> {
    let field = format!("targets.{name}");
    // The name goes upstream as `x-gateway-target`, which Envoy routes on: a name that cannot be
    // a header value would send the request down the default route.
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(ConfigError::new(field, "a target's name must be letters, digits, '-', '_' or '.'"));
    }
    if raw.provider == Provider::Bedrock {
        let bedrock = bedrock::compile(&field, raw, env)?;
        let c = &bedrock.credentials;
        let sent = SentCredentials::new(std::iter::once(c.access_key_id.as_str()).chain(c.session_token.as_deref()));
        return Ok(Target {
            name: name.to_owned(),
            provider: raw.provider,
            api_key: String::new(),
            bedrock: Some(bedrock),
            sent: Arc::new(sent),
        });
    }
    bedrock::check_absent(&field, raw)?;
    let api_key = match (&raw.api_key, &raw.api_key_env) {
        (Some(_), Some(_)) => return Err(ConfigError::new(field, "give api_key or api_key_env, not both")),
        (None, None) => return Err(ConfigError::new(field, "api_key or api_key_env is required")),
        (Some(key), None) => key.clone(),
        (None, Some(var)) => from_env(&format!("{field}.api_key_env"), var, env)?,
    };
    let key_field = if raw.api_key.is_some() { format!("{field}.api_key") } else { format!("{field}.api_key_env") };
    check_credential(&key_field, "the api key", &api_key, raw.api_key_env.as_deref())?;
    let sent = Arc::new(SentCredentials::new([api_key.as_str()]));
    Ok(Target { name: name.to_owned(), provider: raw.provider, api_key, bedrock: None, sent })
}

/// A tier's or model's name as it appears in metric names and labels: every character but
/// letters, digits, `-` and `_` becomes `_` (metric names are dot-separated paths).
pub fn metric_label(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Notes names that differ but share a metric label (`claude-3.5` and `claude-3_5`): their
/// metrics would add up in one series. A note, not an error: such a configuration loaded before.
fn note_shared_labels<'a>(list: &str, field: &str, names: impl Iterator<Item = &'a str>, notes: &mut Vec<String>) {
    let names: Vec<&str> = names.collect();
    for (i, name) in names.iter().enumerate() {
        let label = metric_label(name);
        if let Some(first) = names[..i].iter().find(|other| metric_label(other) == label) {
            notes.push(format!(
                "{list}[{i}].{field}: {name:?} and {first:?} are both {label:?} in metric labels, so their \
                 metrics add up in one series (usage records keep them apart); rename one to tell them apart"
            ));
        }
    }
}

fn compile_models(raw: Vec<RawModel>, targets: &[Target]) -> Result<Vec<Model>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new("models", "at least one model is required"));
    }
    let mut models: Vec<Model> = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let field = format!("models[{i}]");
        for (name, value) in [("alias", &m.alias), ("model_id", &m.model_id)] {
            if value.is_empty() {
                return Err(ConfigError::new(format!("{field}.{name}"), "must not be empty"));
            }
            // No client sends an alias with a space in it, and no provider has such a model id.
            if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::new(format!("{field}.{name}"), "must not have spaces or control characters"));
            }
        }
        if models.iter().any(|other| other.alias == m.alias) {
            return Err(ConfigError::new(format!("{field}.alias"), format!("duplicate alias {:?}", m.alias)));
        }
        let target = targets
            .iter()
            .position(|t| t.name == m.target)
            .ok_or_else(|| ConfigError::new(format!("{field}.target"), format!("unknown target {:?}", m.target)))?;
        let price = m.price.map(|raw| limits::compile_price(&format!("{field}.price"), raw)).transpose()?;
        models.push(Model { alias: m.alias, target, model_id: m.model_id, price });
    }
    Ok(models)
}

/// `issuer` scopes the tiers' budget counters (see [`limits::compile_limits`]).
fn compile_tiers(
    raw: Vec<RawTier>,
    models: &[Model],
    issuer: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<Tier>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new("tiers", "at least one tier is required"));
    }
    let mut tiers: Vec<Tier> = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let field = format!("tiers[{i}]");
        // The name goes upstream as a header value, which HTTP trims: "power " would look like
        // "power" there, and "   " like nothing.
        if t.name.trim().is_empty() || t.name.trim() != t.name || t.name.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "must be a non-empty printable name without spaces around it",
            ));
        }
        if tiers.iter().any(|other| other.name == t.name) {
            return Err(ConfigError::new(format!("{field}.name"), format!("duplicate tier {:?}", t.name)));
        }
        if t.groups.is_empty() {
            return Err(ConfigError::new(format!("{field}.groups"), "at least one group is required"));
        }
        if let Some(j) = t.groups.iter().position(|g| g.trim().is_empty()) {
            notes.push(format!("{field}.groups[{j}]: a blank group name, which no IdP group should match"));
        }
        // First match wins: a tier whose every group earlier tiers list is never chosen.
        if t.groups.iter().all(|g| tiers.iter().any(|e| e.groups.contains(g))) {
            let earlier: Vec<&str> = tiers
                .iter()
                .filter(|e| e.groups.iter().any(|g| t.groups.contains(g)))
                .map(|e| e.name.as_str())
                .collect();
            notes.push(format!(
                "{field}.groups: every group of tier {:?} is in an earlier tier ({}), and the first tier \
                 listing one of a person's groups is theirs: no one is ever in this tier",
                t.name,
                earlier.join(", ")
            ));
        }
        if t.models.is_empty() {
            return Err(ConfigError::new(format!("{field}.models"), "at least one model is required"));
        }
        let mut indexes = Vec::with_capacity(t.models.len());
        for (j, alias) in t.models.iter().enumerate() {
            let index = models.iter().position(|m| &m.alias == alias).ok_or_else(|| {
                ConfigError::new(format!("{field}.models[{j}]"), format!("unknown model alias {alias:?}"))
            })?;
            if indexes.contains(&index) {
                notes.push(format!("{field}.models[{j}]: {alias:?} is listed twice (once is enough)"));
                continue;
            }
            indexes.push(index);
        }
        let priced = indexes.iter().all(|&m| models.get(m).is_some_and(|m| m.price.is_some()));
        let budget =
            limits::RawTierBudget { limits: t.limits, window_type: t.window_type, counts: t.counts, per: t.per };
        let limits = limits::compile_limits(&field, issuer, &t.name, budget, priced)?;
        tiers.push(Tier { limits, name: t.name, groups: t.groups, models: indexes });
    }
    Ok(tiers)
}

/// Claims that never name the application a token is for (registered and identity claims).
const NOT_AUDIENCE_CLAIMS: [&str; 12] = [
    "iss",
    "sub",
    "exp",
    "nbf",
    "iat",
    "jti",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "groups",
    "scope",
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn sample() -> Value {
        json!({
            "oidc": {"issuer": "https://idp.example.com/oauth2/default", "audiences": ["claude-sso-gateway"]},
            "targets": {"anthropic": {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}},
            "models": [
                {"alias": "claude-sonnet-4-6", "target": "anthropic", "model_id": "claude-sonnet-4-6"},
                {"alias": "claude-opus-4-7", "target": "anthropic", "model_id": "claude-opus-4-7"}
            ],
            "tiers": [
                {"name": "power", "groups": ["claude-power-users"], "models": ["claude-opus-4-7", "claude-sonnet-4-6"]},
                {"name": "standard", "groups": ["claude-standard-users"], "models": ["claude-sonnet-4-6"]}
            ]
        })
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "ANTHROPIC_API_KEY" => Some("sk-ant-test".to_owned()),
            "EMPTY_KEY" => Some(String::new()),
            _ => None,
        }
    }

    fn load(doc: &Value) -> Result<Plan, ConfigError> {
        Plan::from_json(doc.to_string().as_bytes(), &env)
    }

    #[test]
    fn text_after_the_document_refuses_it() {
        let good = sample().to_string();
        let second = r#" {"oidc": {"issuer": "https://other.example.com", "audiences": ["x"]}}"#;
        for tail in [second, "}", " garbage", "\n[]"] {
            let err = Plan::from_json(format!("{good}{tail}").as_bytes(), &env).unwrap_err().to_string();
            assert!(
                err.starts_with("config error: text after the configuration document: trailing"),
                "{tail:?}: {err}"
            );
        }
        // Whitespace after it is no text.
        assert!(Plan::from_json(format!("{good} \n\t").as_bytes(), &env).is_ok());
    }

    #[test]
    fn sample_compiles_with_defaults() {
        let plan = load(&sample()).unwrap();
        assert_eq!(plan.oidc.upstream, "idp.example.com:443");
        assert_eq!(plan.oidc.jwks_upstream, "idp.example.com:443");
        assert_eq!(plan.oidc.discovery_url.path, "/oauth2/default/.well-known/openid-configuration");
        assert_eq!(plan.oidc.groups_claim, vec!["groups"]);
        assert_eq!(plan.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(plan.validation_cache_bytes, 4 * 1024 * 1024);
        assert_eq!(plan.targets[0].api_key, "sk-ant-test");
        assert_eq!(plan.tiers[1].models, vec![0]);
        assert_eq!(plan.identity_headers.user, "x-authenticated-user");
    }

    #[test]
    fn debug_output_hides_the_key() {
        let plan = load(&sample()).unwrap();
        assert!(!format!("{plan:?}").contains("sk-ant-test"));
    }

    /// A key pasted into `api_key_env` (or an AWS `*_env` field) is refused without being quoted:
    /// config errors are logged.
    #[test]
    fn a_secret_pasted_into_an_env_field_is_not_repeated() {
        let secret = "sk-ant-api03-SECRETSECRET-x_y";
        let mut doc = sample();
        doc["targets"]["anthropic"]["api_key_env"] = json!(secret);
        let error = Plan::from_json(doc.to_string().as_bytes(), &|_| None).unwrap_err().to_string();
        assert!(
            error.starts_with("config error: targets.anthropic.api_key_env: the environment variable it names"),
            "{error}"
        );
        assert!(!error.contains("SECRET"), "{error}");
        for var in ["", "A B", "AKIA/x+y=", "tab\there", &"A".repeat(257)] {
            let error = from_env("f", var, &|_| Some("v".into())).unwrap_err().to_string();
            assert!(error.contains("must be the name of"), "{var:?}: {error}");
        }
        // Names hosts take, identifiers or not.
        for var in ["AWS_SECRET_ACCESS_KEY_2", "anthropic-api-key", "svc.key", "1ABC"] {
            assert_eq!(from_env("f", var, &|_| Some("v".into())).unwrap(), "v", "{var}");
        }
        // Not set: an identifier is named, anything else (a pasted key is one) is not.
        assert!(from_env("f", "NOPE", &|_| None).unwrap_err().to_string().contains("variable NOPE is not set"));
        let error = from_env("f", "sk-ant-api03-SECRET", &|_| None).unwrap_err().to_string();
        assert!(error.contains("is not set") && !error.contains("SECRET"), "{error}");
        let mut doc = sample();
        doc["targets"]["bedrock"] = json!({"provider": "bedrock", "region": "us-east-1",
            "access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key_env": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRET"});
        let only_the_id = |n: &str| ["AWS_ACCESS_KEY_ID", "ANTHROPIC_API_KEY"].contains(&n).then(|| "v".to_owned());
        let error = Plan::from_json(doc.to_string().as_bytes(), &only_the_id).unwrap_err().to_string();
        assert!(error.contains("targets.bedrock.secret_access_key_env: the environment variable it names"), "{error}");
        assert!(!error.contains("SECRET"), "{error}");
        doc["targets"]["bedrock"]["secret_access_key_env"] = json!("wJalrXUtnFEMI=K7MDENG SECRET");
        let error = Plan::from_json(doc.to_string().as_bytes(), &only_the_id).unwrap_err().to_string();
        assert!(error.contains("secret_access_key_env: must be the name of") && !error.contains("SECRET"), "{error}");
        assert!(!error.contains("SECRET"), "{error}");
    }

    /// An IdP reached over plain HTTP, beyond this machine, is allowed (the proxy's cluster may
    /// add TLS) but said when the configuration loads.
    #[test]
    fn a_plaintext_idp_beyond_this_machine_is_warned_of() {
        let warnings = |issuer: &str, jwks: Option<&str>| {
            let mut doc = sample();
            doc["oidc"]["issuer"] = json!(issuer);
            if let Some(jwks) = jwks {
                doc["oidc"]["jwks_uri"] = json!(jwks);
                doc["oidc"]["jwks_upstream"] = json!("keys:80");
            }
            load(&doc).unwrap().warnings()
        };
        assert_eq!(warnings("https://idp.example.com", None), Vec::<String>::new());
        for local in ["http://127.0.0.1:9100", "http://localhost:8080/realms/x", "http://[::1]:9100"] {
            assert_eq!(warnings(local, None), Vec::<String>::new(), "{local}");
        }
        let w = warnings("http://keycloak.internal:8080/realms/x", None);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("oidc.issuer is http:// on keycloak.internal: the signing keys are fetched in plaintext")
        );
        let w = warnings("https://idp.example.com", Some("http://keys.example.com/jwks"));
        assert!(w.len() == 1 && w[0].starts_with("oidc.jwks_uri is http:// on keys.example.com"), "{w:?}");
        // With a JWKS URL, discovery (the issuer's URL) is not used.
        assert_eq!(warnings("http://idp.internal", Some("https://keys.example.com/jwks")), Vec::<String>::new());
    }

    /// Mistakes a configuration could make before this gateway checked for them still load (an
    /// update must not take a gateway down), and are said when it loads.
    #[test]
    fn harmless_mistakes_load_and_are_said() {
        let mut doc = sample();
        doc["tiers"][0]["models"] = json!(["claude-opus-4-7", "claude-sonnet-4-6", "claude-opus-4-7"]);
        doc["tiers"][1]["groups"] = json!(["claude-standard-users", " "]);
        doc["tiers"].as_array_mut().unwrap().push(
            json!({"name": "everyone", "groups": ["claude-power-users", "claude-standard-users"], "models": ["claude-sonnet-4-6"]}),
        );
        doc["max_body_bytes"] = json!(100_000_000_000_u64);
        let plan = load(&doc).unwrap();
        assert_eq!(plan.tiers[0].models, vec![1, 0], "the alias is kept once");
        assert_eq!(plan.max_body_bytes, 64 << 20, "the body limit is the most the gateway holds");
        assert_eq!(
            plan.warnings(),
            vec![
                "max_body_bytes: 100000000000 is more than the gateway holds; 67108864 (64 MiB, twice the Anthropic \
                 API's own limit) is used",
                "tiers[0].models[2]: \"claude-opus-4-7\" is listed twice (once is enough)",
                "tiers[1].groups[1]: a blank group name, which no IdP group should match",
                "tiers[2].groups: every group of tier \"everyone\" is in an earlier tier (power, standard), and the \
                 first tier listing one of a person's groups is theirs: no one is ever in this tier",
            ]
        );
        // A tier that only some of its groups share with earlier ones is reachable.
        let mut doc = sample();
        doc["tiers"][1]["groups"] = json!(["claude-power-users", "claude-standard-users"]);
        assert_eq!(load(&doc).unwrap().warnings(), Vec::<String>::new());
        // Names that differ but share a metric label: their metrics would add up in one series.
        let mut doc = sample();
        doc["tiers"][1]["name"] = json!("power.users");
        doc["tiers"][0]["name"] = json!("power_users");
        doc["models"][1]["alias"] = json!("claude-3.5");
        doc["models"][0]["alias"] = json!("claude-3_5");
        doc["tiers"][0]["models"] = json!(["claude-3_5", "claude-3.5"]);
        doc["tiers"][1]["models"] = json!(["claude-3.5"]);
        assert_eq!(
            load(&doc).unwrap().warnings(),
            vec![
                "models[1].alias: \"claude-3.5\" and \"claude-3_5\" are both \"claude-3_5\" in metric labels, so their \
                 metrics add up in one series (usage records keep them apart); rename one to tell them apart",
                "tiers[1].name: \"power.users\" and \"power_users\" are both \"power_users\" in metric labels, so their \
                 metrics add up in one series (usage records keep them apart); rename one to tell them apart",
            ]
        );
    }

    #[test]
    fn kong_empty_object_is_an_empty_list() {
        let mut doc = sample();
        doc["tiers"][0]["groups"] = json!({});
        assert_eq!(
            load(&doc).unwrap_err().to_string(),
            "config error: tiers[0].groups: at least one group is required"
        );
    }

    #[test]
    fn invalid_configs_name_the_field() {
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, &str)] = &[
            ("unknown field", |d| d["oidc"]["isuer"] = json!("x"), "config error: oidc.isuer: unknown field `isuer`"),
            (
                "an empty model id",
                |d| d["models"][0]["model_id"] = json!(""),
                "config error: models[0].model_id: must not be empty",
            ),
            (
                "an empty alias",
                |d| d["models"][0]["alias"] = json!(""),
                "config error: models[0].alias: must not be empty",
            ),
            // serde fills a struct from an array by position: such an object is refused, not misread.
            (
                "a limit as an array",
                |d| d["tiers"][1]["limits"] = json!([[60, 100_000]]),
                "config error: tiers[1].limits[0]: invalid type: array, expected an object",
            ),
            (
                "a price as an array",
                |d| d["models"][0]["price"] = json!([15, 3, 0.3, 3.75]),
                "config error: models[0].price: invalid type: array, expected an object",
            ),
            (
                "a tier as an array",
                |d| d["tiers"][1] = json!(["standard", ["claude-standard-users"], ["claude-sonnet-4-6"]]),
                "config error: tiers[1]: invalid type: array, expected an object",
            ),
            (
                "oidc as an array",
                |d| d["oidc"] = json!(["https://idp.example.com", ["claude-sso-gateway"]]),
                "config error: oidc: invalid type: array, expected an object",
            ),
            (
                "budgets as an array",
                |d| d["budgets"] = json!(["none", 0, 1.0]),
                "config error: budgets: invalid type: array, expected an object",
            ),
            (
                "the whole document as an array",
                |d| {
                    let o = d.as_object().unwrap();
                    *d = json!([o["oidc"], {}, 1000, 0, o["targets"], o["models"], o["tiers"]]);
                },
                "invalid type: array, expected an object",
            ),
            (
                "unknown alias in tier",
                |d| d["tiers"][1]["models"] = json!(["claude-opus-9"]),
                "config error: tiers[1].models[0]: unknown model alias \"claude-opus-9\"",
            ),
            (
                "missing env var",
                |d| d["targets"]["anthropic"]["api_key_env"] = json!("NOPE"),
                "config error: targets.anthropic.api_key_env: environment variable NOPE is not set in the VM",
            ),
            (
                "key from a variable that is set but empty",
                |d| d["targets"]["anthropic"]["api_key_env"] = json!("EMPTY_KEY"),
                "config error: targets.anthropic.api_key_env: environment variable EMPTY_KEY is set but empty",
            ),
            (
                "both key forms",
                |d| d["targets"]["anthropic"]["api_key"] = json!("k"),
                "config error: targets.anthropic: give api_key or api_key_env, not both",
            ),
            (
                "unknown target",
                |d| d["models"][0]["target"] = json!("bedrock"),
                "config error: models[0].target: unknown target \"bedrock\"",
            ),
            (
                "duplicate alias",
                |d| d["models"][1]["alias"] = json!("claude-sonnet-4-6"),
                "config error: models[1].alias: duplicate alias \"claude-sonnet-4-6\"",
            ),
            (
                "duplicate tier",
                |d| d["tiers"][1]["name"] = json!("power"),
                "config error: tiers[1].name: duplicate tier \"power\"",
            ),
            (
                "no audiences",
                |d| d["oidc"]["audiences"] = json!([]),
                "config error: oidc.audiences: at least one non-empty audience is required",
            ),
            (
                "bad issuer",
                |d| d["oidc"]["issuer"] = json!("idp.example.com"),
                "config error: oidc.issuer: must be an http:// or https:// URL",
            ),
            (
                "bad upstream",
                |d| d["oidc"]["upstream"] = json!("https://idp/"),
                "config error: oidc.upstream: must be host:port (the Envoy cluster name / Kong upstream)",
            ),
            (
                "an audience claim every token of the IdP carries",
                |d| d["oidc"]["audience_claim"] = json!("iss"),
                "config error: oidc.audience_claim: \"iss\" does not name the application a token is for",
            ),
            (
                "the groups claim as the audience claim",
                |d| {
                    d["oidc"]["groups_claim"] = json!("realm_access.roles");
                    d["oidc"]["audience_claim"] = json!("realm_access");
                },
                "config error: oidc.audience_claim: \"realm_access\" does not name the application",
            ),
            (
                "empty claim path",
                |d| d["oidc"]["groups_claim"] = json!("realm_access."),
                "config error: oidc.groups_claim: must be a claim name or a dotted path",
            ),
            (
                "a claim name with a space",
                |d| d["oidc"]["groups_claim"] = json!(" groups"),
                "config error: oidc.groups_claim: must be a claim name or a dotted path",
            ),
            (
                "zero refresh",
                |d| d["oidc"]["jwks_refresh_seconds"] = json!(0),
                "config error: oidc.jwks_refresh_seconds: must be greater than 0",
            ),
            (
                "reserved header",
                |d| d["identity_headers"] = json!({"user": "Authorization"}),
                "config error: identity_headers.user: \"authorization\" is not a usable header name",
            ),
            (
                "a callout timeout a host would take as 1 ms",
                |d| d["oidc"]["callout_timeout_ms"] = json!(4_294_967_297_u64),
                "config error: oidc.callout_timeout_ms: must be at most 300000",
            ),
            (
                "a validation cache bigger than a worker should hold",
                |d| d["validation_cache_bytes"] = json!(1_u64 << 40),
                "config error: validation_cache_bytes: must be at most 268435456",
            ),
            (
                "a negative validation cache",
                |d| d["validation_cache_bytes"] = json!(-1),
                "config error: validation_cache_bytes: invalid value: integer `-1`",
            ),
            (
                "a leeway that accepts expired tokens for ever",
                |d| d["oidc"]["leeway_seconds"] = json!(u64::MAX),
                "config error: oidc.leeway_seconds: must be at most 600",
            ),
            (
                "a framing header as identity header",
                |d| d["identity_headers"] = json!({"user": "Transfer-Encoding"}),
                "config error: identity_headers.user: \"transfer-encoding\" is not a usable header name",
            ),
            (
                "the routing header as identity header",
                |d| d["identity_headers"] = json!({"email": "x-gateway-target"}),
                "config error: identity_headers.email: \"x-gateway-target\" is not a usable header name",
            ),
            (
                "a provider header as identity header",
                |d| d["identity_headers"] = json!({"tier": "anthropic-beta"}),
                "config error: identity_headers.tier: \"anthropic-beta\" is not a usable header name",
            ),
            (
                "one name for two identity headers",
                |d| d["identity_headers"] = json!({"user": "x-who", "email": "X-Who"}),
                "config error: identity_headers.email: must differ from identity_headers.user",
            ),
            (
                "a target name that is not a header value",
                |d| {
                    d["targets"] =
                        json!({"anthropic\r\nx-a: b": {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}})
                },
                "config error: targets.anthropic\r\nx-a: b: a target's name must be letters, digits",
            ),
            (
                "an issuer with a query",
                |d| d["oidc"]["issuer"] = json!("https://idp.example.com?x=1"),
                "config error: oidc.issuer: must not have a query or fragment",
            ),
            (
                "an issuer port with a sign",
                |d| d["oidc"]["issuer"] = json!("https://idp.example.com:+443/o"),
                "config error: oidc.issuer: must be an http:// or https:// URL",
            ),
            (
                "a JWKS on another host without its upstream",
                |d| d["oidc"]["jwks_uri"] = json!("https://keys.other.example/jwks"),
                "config error: oidc.jwks_upstream: required when oidc.jwks_uri is on another host than the issuer",
            ),
            (
                "a token cache no worker should hold",
                |d| d["oidc"]["token_cache_entries"] = json!(1_000_000_000_u64),
                "config error: oidc.token_cache_entries: must be at most 1048576",
            ),
            (
                "a tracing header as identity header",
                |d| d["identity_headers"] = json!({"user": "X-Request-Id"}),
                "config error: identity_headers.user: \"x-request-id\" is not a usable header name",
            ),
            (
                "a forwarding header as identity header",
                |d| d["identity_headers"] = json!({"email": "x-forwarded-for"}),
                "config error: identity_headers.email: \"x-forwarded-for\" is not a usable header name",
            ),
            (
                "a key pasted with a space after it",
                |d| d["targets"]["anthropic"] = json!({"provider": "anthropic", "api_key": "sk-ant-x "}),
                "config error: targets.anthropic.api_key: the api key has spaces around it",
            ),
            (
                "a Bedrock target name that is not a header value",
                |d| {
                    d["targets"]["bed rock"] = json!({"provider": "bedrock", "region": "us-east-1",
                        "access_key_id": "AKIDEXAMPLE", "secret_access_key": "secret"})
                },
                "config error: targets.bed rock: a target's name must be letters, digits",
            ),
            (
                "an output reserve no request can reach",
                |d| d["budgets"] = json!({"reserve_output_tokens": u64::MAX}),
                "config error: budgets.reserve_output_tokens: must be at most 100000000",
            ),
            (
                "a price that overflows a cost",
                |d| {
                    d["models"][0]["price"] =
                        json!({"input": 1e300, "output": 15, "cache_write": 3.75, "cache_read": 0.3})
                },
                "prices must be at most 1000000 dollars per million tokens",
            ),
            ("no tiers", |d| d["tiers"] = json!([]), "config error: tiers: at least one tier is required"),
            (
                "wrong provider",
                |d| d["targets"]["anthropic"]["provider"] = json!("openai"),
                "config error: targets.anthropic.provider: unknown variant `openai`",
            ),
        ];
        for (name, edit, expected) in cases {
            let mut doc = sample();
            edit(&mut doc);
            let err = load(&doc).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: got {err:?}, want {expected:?}");
        }
    }

    #[test]
    fn a_target_given_twice_is_refused_not_replaced() {
        let doc = sample()
            .to_string()
            .replace(r#""targets":{"#, r#""targets":{"anthropic":{"provider":"anthropic","api_key":"sk-first"},"#);
        let err = Plan::from_json(doc.as_bytes(), &env).unwrap_err().to_string();
        assert!(err.contains("targets") && err.contains("\"anthropic\" is given twice"), "{err}");
    }

    #[test]
    fn dotted_groups_claim_and_explicit_jwks() {
        let mut doc = sample();
        doc["oidc"]["groups_claim"] = json!("realm_access.roles");
        doc["oidc"]["jwks_uri"] = json!("https://keys.example.com/jwks");
        doc["oidc"]["jwks_upstream"] = json!("keys.example.com:443");
        let plan = load(&doc).unwrap();
        assert_eq!(plan.oidc.groups_claim, vec!["realm_access", "roles"]);
        assert_eq!(plan.oidc.jwks_uri.unwrap().path, "/jwks");
        assert_eq!(plan.oidc.jwks_upstream, "keys.example.com:443");
    }
}
