//! Bearer tokens: taking the token from the request, and verifying it in the order of Envoy's
//! `jwt_authn` (parse, algorithm, issuer, time, audience, key, signature), each failure a
//! precise [`AuthError`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::config::{short_digest, OidcPlan};
use crate::jwks::{Algorithm, KeySet};
use crate::reply::{Reply, ToReply};

/// Why a request's credential was refused. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Neither `Authorization: Bearer` nor `x-api-key` was sent.
    MissingToken,
    /// `Authorization` is present but is not `Bearer <token>`.
    NotBearer,
    /// Both headers carry a token and they differ.
    ConflictingTokens,
    /// `Authorization` or `x-api-key` was sent more than once.
    DuplicateCredential,
    /// Longer than `oidc.max_token_bytes`.
    TooLarge,
    /// Not three base64url parts with JSON header and payload.
    Malformed,
    /// No `.` at all: an opaque access token (an IdP issues those when no audience, API or
    /// resource is asked for), which no sign-in of the same setup turns into a JWT.
    Opaque,
    /// An Anthropic API key (`sk-ant-…`), from `ANTHROPIC_API_KEY` set beside or instead of the
    /// sign-in helper.
    ProviderKey,
    /// Five parts: an encrypted token (JWE), which an IdP issues when set to encrypt access tokens.
    Encrypted,
    /// `alg` is `none`, HMAC or otherwise not accepted.
    UnsupportedAlgorithm,
    /// `typ` says the token is not an access token (a logout or security event token, or a
    /// type that is not a JWT).
    WrongType,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// No `exp` claim.
    MissingExpiry,
    /// `exp`, `nbf` or `iat` is not a whole number of seconds in range.
    InvalidTimeClaim,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// `nbf` (or `iat`, with a maximum token age) further ahead than Claude Code's retries wait
    /// ([`CLOCKS_APART_SECONDS`] past the leeway): the IdP's clock or the gateway's is off.
    ClocksApart,
    /// Issued (`iat`) longer ago than `oidc.max_token_age_seconds`.
    TokenTooOld,
    /// No `iat` while `oidc.max_token_age_seconds` is set: the IdP's tokens never carry one.
    MissingIssuedAt,
    /// No `aud` value is accepted.
    WrongAudience,
    /// No `sub` claim.
    MissingSubject,
    /// `sub` or `email` holds a control character: it would go upstream in a header.
    UnsafeIdentity,
    /// The IdP's keys have no key for this token.
    UnknownKey,
    /// The token names no key (`kid`) and the IdP publishes several for its algorithm (or lists
    /// its kid on more than two): which one signed it cannot be told, and no new token changes that.
    AmbiguousKey,
    /// The signature does not verify.
    BadSignature,
    /// Every key the token may be verified with is outside the key policy (an RSA key below 2048
    /// bits, say): the IdP signs with a key this gateway does not take.
    KeyNotAccepted,
}

impl AuthError {
    /// Every variant, for defining one metric series each.
    pub const ALL: [AuthError; 26] = [
        AuthError::MissingToken,
        AuthError::NotBearer,
        AuthError::ConflictingTokens,
        AuthError::DuplicateCredential,
        AuthError::TooLarge,
        AuthError::Malformed,
        AuthError::Opaque,
        AuthError::ProviderKey,
        AuthError::Encrypted,
        AuthError::UnsupportedAlgorithm,
        AuthError::WrongType,
        AuthError::WrongIssuer,
        AuthError::MissingExpiry,
        AuthError::InvalidTimeClaim,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::ClocksApart,
        AuthError::TokenTooOld,
        AuthError::MissingIssuedAt,
        AuthError::WrongAudience,
        AuthError::MissingSubject,
        AuthError::UnsafeIdentity,
        AuthError::UnknownKey,
        AuthError::AmbiguousKey,
        AuthError::BadSignature,
        AuthError::KeyNotAccepted,
    ];

    /// Stable short code, for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::NotBearer => "not_bearer",
            AuthError::ConflictingTokens => "conflicting_tokens",
            AuthError::DuplicateCredential => "duplicate_credential",
            AuthError::TooLarge => "token_too_large",
            AuthError::Malformed => "malformed",
            AuthError::Opaque => "opaque_token",
            AuthError::ProviderKey => "provider_api_key",
            AuthError::Encrypted => "encrypted_token",
            AuthError::UnsupportedAlgorithm => "unsupported_algorithm",
            AuthError::WrongType => "wrong_token_type",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::InvalidTimeClaim => "invalid_time_claim",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::ClocksApart => "clocks_apart",
            AuthError::TokenTooOld => "token_too_old",
            AuthError::MissingIssuedAt => "missing_iat",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingSubject => "missing_sub",
            AuthError::UnsafeIdentity => "unsafe_identity",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::AmbiguousKey => "ambiguous_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::KeyNotAccepted => "key_not_accepted",
        }
    }

    /// What the person is told. Never contains the token.
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "no access token: sign in (the apiKeyHelper must print an access token)",
            AuthError::NotBearer => "the Authorization header must be 'Bearer <token>'",
            AuthError::ConflictingTokens => "Authorization and x-api-key carry different tokens",
            AuthError::DuplicateCredential => "Authorization or x-api-key was sent more than once",
            AuthError::TooLarge => "access token too large",
            AuthError::Malformed => "access token is not a valid JWT",
            AuthError::Opaque => {
                "the access token is opaque, not a JWT: the IdP issues JWT access tokens only when the sign-in \
                 asks for the gateway's audience (API or resource)"
            }
            AuthError::ProviderKey => "an Anthropic API key was sent instead of an access token from the sign-in",
            AuthError::Encrypted => "the access token is encrypted (JWE); this gateway verifies signed tokens",
            AuthError::UnsupportedAlgorithm => "access token signing algorithm not accepted",
            AuthError::WrongType => "the token's type (typ) says it is not an access token",
            AuthError::WrongIssuer => "access token issuer not accepted",
            AuthError::MissingExpiry => "access token has no expiry",
            AuthError::InvalidTimeClaim => "access token has an exp, nbf or iat that is not a whole number of seconds",
            AuthError::Expired => "access token expired",
            AuthError::NotYetValid => "access token not yet valid",
            AuthError::ClocksApart => {
                "the access token is valid only from several minutes from now: the identity provider's clock or \
                 the gateway's is off"
            }
            AuthError::TokenTooOld => "access token issued too long ago for this gateway; sign in again",
            AuthError::MissingIssuedAt => {
                "the access token has no iat, which this gateway needs to limit how old a token may be"
            }
            AuthError::WrongAudience => "access token audience not accepted",
            AuthError::MissingSubject => "access token has no subject",
            AuthError::UnsafeIdentity => "access token's sub or email contains control characters",
            AuthError::UnknownKey => "access token signed by an unknown key",
            AuthError::AmbiguousKey => {
                "the access token names no signing key (kid) while the identity provider publishes several, or \
                 names one the identity provider lists on more than two keys"
            }
            AuthError::BadSignature => "access token signature is invalid",
            AuthError::KeyNotAccepted => {
                "the access token is signed with a key this gateway does not take (RSA keys must have 2048 to \
                 4096 bits and the exponent 65537)"
            }
        }
    }
}

impl AuthError {
    /// Who can fix a refusal that a new sign-in cannot, and how: the end of a 400's message.
    fn remedy(&self) -> &'static str {
        match self {
            AuthError::TooLarge => {
                "the token is larger than the gateway's oidc.max_token_bytes allows, most often for the \
                 groups in it; ask your administrator to raise that limit or to have the identity provider \
                 put only the groups the gateway needs in the token"
            }
            AuthError::NotBearer => {
                "the Authorization header did not come from Claude Code's apiKeyHelper; check the \
                 client's settings and any proxy on the way"
            }
            AuthError::ConflictingTokens => {
                "a second credential is set beside the apiKeyHelper (ANTHROPIC_API_KEY or \
                 ANTHROPIC_AUTH_TOKEN, in the environment or in Claude Code's settings); remove it"
            }
            AuthError::Opaque => "ask your administrator to have the sign-in ask for the gateway's audience",
            AuthError::ProviderKey => {
                "the gateway holds the provider's key itself; unset ANTHROPIC_API_KEY (in the environment or in \
                 Claude Code's settings) so that Claude Code sends the apiKeyHelper's token"
            }
            AuthError::ClocksApart => {
                "tell your administrator to check the clocks of the identity provider and the gateway"
            }
            AuthError::UnsupportedAlgorithm
            | AuthError::Encrypted
            | AuthError::AmbiguousKey
            | AuthError::KeyNotAccepted
            | AuthError::WrongType
            | AuthError::MissingExpiry
            | AuthError::InvalidTimeClaim
            | AuthError::MissingIssuedAt
            | AuthError::MissingSubject
            | AuthError::UnsafeIdentity => {
                "the identity provider issues access tokens this gateway does not take; ask your administrator"
            }
            // The issuer, the audience, and (never refused with a 400) what a new token fixes.
            _ => {
                "the sign-in helper or the gateway is set up for another identity provider or audience; \
                 ask your administrator"
            }
        }
    }

    /// Whether this is a 401. Claude Code answers every 401 by re-running its helper and
    /// retrying, for about four minutes, whatever the headers say; so 401 is kept for what a new
    /// token can fix (and for repeated credential headers, an attack rather than a setup). The
    /// rest (a token for another issuer or audience, without `sub`, with an algorithm or time
    /// claims the gateway does not take) are 400s, which Claude Code shows at once.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            AuthError::MissingToken
                | AuthError::DuplicateCredential
                | AuthError::Malformed
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::TokenTooOld
                | AuthError::UnknownKey
                | AuthError::BadSignature
        )
    }
}

impl AuthError {
    /// Whether the same token refused again and again is a sign-in helper handing out one it
    /// keeps (see [`crate::refused_tokens`]): what a new token fixes, once the token is there.
    pub fn fixed_by_a_new_token(&self) -> bool {
        matches!(
            self,
            AuthError::Malformed
                | AuthError::Expired
                | AuthError::TokenTooOld
                | AuthError::UnknownKey
                | AuthError::BadSignature
        )
    }

    /// The answer to a token refused again and again: a 400 that Claude Code shows at once,
    /// where each 401 would make it re-run its sign-in helper and retry for minutes.
    pub fn to_repeated_reply(&self) -> Reply {
        let message = format!(
            "gateway: {}. The sign-in helper keeps handing out this same token: sign in again \
             (claude-sso-signin login), or tell your administrator if that does not help",
            self.message()
        );
        Reply::error(400, self.code(), "authentication_error", &message).with_header("x-should-retry", "false")
    }
}

impl ToReply for AuthError {
    fn to_reply(&self) -> Reply {
        let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", self.code());
        if self.retryable() {
            let message = format!("gateway: {}", self.message());
            return Reply::error(401, self.code(), "authentication_error", &message)
                .with_header("www-authenticate", challenge);
        }
        let message = format!("gateway: {}. Signing in again will not change this: {}", self.message(), self.remedy());
        Reply::error(400, self.code(), "authentication_error", &message)
            .with_header("www-authenticate", challenge)
            .with_header("x-should-retry", "false")
    }
}

/// Picks the token from `Authorization: Bearer` or `x-api-key` (Claude Code sends both).
pub fn take_token<'a>(authorization: Option<&'a str>, api_key: Option<&'a str>) -> Result<&'a str, AuthError> {
    let bearer = match authorization.map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        // Claude Code sends `Bearer` alone when its apiKeyHelper printed nothing (not signed in,
        // refresh expired): no token, a 401 that re-runs the helper, not a setup error.
        Some(value) if value.eq_ignore_ascii_case("bearer") => None,
        Some(value) => {
            let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::NotBearer);
            }
            Some(token.trim())
        }
    };
    let api_key = api_key.map(str::trim).filter(|v| !v.is_empty());
    // Envoy joins a repeated header's values with `,`, which no token has.
    // (memchr: 16 bytes at a time over a token of hundreds; `contains` goes a word at a time.)
    if bearer.into_iter().chain(api_key).any(|t| memchr::memchr(b',', t.as_bytes()).is_some()) {
        return Err(AuthError::DuplicateCredential);
    }
    match (bearer, api_key) {
        // Claude Code sends its token of hundreds of bytes twice.
        (Some(a), Some(b)) if !crate::scan::same_bytes(a.as_bytes(), b.as_bytes()) => Err(AuthError::ConflictingTokens),
        (Some(t), _) | (None, Some(t)) => Ok(t),
        (None, None) => Err(AuthError::MissingToken),
    }
}

/// Who a verified token says the person is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub subject: String,
    /// The key of the person's budget counters ([`short_digest`] of `sub`), computed once with
    /// the verification and cached with it.
    pub person_key: String,
    /// `email`, when present and not marked unverified (`email_verified: false`).
    pub email: Option<String>,
    /// The groups claim, as a list.
    pub groups: Vec<String>,
    /// The IdP left the groups out for their number and points elsewhere for them (Entra ID's
    /// "group overage": `_claim_names` names the claim, past 200 groups in a JWT).
    pub groups_overage: bool,
    /// When the token stops being accepted, seconds since the epoch (before the leeway): its
    /// `exp`, or `iat` + `oidc.max_token_age_seconds` when that comes first, so a token a worker
    /// remembers is refused at the same moment as one it sees for the first time.
    pub expires_at: u64,
    /// `kid` of the key that verified it, when the token named one.
    pub kid: Option<String>,
    /// [`crate::jwks::Jwk::fingerprint`] of the key that verified it.
    pub key: u64,
}

/// A token split and decoded, before its signature is checked.
#[derive(Debug)]
pub struct ParsedToken {
    alg: Algorithm,
    kid: Option<String>,
    /// [`Identity::expires_at`].
    accepted_until: u64,
    claims: serde_json::Map<String, Value>,
}

/// How far past the leeway a token may start before no retry of Claude Code's (about four
/// minutes of them) can live to see it valid.
pub const CLOCKS_APART_SECONDS: u64 = 300;

/// A token valid from `from`: a 401 that Claude Code's retries ride out, or, further ahead than
/// they wait, the clocks' problem shown at once.
fn not_yet_valid(from: u64, now: u64, oidc: &OidcPlan) -> AuthError {
    if from > now.saturating_add(oidc.leeway_seconds).saturating_add(CLOCKS_APART_SECONDS) {
        AuthError::ClocksApart
    } else {
        AuthError::NotYetValid
    }
}

/// Decodes the header and payload and checks the algorithm and the claims that need no key.
pub fn check_claims(token: &str, oidc: &OidcPlan, now: u64) -> Result<ParsedToken, AuthError> {
    if token.len() > oidc.max_token_bytes {
        return Err(AuthError::TooLarge);
    }
    if !token.contains('.') {
        // Only the prefix is looked at: the key itself is never shown or logged.
        if token.starts_with("sk-ant-") {
            return Err(AuthError::ProviderKey);
        }
        return Err(AuthError::Opaque);
    }
    if token.bytes().filter(|&b| b == b'.').count() == 4 {
        return Err(AuthError::Encrypted);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    let header = decode_object(h)?;
    // A critical extension we do not implement must fail verification, and an empty list is one
    // a producer must not send (RFC 7515 4.1.11): we implement none, so any `crit` is refused.
    if header.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    // RFC 8725 3.11: a `typ` that is not a JWT's says the token is meant for something else.
    // Known without a key, and no new sign-in of the same setup changes it: not a bad signature.
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.as_str()),
        Some(_) => return Err(AuthError::WrongType),
    };
    if !crate::jwks::typ_accepted(typ) {
        return Err(AuthError::WrongType);
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or(AuthError::Malformed)?;
    let alg = Algorithm::from_name(alg).ok_or(AuthError::UnsupportedAlgorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let claims = decode_object(p)?;

    if claims.get("iss").and_then(Value::as_str) != Some(oidc.issuer.as_str()) {
        return Err(AuthError::WrongIssuer);
    }
    let exp = time_claim(&claims, "exp")?.ok_or(AuthError::MissingExpiry)?;
    let nbf = time_claim(&claims, "nbf")?;
    let iat = time_claim(&claims, "iat")?;
    // RFC 7519 4.1.4: the time must be before `exp` (here, with the leeway added).
    if now >= exp.saturating_add(oidc.leeway_seconds) {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = nbf.filter(|nbf| now.saturating_add(oidc.leeway_seconds) < *nbf) {
        return Err(not_yet_valid(nbf, now, oidc));
    }
    let mut accepted_until = exp;
    if let Some(max_age) = oidc.max_token_age_seconds {
        let issued = iat.ok_or(AuthError::MissingIssuedAt)?;
        if now.saturating_sub(issued) >= max_age.saturating_add(oidc.leeway_seconds) {
            return Err(AuthError::TokenTooOld);
        }
        // An `iat` ahead of the clock would stretch the token's life past the limit.
        if issued > now.saturating_add(oidc.leeway_seconds) {
            return Err(not_yet_valid(issued, now, oidc));
        }
        accepted_until = accepted_until.min(issued.saturating_add(max_age));
    }
    let audience_ok = match claims.get(oidc.audience_claim.as_str()) {
        Some(Value::String(a)) => oidc.audiences.contains(a),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|a| oidc.audiences.iter().any(|x| x == a))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(AuthError::WrongAudience);
    }
    if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(AuthError::MissingSubject);
    }
    // Both go upstream as header values (and into log lines): a CR, LF or NUL there would let a
    // token holder write headers of their own.
    let unsafe_text =
        |name: &str| claims.get(name).and_then(Value::as_str).is_some_and(|v| v.chars().any(char::is_control));
    if unsafe_text("sub") || unsafe_text("email") {
        return Err(AuthError::UnsafeIdentity);
    }
    Ok(ParsedToken { alg, kid, accepted_until, claims })
}

impl ParsedToken {
    /// The `kid` the token names.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm the token's header names.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Checks the signature against `keys` and returns the identity.
    pub fn verify(self, token: &str, keys: &KeySet, oidc: &OidcPlan, now: u64) -> Result<Identity, AuthError> {
        // No token makes the gateway try every key. With a `kid`, at most two keys are tried:
        // IdPs do list one key twice under its kid (once with `alg`, once without). Without a
        // `kid`, only a JWKS with exactly one key for the algorithm is accepted.
        let key = {
            let most = if self.kid.is_some() { 2 } else { 1 };
            let candidates: Vec<_> = keys.candidates(self.kid.as_deref(), self.alg).collect();
            if candidates.is_empty() {
                return Err(AuthError::UnknownKey);
            }
            // Keys outside the key policy verify nothing, so they make no usable key ambiguous
            // either. Only such keys: the IdP's, and no new sign-in changes that (a 401 would have
            // Claude Code sign in again and again); the caller refetches once in case the IdP has
            // just replaced it.
            let usable: Vec<_> = candidates.into_iter().filter(|key| key.can_verify()).collect();
            if usable.is_empty() {
                return Err(AuthError::KeyNotAccepted);
            }
            if usable.len() > most {
                return Err(AuthError::AmbiguousKey);
            }
            let Some(verified_by) = usable.iter().find(|key| key.verify(token, self.alg, now)) else {
                return Err(AuthError::BadSignature);
            };
            verified_by.fingerprint
        };
        let subject = self.claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(Identity {
            person_key: short_digest(&subject),
            subject,
            // An address the IdP says it has not verified may be anyone's (a person can type
            // it in some IdPs): it goes neither upstream nor into the usage record. Tokens
            // without `email_verified` (most access tokens) keep theirs.
            email: match self.claims.get("email_verified") {
                // Some IdPs (older Cognito pools) write it as a string.
                Some(Value::Bool(false)) => None,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => None,
                _ => self.claims.get("email").and_then(Value::as_str).map(str::to_owned),
            },
            groups: groups_at(&self.claims, &oidc.groups_claim),
            groups_overage: oidc.groups_claim.first().is_some_and(|claim| {
                self.claims
                    .get("_claim_names")
                    .and_then(Value::as_object)
                    .is_some_and(|names| names.contains_key(claim))
            }),
            expires_at: self.accepted_until,
            kid: self.kid,
            key,
        })
    }
}

/// Latest time claim accepted: 9999-12-31T23:59:59Z. Anything later is an error, not "never".
const MAX_TIME_CLAIM: u64 = 253_402_300_799;

/// A JSON object from one base64url part, refusing duplicate member names.
fn decode_object(part: &str) -> Result<serde_json::Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    match crate::strict_json::from_slice_unique(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

/// A NumericDate claim: absent, or a JSON integer of seconds in range. A float (`1e308`), a
/// string or a negative number is an error rather than being rounded or ignored.
fn time_claim(claims: &serde_json::Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().filter(|t| *t <= MAX_TIME_CLAIM).map(Some).ok_or(AuthError::InvalidTimeClaim)
        }
        Some(_) => Err(AuthError::InvalidTimeClaim),
    }
}

/// The groups at a dotted claim path; a string counts as one group, anything else as none.
/// A claim name may itself hold dots (Auth0's `https://example.com/groups`, Keycloak's
/// `resource_access.<client.id>.roles`): at each level the longest name present wins.
pub fn groups_at(claims: &serde_json::Map<String, Value>, path: &[String]) -> Vec<String> {
    match claim_at(claims, path) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The value at `path` (segments of a dotted name) under `map`, the longest name first.
fn claim_at<'a>(map: &'a serde_json::Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    (1..=path.len()).rev().find_map(|take| {
        let value = match take {
            1 => map.get(path.first()?)?,
            _ => map.get(&path.get(..take)?.join("."))?,
        };
        match path.get(take..) {
            Some([]) | None => Some(value),
            Some(rest) => claim_at(value.as_object()?, rest),
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Plan;
    use crate::jwks::tests::TestKeys;
    use jwt_simple::prelude::*;
    use serde_json::json;

    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn plan() -> Plan {
        let doc = crate::config::tests::sample();
        Plan::from_json(doc.to_string().as_bytes(), &|_| Some("sk-test".to_owned())).unwrap()
    }

    pub(crate) fn sign(keys: &TestKeys, claims: Value) -> String {
        keys.rsa.sign(bare(claims)).unwrap()
    }

    /// Claims exactly as given: jwt-simple's own iat/exp/nbf are dropped.
    pub(crate) fn bare(claims: Value) -> JWTClaims<Value> {
        let mut c = Claims::with_custom_claims(claims, Duration::from_secs(0));
        (c.issued_at, c.expires_at, c.invalid_before) = (None, None, None);
        c
    }

    pub(crate) fn good_claims() -> Value {
        json!({"iss": "https://idp.example.com/oauth2/default", "aud": "claude-sso-gateway", "sub": "alice",
               "email": "alice@example.com", "groups": ["claude-standard-users"], "exp": NOW + 600})
    }

    fn raw(header: Value, claims: Value) -> String {
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(header), enc(claims))
    }

    fn verify(token: &str, keys: &TestKeys) -> Result<Identity, AuthError> {
        let plan = plan();
        let set = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        check_claims(token, &plan.oidc, NOW)?.verify(token, &set, &plan.oidc, NOW)
    }

    /// A token signed by `keys.ed` under the header given.
    fn signed_by_ed(keys: &TestKeys, header: Value, claims: Value) -> String {
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", enc(header), enc(claims));
        let signature = keys.ed.key_pair().as_ref().sk.sign(input.as_bytes(), None);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// A JWK without a kid may verify a token that names one (RFC 7517 4.5; Envoy's jwt_authn
    /// tries it too), after the keys that name the token's kid; it also means the kid is not
    /// unknown (no refetch for it).
    #[test]
    fn a_key_without_kid_verifies_a_token_naming_one() {
        let keys = TestKeys::new();
        let token = sign(&keys, good_claims());
        let mut doc: Value = serde_json::from_str(&keys.jwks()).unwrap();
        for key in doc["keys"].as_array_mut().unwrap() {
            key.as_object_mut().unwrap().remove("kid");
        }
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert!(set.has_kid("rsa-1", Algorithm::RS256) && set.has_kid("any", Algorithm::RS256));
        let plan = plan();
        let got = check_claims(&token, &plan.oidc, NOW).unwrap().verify(&token, &set, &plan.oidc, NOW);
        assert_eq!(got.map(|i| i.subject), Ok("alice".to_owned()));
        // Still signed by the right key only.
        let forged = sign(&TestKeys::new(), good_claims());
        let got = check_claims(&forged, &plan.oidc, NOW).unwrap().verify(&forged, &set, &plan.oidc, NOW);
        assert_eq!(got.unwrap_err(), AuthError::BadSignature);
    }

    /// Keys naming the token's kid come alone: a key without kid is no third candidate beside
    /// a kid listed twice (as IdPs do, with and without `alg`); and a kid-less key of another
    /// algorithm does not make an unknown kid known (the refetch a rotation needs stays).
    #[test]
    fn a_key_without_kid_is_tried_only_when_none_names_the_tokens() {
        let keys = TestKeys::new();
        let token = sign(&keys, good_claims()); // kid rsa-1
        let mut doc: Value = serde_json::from_str(&keys.jwks()).unwrap();
        let list = doc["keys"].as_array_mut().unwrap();
        let rsa = list.iter().find(|k| k["kid"] == "rsa-1").unwrap().clone();
        let mut pinned = rsa.clone();
        pinned["alg"] = json!("RS256");
        let mut unnamed = serde_json::from_str::<Value>(&TestKeys::new().jwks()).unwrap()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kty"] == "RSA")
            .unwrap()
            .clone();
        unnamed.as_object_mut().unwrap().remove("kid");
        list.push(pinned);
        list.push(unnamed);
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.candidates(Some("rsa-1"), Algorithm::RS256).count(), 2, "the kid's two listings only");
        assert_eq!(verify_with(&token, &set).map(|i| i.subject), Ok("alice".to_owned()));
        // A kid no key names: the kid-less RSA key is the candidate; for ES256 there is none.
        assert_eq!(set.candidates(Some("rsa-9"), Algorithm::RS256).count(), 1);
        assert!(set.has_kid("rsa-9", Algorithm::RS256));
        let mut only_ec: Value = serde_json::from_str(&keys.jwks()).unwrap();
        for key in only_ec["keys"].as_array_mut().unwrap() {
            if key["kty"] == "EC" {
                key.as_object_mut().unwrap().remove("kid");
            }
        }
        let set = KeySet::parse(only_ec.to_string().as_bytes()).unwrap();
        assert!(!set.has_kid("rsa-9", Algorithm::RS256), "an EC key without kid says nothing of RS256 tokens");
    }

    fn verify_with(token: &str, set: &KeySet) -> Result<Identity, AuthError> {
        let plan = plan();
        check_claims(token, &plan.oidc, NOW)?.verify(token, set, &plan.oidc, NOW)
    }

    /// A well-signed token whose `typ` says it is not an access token is refused as such, with
    /// a 400 (no new sign-in of the same setup changes it), before any key is looked for: not
    /// as a bad signature, a 401 Claude Code would retry for minutes.
    #[test]
    fn a_token_of_another_type_is_refused_before_any_key_is_looked_for() {
        let keys = TestKeys::new();
        for typ in [json!("JOSE"), json!("logout+jwt"), json!("application/secevent+jwt"), json!(1), json!(null)] {
            let token = signed_by_ed(&keys, json!({"alg": "EdDSA", "kid": "ed-1", "typ": typ}), good_claims());
            assert_eq!(check_claims(&token, &plan().oidc, NOW).err(), Some(AuthError::WrongType), "{typ}");
            assert_eq!(verify(&token, &keys).unwrap_err(), AuthError::WrongType, "{typ}");
        }
        assert_eq!(AuthError::WrongType.to_reply().status, 400);
        for typ in ["JWT", "at+jwt", "application/at+JWT"] {
            let token = signed_by_ed(&keys, json!({"alg": "EdDSA", "kid": "ed-1", "typ": typ}), good_claims());
            assert!(verify(&token, &keys).is_ok(), "{typ}");
        }
    }

    /// RFC 9864 names Ed25519 signatures `Ed25519` (and deprecates `EdDSA`, which RFC 8037 let
    /// mean Ed448 as well): an IdP that moved to the new name keeps working, and a key pinned
    /// to either name verifies a token signed under the other, since both mean Ed25519 here.
    #[test]
    fn ed25519_is_the_fully_specified_name_of_eddsa() {
        let keys = TestKeys::new();
        for alg in ["EdDSA", "Ed25519"] {
            let token = signed_by_ed(&keys, json!({"alg": alg, "kid": "ed-1"}), good_claims());
            assert_eq!(verify(&token, &keys).map(|i| i.subject), Ok("alice".to_owned()), "{alg}");
        }
        let bad = signed_by_ed(&keys, json!({"alg": "Ed448", "kid": "ed-1"}), good_claims());
        assert_eq!(verify(&bad, &keys).unwrap_err(), AuthError::UnsupportedAlgorithm);
        let pinned = keys.jwks().replace(r#""crv":"Ed25519","#, r#""alg":"Ed25519","crv":"Ed25519","#);
        assert!(pinned.contains(r#""alg":"Ed25519""#));
        let set = KeySet::parse(pinned.as_bytes()).unwrap();
        let plan = plan();
        let token = signed_by_ed(&keys, json!({"alg": "EdDSA", "kid": "ed-1"}), good_claims());
        let parsed = check_claims(&token, &plan.oidc, NOW).unwrap();
        assert!(parsed.verify(&token, &set, &plan.oidc, NOW).is_ok(), "a key pinned to Ed25519 verifies EdDSA");
    }

    /// Amazon Cognito's access tokens carry no `aud`, only `client_id` (its ID tokens have `aud`
    /// and no `client_id`): `oidc.audience_claim` names the claim to check.
    #[test]
    fn the_audience_claim_is_configurable() {
        let keys = TestKeys::new();
        let set = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        let mut access = good_claims();
        let aud = access.as_object_mut().unwrap().remove("aud").unwrap();
        access["client_id"] = aud.clone();
        let mut id_token = good_claims();
        id_token["aud"] = aud;
        let (access, id_token) = (sign(&keys, access), sign(&keys, id_token));
        let check = |plan: &Plan, token: &str| {
            check_claims(token, &plan.oidc, NOW).and_then(|p| p.verify(token, &set, &plan.oidc, NOW)).map(|_| ())
        };
        let default = plan();
        assert_eq!(check(&default, &access), Err(AuthError::WrongAudience));
        assert_eq!(check(&default, &id_token), Ok(()));
        let mut doc = crate::config::tests::sample();
        doc["oidc"]["audience_claim"] = json!("client_id");
        let cognito = Plan::from_json(doc.to_string().as_bytes(), &|_| Some("sk".to_owned())).unwrap();
        assert_eq!(check(&cognito, &access), Ok(()));
        assert_eq!(check(&cognito, &id_token), Err(AuthError::WrongAudience));
        doc["oidc"]["audience_claim"] = json!(" aud");
        let refused = Plan::from_json(doc.to_string().as_bytes(), &|_| Some("sk".to_owned())).unwrap_err();
        assert!(refused.to_string().contains("oidc.audience_claim"), "{refused}");
    }

    #[test]
    fn every_error_has_its_own_code() {
        let codes: std::collections::HashSet<_> = AuthError::ALL.iter().map(AuthError::code).collect();
        assert_eq!(codes.len(), AuthError::ALL.len());
    }

    /// A 400 says who can fix it: a token too large names the limit, a second credential names
    /// the variables, an issuer or audience mismatch names the setup.
    #[test]
    fn a_refusal_no_sign_in_fixes_says_who_fixes_it() {
        let text = |e: &AuthError| String::from_utf8_lossy(&e.to_reply().body).into_owned();
        assert!(text(&AuthError::TooLarge).contains("oidc.max_token_bytes"), "{}", text(&AuthError::TooLarge));
        assert!(text(&AuthError::ConflictingTokens).contains("ANTHROPIC_API_KEY"));
        for setup in [AuthError::WrongIssuer, AuthError::WrongAudience] {
            assert!(text(&setup).contains("another identity provider or audience"), "{}", text(&setup));
        }
        for e in &AuthError::ALL {
            let reply = e.to_reply();
            if reply.status == 400 {
                assert!(text(e).contains(". Signing in again will not change this: "), "{}", text(e));
                let setup = matches!(e, AuthError::WrongIssuer | AuthError::WrongAudience);
                assert_eq!(text(e).contains("another identity provider or audience"), setup, "{}", text(e));
            } else {
                assert!(!text(e).contains("Signing in again"), "{}", text(e));
            }
        }
    }

    #[test]
    fn take_token_from_either_header() {
        type Case = (&'static str, Option<&'static str>, Option<&'static str>, Result<&'static str, AuthError>);
        let cases: &[Case] = &[
            ("bearer only", Some("Bearer abc"), None, Ok("abc")),
            ("x-api-key only", None, Some("abc"), Ok("abc")),
            ("both equal (Claude Code)", Some("Bearer abc"), Some("abc"), Ok("abc")),
            ("lowercase scheme", Some("bearer abc"), None, Ok("abc")),
            ("both differ", Some("Bearer abc"), Some("xyz"), Err(AuthError::ConflictingTokens)),
            ("basic auth", Some("Basic dXNlcg=="), None, Err(AuthError::NotBearer)),
            ("none", None, None, Err(AuthError::MissingToken)),
            ("empty values", Some(""), Some(" "), Err(AuthError::MissingToken)),
            // Claude Code with an apiKeyHelper that printed nothing: sign in, not a setup error.
            ("failing helper", Some("Bearer "), Some(""), Err(AuthError::MissingToken)),
            ("scheme alone, key set", Some("bearer"), Some("abc"), Ok("abc")),
            ("another scheme alone", Some("Basic"), None, Err(AuthError::NotBearer)),
            // A repeated header, as Envoy hands it on.
            ("bearer twice", Some("Bearer abc,Bearer abc"), Some("abc"), Err(AuthError::DuplicateCredential)),
            ("bearer twice, alone", Some("Bearer abc, Bearer abc"), None, Err(AuthError::DuplicateCredential)),
            ("x-api-key twice", Some("Bearer abc"), Some("abc,abc"), Err(AuthError::DuplicateCredential)),
        ];
        for (name, auth, key, want) in cases {
            assert_eq!(take_token(*auth, *key).as_deref().map_err(Clone::clone), want.clone(), "{name}");
        }
    }

    #[test]
    fn a_good_token_yields_the_identity() {
        let keys = TestKeys::new();
        let id = verify(&sign(&keys, good_claims()), &keys).unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, vec!["claude-standard-users"]);
        assert_eq!(id.kid.as_deref(), Some("rsa-1"));
        assert!(!id.groups_overage);
        // Entra ID past 200 groups: no `groups`, and `_claim_names` points elsewhere for them.
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("groups");
        claims["_claim_names"] = json!({"groups": "src1"});
        claims["_claim_sources"] =
            json!({"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}});
        let id = verify(&sign(&keys, claims), &keys).unwrap();
        assert!(id.groups.is_empty() && id.groups_overage);
        // An address the IdP has not verified names nobody.
        for (verified, kept) in
            [(json!(true), true), (json!(false), false), (json!("false"), false), (json!("true"), true)]
        {
            let mut claims = good_claims();
            claims["email_verified"] = verified.clone();
            let id = verify(&sign(&keys, claims), &keys).unwrap();
            assert_eq!(id.email.is_some(), kept, "email_verified {verified}");
        }
    }

    /// With `max_token_age_seconds`: a token without `iat` is a setup error (400, no sign-in
    /// loop), one issued ahead of the clock cannot outlive the limit.
    #[test]
    fn max_token_age_needs_an_iat_that_is_not_ahead() {
        let keys = TestKeys::new();
        let mut oidc = plan().oidc;
        oidc.max_token_age_seconds = Some(300);
        let check = |claims: Value| check_claims(&sign(&keys, claims), &oidc, NOW).map(|_| ());
        let with_iat = |iat: u64| {
            let mut c = good_claims();
            c["iat"] = json!(iat);
            c
        };
        assert_eq!(check(good_claims()), Err(AuthError::MissingIssuedAt));
        assert!(!AuthError::MissingIssuedAt.retryable());
        assert_eq!(AuthError::MissingIssuedAt.to_reply().status, 400);
        assert_eq!(check(with_iat(NOW - 10)), Ok(()));
        assert_eq!(check(with_iat(NOW - 400)), Err(AuthError::TokenTooOld));
        assert_eq!(check(with_iat(NOW + 30)), Ok(()), "within the leeway");
        assert_eq!(check(with_iat(NOW + 30 * 86_400)), Err(AuthError::ClocksApart));
        assert_eq!(check(with_iat(NOW + 120)), Err(AuthError::NotYetValid), "a retry lives to see it");
        let reply = AuthError::ClocksApart.to_reply();
        assert_eq!(reply.status, 400, "shown at once: no retry lives to see it valid");
        assert!(String::from_utf8_lossy(&reply.body).contains("clocks"));
    }

    /// An opaque access token (no `.`) is told apart from a broken JWT: no sign-in of the same
    /// setup yields a JWT, so a 400 naming the cause, not a 401 sign-in loop.
    #[test]
    fn an_opaque_token_is_a_setup_error() {
        let oidc = plan().oidc;
        assert_eq!(check_claims("2YotnFZFEjr1zCsicMWpAA", &oidc, NOW).err(), Some(AuthError::Opaque));
        assert_eq!(check_claims("a.b", &oidc, NOW).err(), Some(AuthError::Malformed));
        let reply = AuthError::Opaque.to_reply();
        assert_eq!(reply.status, 400);
        assert!(String::from_utf8_lossy(&reply.body).contains("audience"));
    }

    /// What no new sign-in changes is a 400 shown at once, saying what to do: an Anthropic API key
    /// sent in place of the helper's token (the key never echoed), and an encrypted token.
    #[test]
    fn a_provider_key_or_an_encrypted_token_is_a_setup_error_that_says_so() {
        let oidc = plan().oidc;
        let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
        assert_eq!(check_claims(key, &oidc, NOW).err(), Some(AuthError::ProviderKey));
        let jwe = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d";
        assert_eq!(check_claims(jwe, &oidc, NOW).err(), Some(AuthError::Encrypted));
        assert_eq!(check_claims("a.b.c.d", &oidc, NOW).err(), Some(AuthError::Malformed));
        for (error, says) in [(AuthError::ProviderKey, "unset ANTHROPIC_API_KEY"), (AuthError::Encrypted, "JWE")] {
            let reply = error.to_reply();
            let body = String::from_utf8_lossy(&reply.body).into_owned();
            assert_eq!(reply.status, 400, "{error:?}");
            assert!(reply.headers.iter().any(|(n, v)| n == "x-should-retry" && v == "false"), "{error:?}");
            assert!(body.contains(says) && !body.contains("abcdefghij"), "{error:?}: {body}");
        }
    }

    #[test]
    fn each_claim_failure_is_precise() {
        let keys = TestKeys::new();
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, AuthError)] = &[
            ("wrong issuer", |c| c["iss"] = json!("https://evil.example.com"), AuthError::WrongIssuer),
            ("expired", |c| c["exp"] = json!(NOW - 61), AuthError::Expired),
            ("expired at the leeway's end", |c| c["exp"] = json!(NOW - 60), AuthError::Expired),
            ("expired within leeway", |c| c["exp"] = json!(NOW - 59), AuthError::BadSignature),
            (
                "no exp",
                |c| {
                    c.as_object_mut().unwrap().remove("exp");
                },
                AuthError::MissingExpiry,
            ),
            ("nbf ahead", |c| c["nbf"] = json!(NOW + 61), AuthError::NotYetValid),
            ("nbf ahead, past the retries", |c| c["nbf"] = json!(NOW + 60 + 301), AuthError::ClocksApart),
            ("nbf ahead, within the retries", |c| c["nbf"] = json!(NOW + 60 + 300), AuthError::NotYetValid),
            ("wrong aud", |c| c["aud"] = json!("other"), AuthError::WrongAudience),
            ("float exp is not 'never expires'", |c| c["exp"] = json!(1e308), AuthError::InvalidTimeClaim),
            ("fractional exp", |c| c["exp"] = json!(NOW as f64 + 0.5), AuthError::InvalidTimeClaim),
            ("exp past year 9999", |c| c["exp"] = json!(u64::MAX), AuthError::InvalidTimeClaim),
            ("negative exp", |c| c["exp"] = json!(-1), AuthError::InvalidTimeClaim),
            ("string nbf", |c| c["nbf"] = json!("0"), AuthError::InvalidTimeClaim),
            ("float iat", |c| c["iat"] = json!(1.5), AuthError::InvalidTimeClaim),
            ("null exp", |c| c["exp"] = Value::Null, AuthError::InvalidTimeClaim),
            ("aud array without ours", |c| c["aud"] = json!(["a", "b"]), AuthError::WrongAudience),
            (
                "no sub",
                |c| {
                    c.as_object_mut().unwrap().remove("sub");
                },
                AuthError::MissingSubject,
            ),
            ("sub with a line break", |c| c["sub"] = json!("alice\r\nx-api-key: mine"), AuthError::UnsafeIdentity),
            ("email with a NUL", |c| c["email"] = json!("alice@example.com\u{0}"), AuthError::UnsafeIdentity),
            ("sub with DEL", |c| c["sub"] = json!("alice\u{7f}"), AuthError::UnsafeIdentity),
        ];
        for (name, edit, want) in cases {
            let mut claims = good_claims();
            edit(&mut claims);
            // A re-signed token passes the signature, so "within leeway" uses a forged signature to
            // show the claim check let it through to the signature step.
            let token = if *name == "expired within leeway" {
                raw(json!({"alg": "RS256", "kid": "rsa-1"}), claims)
            } else {
                sign(&keys, claims)
            };
            assert_eq!(verify(&token, &keys).unwrap_err(), *want, "{name}");
        }
    }

    #[test]
    fn audience_array_is_accepted() {
        let keys = TestKeys::new();
        let mut claims = good_claims();
        claims["aud"] = json!(["other", "claude-sso-gateway"]);
        assert!(verify(&sign(&keys, claims), &keys).is_ok());
    }

    #[test]
    fn forged_and_malformed_tokens() {
        let keys = TestKeys::new();
        let cases = [
            ("alg none", raw(json!({"alg": "none"}), good_claims()), AuthError::UnsupportedAlgorithm),
            ("HS256", raw(json!({"alg": "HS256", "kid": "rsa-1"}), good_claims()), AuthError::UnsupportedAlgorithm),
            ("unknown kid", raw(json!({"alg": "RS256", "kid": "nope"}), good_claims()), AuthError::UnknownKey),
            (
                "alg not allowed for kid",
                raw(json!({"alg": "ES256", "kid": "rsa-1"}), good_claims()),
                AuthError::UnknownKey,
            ),
            ("bad signature", raw(json!({"alg": "RS256", "kid": "rsa-1"}), good_claims()), AuthError::BadSignature),
            ("two parts", "a.b".to_owned(), AuthError::Malformed),
            ("not base64", "!!.!!.!!".to_owned(), AuthError::Malformed),
            ("crit header", raw(json!({"alg": "RS256", "crit": ["x"]}), good_claims()), AuthError::Malformed),
            // RFC 7515 4.1.11: producers must not send an empty list; the token is not well formed.
            (
                "crit empty",
                raw(json!({"alg": "RS256", "kid": "rsa-1", "crit": []}), good_claims()),
                AuthError::Malformed,
            ),
            (
                "crit null",
                raw(json!({"alg": "RS256", "kid": "rsa-1", "crit": null}), good_claims()),
                AuthError::Malformed,
            ),
            ("too large", "a".repeat(17000), AuthError::TooLarge),
            ("kid not a string", raw(json!({"alg": "RS256", "kid": 1}), good_claims()), AuthError::Malformed),
            ("alg missing", raw(json!({"kid": "rsa-1"}), good_claims()), AuthError::Malformed),
            ("payload not an object", raw(json!({"alg": "RS256", "kid": "rsa-1"}), json!([1])), AuthError::Malformed),
        ];
        for (name, token, want) in cases {
            assert_eq!(verify(&token, &keys).unwrap_err(), want, "{name}");
        }
    }

    fn encode_raw(header: &str, claims: &str) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn duplicate_member_names_are_refused() {
        let keys = TestKeys::new();
        let claims = good_claims().to_string();
        let cases = [
            ("header alg twice", encode_raw(r#"{"alg":"RS256","alg":"none","kid":"rsa-1"}"#, &claims)),
            ("header kid twice, escaped", encode_raw(r#"{"alg":"RS256","kid":"rsa-1","k\u0069d":"x"}"#, &claims)),
            (
                "payload sub twice",
                encode_raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, &claims.replacen('{', r#"{"sub":"root","#, 1)),
            ),
        ];
        for (name, token) in cases {
            assert_eq!(verify(&token, &keys).unwrap_err(), AuthError::Malformed, "{name}");
        }
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_key_for_its_alg() {
        use jwt_simple::prelude::*;
        let keys = TestKeys::new();
        let plan = plan();
        let unnamed = RS256KeyPair::from_pem(&keys.rsa.to_pem().unwrap()).unwrap();
        let token = unnamed.sign(bare(good_claims())).unwrap();
        let one = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        let ok = check_claims(&token, &plan.oidc, NOW).unwrap().verify(&token, &one, &plan.oidc, NOW);
        assert!(ok.is_ok(), "one RS256 key: accepted");
        // A second RS256 key in the set: which one the token means is ambiguous, so no key is tried.
        let mut doc: Value = serde_json::from_str(&keys.jwks()).unwrap();
        let mut second = doc["keys"][0].clone();
        second["kid"] = json!("rsa-2");
        doc["keys"].as_array_mut().unwrap().push(second);
        let two = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let refused = check_claims(&token, &plan.oidc, NOW).unwrap().verify(&token, &two, &plan.oidc, NOW);
        assert_eq!(refused.unwrap_err(), AuthError::AmbiguousKey);
        // No new sign-in changes that: a 400 shown at once, not a 401 that re-runs the helper.
        let reply = AuthError::AmbiguousKey.to_reply();
        assert_eq!(reply.status, 400);
        assert!(String::from_utf8_lossy(&reply.body).contains("ask your administrator"));
    }

    #[test]
    fn a_kid_listed_twice_still_verifies_and_three_times_is_refused() {
        let keys = TestKeys::new();
        let plan = plan();
        let token = sign(&keys, good_claims());
        let mut doc: Value = serde_json::from_str(&keys.jwks()).unwrap();
        let mut twin = doc["keys"][0].clone();
        twin.as_object_mut().unwrap().remove("alg");
        doc["keys"].as_array_mut().unwrap().push(twin.clone());
        let twice = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let ok = check_claims(&token, &plan.oidc, NOW).unwrap().verify(&token, &twice, &plan.oidc, NOW);
        assert!(ok.is_ok(), "the same key with and without alg: {ok:?}");
        // A kid reused for another key (listed first): the token's key is the second one tried.
        let other = RS256KeyPair::generate(2048).unwrap().public_key().to_components();
        let mut reused = doc.clone();
        reused["keys"][0]["n"] = json!(URL_SAFE_NO_PAD.encode(&other.n));
        let set = KeySet::parse(reused.to_string().as_bytes()).unwrap();
        assert!(check_claims(&token, &plan.oidc, NOW).unwrap().verify(&token, &set, &plan.oidc, NOW).is_ok());
        doc["keys"].as_array_mut().unwrap().push(twin);
        let thrice = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let refused = check_claims(&token, &plan.oidc, NOW).unwrap().verify(&token, &thrice, &plan.oidc, NOW);
        assert_eq!(refused.unwrap_err(), AuthError::AmbiguousKey, "no more than two keys are tried");
    }

    #[test]
    fn groups_claim_paths() {
        let claims = json!({"groups": "solo", "realm_access": {"roles": ["a", "b", 3]}, "n": 1});
        let map = claims.as_object().unwrap();
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(groups_at(map, &path("groups")), vec!["solo"]);
        assert_eq!(groups_at(map, &path("realm_access.roles")), vec!["a", "b"]);
        assert!(groups_at(map, &path("n")).is_empty());
        assert!(groups_at(map, &path("missing.x")).is_empty());
        // Names with dots in them: Auth0's namespaced claims, Keycloak's client ids.
        let claims = json!({
            "https://claude.example.com/groups": ["ns"],
            "resource_access": {"claude.gateway": {"roles": ["r"]}, "claude": {"gateway": {"roles": ["shadowed"]}}},
            "a": {"b": ["nested"]}, "a.b": ["flat"]
        });
        let map = claims.as_object().unwrap();
        assert_eq!(groups_at(map, &path("https://claude.example.com/groups")), vec!["ns"]);
        assert_eq!(groups_at(map, &path("resource_access.claude.gateway.roles")), vec!["r"]);
        assert_eq!(groups_at(map, &path("a.b")), vec!["flat"], "the longest name present wins");
        assert!(groups_at(map, &path("resource_access.claude.other")).is_empty());
    }

    #[test]
    fn reply_never_echoes_the_token() {
        let r = AuthError::Expired.to_reply();
        assert_eq!(r.status, 401);
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer error=\"invalid_token\"")));
        assert!(String::from_utf8(r.body).unwrap().contains("access token expired"));
    }
}
