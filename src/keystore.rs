//! The IdP's signing keys as one worker sees them: where they come from (discovery, then the
//! JWKS), how fresh they are, when to refetch, and the record shared with the other workers.
//!
//! Everything here is a decision on data and a `now` given by the caller; the host layer does
//! the callouts and the shared-data reads and writes.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::config::OidcPlan;
use crate::jwks::{JwksError, KeySet};
use crate::reply::{Reply, ToReply};
use crate::shared::{self, SharedStore, StoreError};
use crate::url::HttpUrl;

/// How long to wait between fetch attempts while no keys are loaded, seconds.
const RETRY_WITHOUT_KEYS: u64 = 2;
/// How long to wait between refresh attempts that keep failing while keys are loaded, seconds.
const RETRY_WITH_KEYS: u64 = 15;

/// What to fetch from the IdP next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The OIDC discovery document, to learn `jwks_uri`.
    Discovery,
    /// The JWKS.
    Jwks,
}

/// An HTTP GET callout to the IdP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// What the answer will be.
    pub fetch: Fetch,
    /// Envoy cluster / Kong `host:port`.
    pub upstream: String,
    /// `:scheme`.
    pub scheme: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
}

/// Why no keys can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysError {
    /// Keys were never loaded (IdP unreachable since start).
    Unavailable,
    /// The last good keys are older than `oidc.jwks_max_age_seconds`.
    TooOld,
}

impl ToReply for KeysError {
    fn to_reply(&self) -> Reply {
        let message = match self {
            KeysError::Unavailable => {
                "gateway: the identity provider's signing keys could not be loaded; try again shortly"
            }
            KeysError::TooOld => {
                "gateway: the identity provider has been unreachable too long to verify sign-ins; try again shortly"
            }
        };
        let reason = match self {
            KeysError::Unavailable => "keys_unavailable",
            KeysError::TooOld => "keys_too_old",
        };
        Reply::error(503, reason, "api_error", message).with_header("retry-after", "5")
    }
}

impl KeysError {
    /// The answer when keys have been missing for `missing_for` seconds. Until `fail_fast_after`
    /// (`oidc.keys_fail_fast_seconds`), a 503 with `Retry-After: 5` lets Claude Code's retries
    /// ride out a short IdP hiccup or a restart; after it, the person sees the message at once
    /// instead of after three minutes of retries.
    pub fn to_reply_after(&self, missing_for: u64, fail_fast_after: u64) -> Reply {
        if missing_for < fail_fast_after {
            return self.to_reply();
        }
        let minutes = missing_for.div_ceil(60);
        let message = format!(
            "gateway: sign-ins cannot be verified: the identity provider has been unreachable for {minutes} min. \
             This is on the gateway's side; try again later, and tell your administrator if it lasts"
        );
        let mut reply = self.to_reply();
        reply.body = Reply::error(503, reply.reason, "api_error", &message).body;
        reply.with_header("x-should-retry", "false")
    }
}

/// Why a fetched document was not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The callout failed or the IdP answered a non-200 status.
    Unreachable(String),
    /// The discovery document is unusable.
    BadDiscovery(String),
    /// The JWKS is unusable.
    BadJwks(JwksError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(why) => write!(f, "identity provider unreachable: {why}"),
            FetchError::BadDiscovery(why) => write!(f, "discovery document unusable: {why}"),
            FetchError::BadJwks(e) => write!(f, "{e}"),
        }
    }
}

/// The record every worker reads and the fetching worker writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRecord {
    /// The issuer whose keys these are: a record is only ever adopted by a worker configured
    /// for it (its shared-data key, [`OidcPlan::shared_key`], already names the issuer).
    pub issuer: String,
    /// When the JWKS was fetched, seconds since the epoch.
    pub fetched_at: u64,
    /// Where it came from.
    pub jwks_uri: String,
    /// The JWKS document as served.
    pub jwks: String,
}

/// One worker's view of the keys.
#[derive(Debug)]
pub struct KeyStore {
    issuer: String,
    jwks_uri: Option<HttpUrl>,
    /// The JWKS URL is configured, not discovered: no record changes it.
    pinned_uri: bool,
    keys: Option<Rc<KeySet>>,
    fetched_at: u64,
    /// The JWKS document the keys came from, to tell two fetches of the same second apart.
    installed: String,
    last_attempt: Option<u64>,
    last_kid_refetch: Option<u64>,
    last_failure: Option<u64>,
    /// Since when no usable keys have been available (the first failure without them).
    missing_since: Option<u64>,
    /// The CAS of the shared record last read ([`KeyStore::adopt_shared`]): not parsed again.
    shared_seen: Option<u32>,
}

impl KeyStore {
    /// A store for `oidc`, with the configured JWKS URL if there is one.
    pub fn new(oidc: &OidcPlan) -> KeyStore {
        KeyStore {
            issuer: oidc.issuer.clone(),
            jwks_uri: oidc.jwks_uri.clone(),
            pinned_uri: oidc.jwks_uri.is_some(),
            keys: None,
            fetched_at: 0,
            last_attempt: None,
            last_kid_refetch: None,
            last_failure: None,
            missing_since: None,
            installed: String::new(),
            shared_seen: None,
        }
    }

    /// The keys, if loaded and not older than the maximum age.
    pub fn keys(&self, oidc: &OidcPlan, now: u64) -> Result<Rc<KeySet>, KeysError> {
        let keys = self.keys.as_ref().ok_or(KeysError::Unavailable)?;
        if now.saturating_sub(self.fetched_at) > oidc.jwks_max_age_seconds {
            return Err(KeysError::TooOld);
        }
        Ok(Rc::clone(keys))
    }

    /// Seconds the keys have been unusable at `now` (0 while they are usable or were never tried).
    pub fn missing_for(&self, oidc: &OidcPlan, now: u64) -> u64 {
        let too_old_since = self.keys.as_ref().map(|_| self.fetched_at.saturating_add(oidc.jwks_max_age_seconds));
        match (self.missing_since, too_old_since) {
            (_, Some(since)) if now > since => now - since,
            (Some(since), None) => now.saturating_sub(since),
            _ => 0,
        }
    }

    /// The background refresh due now, if any. Marks the attempt.
    pub fn due(&mut self, oidc: &OidcPlan, now: u64) -> Option<Callout> {
        let stale = self.keys.is_none() || now.saturating_sub(self.fetched_at) >= oidc.jwks_refresh_seconds;
        // Only failures slow the schedule down; a refresh after a success is due on time.
        let backoff = match (self.keys.is_some(), self.last_failure.is_some()) {
            (false, _) => RETRY_WITHOUT_KEYS,
            (true, true) => RETRY_WITH_KEYS,
            (true, false) => 0,
        };
        let waited = self.last_attempt.is_none_or(|t| now.saturating_sub(t) >= backoff);
        if !(stale && waited) {
            return None;
        }
        self.last_attempt = Some(now);
        Some(self.next_callout(oidc))
    }

    /// Whether a fetch failed so recently that a request should not try again yet: while the
    /// IdP is down, requests are answered at once instead of each adding a callout.
    pub fn cooling_down(&self, now: u64) -> bool {
        self.last_failure.is_some_and(|t| now.saturating_sub(t) < RETRY_WITHOUT_KEYS)
    }

    /// Records a failed fetch.
    pub fn note_failure(&mut self, now: u64) {
        self.last_failure = Some(now);
        if self.keys.is_none() {
            self.missing_since.get_or_insert(now);
        }
    }

    /// A fetch for a request that found no keys (bounded by the caller).
    pub fn fetch_now(&mut self, oidc: &OidcPlan, now: u64) -> Callout {
        self.last_attempt = Some(now);
        self.next_callout(oidc)
    }

    /// Whether an unknown `kid` may trigger a JWKS refetch now; if so, the refetch is recorded.
    ///
    /// The cool-down is shared by every worker (a time in shared data, taken by compare-and-swap),
    /// so a flood of forged tokens with made-up `kid`s costs the IdP one fetch per cool-down in
    /// all, and with the default 1 s a real rotation is picked up within a second or two.
    pub fn allow_kid_refetch(&mut self, oidc: &OidcPlan, store: &dyn SharedStore, now: u64) -> Option<Callout> {
        if self.jwks_uri.is_none()
            || self.last_kid_refetch.is_some_and(|t| now.saturating_sub(t) < oidc.unknown_kid_refetch_seconds)
        {
            return None;
        }
        let cooldown = oidc.unknown_kid_refetch_seconds;
        let taken = shared::update(store, &oidc.kid_refetch_key, |current| {
            let last = current.and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok());
            // A time in the future (a clock stepped back) does not block refetches forever.
            let free = last.is_none_or(|t| t > now || now - t >= cooldown);
            free.then(|| now.to_string().into_bytes())
        });
        if taken != Ok(true) {
            return None;
        }
        self.last_kid_refetch = Some(now);
        self.last_attempt = Some(now);
        Some(self.next_callout(oidc))
    }

    fn next_callout(&self, oidc: &OidcPlan) -> Callout {
        match &self.jwks_uri {
            Some(url) => callout(Fetch::Jwks, &oidc.jwks_upstream, url),
            None => callout(Fetch::Discovery, &oidc.upstream, &oidc.discovery_url),
        }
    }

    /// Takes a discovery answer; returns the JWKS callout to make next.
    pub fn on_discovery(&mut self, oidc: &OidcPlan, status: Option<u32>, body: &[u8]) -> Result<Callout, FetchError> {
        check_status(status)?;
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc: Discovery = serde_json::from_slice(body).map_err(|e| FetchError::BadDiscovery(e.to_string()))?;
        if doc.issuer != oidc.issuer {
            // Compared byte for byte, as the tokens' `iss` is; a trailing `/` is the usual slip.
            let slash = doc.issuer.trim_end_matches('/') == oidc.issuer.trim_end_matches('/');
            return Err(FetchError::BadDiscovery(format!(
                "issuer {:?} is not oidc.issuer {:?}{}",
                doc.issuer,
                oidc.issuer,
                if slash { " (they differ only in a trailing \"/\"; tokens carry the IdP's spelling)" } else { "" }
            )));
        }
        let url = HttpUrl::parse(&doc.jwks_uri).map_err(|e| FetchError::BadDiscovery(format!("jwks_uri {e}")))?;
        let discovery = &oidc.discovery_url;
        if !url.same_origin(discovery) && oidc.jwks_upstream == oidc.upstream {
            return Err(FetchError::BadDiscovery(format!(
                "jwks_uri is on {} but no oidc.jwks_upstream is configured for it",
                url.host_port()
            )));
        }
        self.jwks_uri = Some(url.clone());
        // The JWKS is due at once, not after the retry backoff.
        self.last_attempt = None;
        Ok(callout(Fetch::Jwks, &oidc.jwks_upstream, &url))
    }

    /// Takes a JWKS answer; on success the keys are installed and the record to share is returned.
    pub fn on_jwks(&mut self, status: Option<u32>, body: &[u8], now: u64) -> Result<SharedRecord, FetchError> {
        check_status(status)?;
        // The same document again (every refresh until the IdP rotates) keeps the parsed keys:
        // an EC key's verification tables take about a millisecond to build.
        let unchanged = self.keys.is_some() && self.installed.as_bytes() == body;
        if !unchanged {
            let set = KeySet::parse(body).map_err(FetchError::BadJwks)?;
            self.keys = Some(Rc::new(set));
            self.installed = String::from_utf8_lossy(body).into_owned();
        }
        self.last_failure = None;
        self.missing_since = None;
        self.fetched_at = now;
        Ok(SharedRecord {
            issuer: self.issuer.clone(),
            fetched_at: now,
            jwks_uri: self
                .jwks_uri
                .as_ref()
                .map(|u| format!("{}://{}{}", u.scheme, u.authority, u.path))
                .unwrap_or_default(),
            jwks: self.installed.clone(),
        })
    }

    /// Installs the keys another worker shared under `key` ([`OidcPlan::shared_key`]) when they
    /// are newer than ours ([`KeyStore::adopt`]); a record already read is not parsed again.
    pub fn adopt_shared(&mut self, store: &dyn SharedStore, key: &str) -> bool {
        let Some((record, cas)) = read_shared(store, key, self.shared_seen) else {
            return false;
        };
        self.shared_seen = Some(cas);
        self.adopt(&record)
    }

    /// Installs keys another worker fetched, when they are newer than ours (or of the same
    /// second but different: time is in whole seconds, and a rotation can happen in one).
    pub fn adopt(&mut self, record: &SharedRecord) -> bool {
        if record.issuer != self.issuer || !record.supersedes(self.fetched_at, &self.installed) {
            return false;
        }
        // Another worker's refresh of the same document: only its time is new.
        if self.keys.is_none() || record.jwks != self.installed {
            let Ok(set) = KeySet::parse(record.jwks.as_bytes()) else {
                return false;
            };
            self.keys = Some(Rc::new(set));
            self.installed = record.jwks.clone();
        }
        if !self.pinned_uri {
            if let Ok(url) = HttpUrl::parse(&record.jwks_uri) {
                self.jwks_uri = Some(url);
            }
        }
        self.fetched_at = record.fetched_at;
        true
    }
}

impl SharedRecord {
    /// Whether this record should replace keys fetched at `fetched_at` from document `jwks`.
    fn supersedes(&self, fetched_at: u64, jwks: &str) -> bool {
        self.fetched_at > fetched_at || (self.fetched_at == fetched_at && self.jwks != jwks)
    }
}

/// Writes `record` under `key` ([`OidcPlan::shared_key`]) for the other workers unless the
/// shared one is newer or the same.
pub fn publish(store: &dyn SharedStore, key: &str, record: &SharedRecord) -> Result<bool, StoreError> {
    shared::update(store, key, |current| {
        let newer = current
            .and_then(|b| serde_json::from_slice::<SharedRecord>(b).ok())
            .is_some_and(|c| !record.supersedes(c.fetched_at, &c.jwks));
        if newer {
            None
        } else {
            serde_json::to_vec(record).ok()
        }
    })
}

/// The shared record and its CAS, when there is one that parses and its CAS is not `seen`
/// (an unchanged record is not parsed again).
pub fn read_shared(store: &dyn SharedStore, key: &str, seen: Option<u32>) -> Option<(SharedRecord, u32)> {
    let (Some(bytes), Some(cas)) = store.get(key).ok()? else {
        return None;
    };
    if seen == Some(cas) {
        return None;
    }
    Some((serde_json::from_slice(&bytes).ok()?, cas))
}

fn check_status(status: Option<u32>) -> Result<(), FetchError> {
    match status {
        Some(200) => Ok(()),
        Some(other) => Err(FetchError::Unreachable(format!("status {other}"))),
        None => Err(FetchError::Unreachable("no response".to_owned())),
    }
}

fn callout(fetch: Fetch, upstream: &str, url: &HttpUrl) -> Callout {
    Callout {
        fetch,
        upstream: upstream.to_owned(),
        scheme: url.scheme.clone(),
        authority: url.authority.clone(),
        path: url.path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::tests::TestKeys;
    use crate::jwt::tests::plan;

    const ISSUER: &str = "https://idp.example.com/oauth2/default";
    const KEY: &str = "csg/jwks/test";

    /// Two configurations in one VM or shared-data zone (Kong's filter chains, Envoy listeners
    /// with one VM id, a reload to another IdP) never take each other's keys.
    #[test]
    fn another_issuers_keys_are_never_adopted() {
        let oidc = plan().oidc;
        let mut store = KeyStore::new(&oidc);
        let other = SharedRecord {
            issuer: "https://staging-idp.example.com".into(),
            fetched_at: 500,
            jwks_uri: "https://staging-idp.example.com/keys".into(),
            jwks: TestKeys::new().jwks(),
        };
        assert!(!store.adopt(&other));
        assert!(store.keys(&oidc, 500).is_err(), "no keys taken");
        let reparsed = |issuer: &str, jwks_uri: Option<&str>| {
            let mut doc = crate::config::tests::sample();
            doc["oidc"]["issuer"] = issuer.into();
            if let Some(uri) = jwks_uri {
                doc["oidc"]["jwks_uri"] = uri.into();
            }
            crate::config::Plan::from_json(doc.to_string().as_bytes(), &|_| Some("k".to_owned())).unwrap().oidc
        };
        let a = reparsed("https://idp-a.example.com", None);
        let b = reparsed("https://idp-b.example.com", None);
        let a_pinned = reparsed("https://idp-a.example.com", Some("https://idp-a.example.com/keys"));
        assert_ne!(a.shared_key, b.shared_key);
        assert_ne!(a.kid_refetch_key, b.kid_refetch_key);
        assert_ne!(a.shared_key, a_pinned.shared_key, "another key source");
        assert_eq!(a.shared_key, reparsed("https://idp-a.example.com", None).shared_key, "a reload keeps its keys");
        assert!(a.shared_key.len() < 32, "short: Kong aliases keys by CRC32");
    }

    #[test]
    fn a_configured_jwks_url_is_never_replaced_by_a_record() {
        let mut oidc = plan().oidc;
        oidc.jwks_uri = Some(HttpUrl::parse("https://idp.example.com/pinned-keys").unwrap());
        let mut store = KeyStore::new(&oidc);
        let record = SharedRecord {
            issuer: oidc.issuer.clone(),
            fetched_at: 500,
            jwks_uri: "https://idp.example.com/other-keys".into(),
            jwks: TestKeys::new().jwks(),
        };
        assert!(store.adopt(&record));
        assert_eq!(store.next_callout(&oidc).path, "/pinned-keys");
    }

    fn discovery(jwks_uri: &str) -> Vec<u8> {
        serde_json::json!({"issuer": "https://idp.example.com/oauth2/default", "jwks_uri": jwks_uri})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn discovery_then_jwks_then_refresh() {
        let oidc = plan().oidc;
        let mut store = KeyStore::new(&oidc);
        let first = store.due(&oidc, 1000).unwrap();
        assert_eq!(first.fetch, Fetch::Discovery);
        assert_eq!(first.path, "/oauth2/default/.well-known/openid-configuration");
        assert_eq!(first.upstream, "idp.example.com:443");
        assert_eq!(store.due(&oidc, 1001), None, "backoff while an attempt is recent");

        let jwks =
            store.on_discovery(&oidc, Some(200), &discovery("https://idp.example.com/oauth2/default/v1/keys")).unwrap();
        assert_eq!(
            (jwks.fetch.clone(), jwks.path.as_str(), jwks.authority.as_str()),
            (Fetch::Jwks, "/oauth2/default/v1/keys", "idp.example.com")
        );

        assert_eq!(store.keys(&oidc, 1000).unwrap_err(), KeysError::Unavailable);
        let record = store.on_jwks(Some(200), TestKeys::new().jwks().as_bytes(), 1000).unwrap();
        assert_eq!(record.fetched_at, 1000);
        assert!(store.keys(&oidc, 1000).is_ok());
        assert_eq!(store.due(&oidc, 1000 + 299), None);
        assert_eq!(store.due(&oidc, 1000 + 300).unwrap().fetch, Fetch::Jwks);
        store.note_failure(1000 + 301);
        assert_eq!(store.due(&oidc, 1000 + 310), None, "failed refresh backs off");
        assert!(store.due(&oidc, 1000 + 315).is_some());
    }

    #[test]
    fn keys_expire_after_max_age_and_failed_refresh_keeps_them() {
        let oidc = plan().oidc;
        let mut store = KeyStore::new(&oidc);
        store.on_jwks(Some(200), TestKeys::new().jwks().as_bytes(), 1000).unwrap();
        assert!(store.on_jwks(Some(503), b"", 2000).is_err());
        assert!(store.keys(&oidc, 1000 + 86_400).is_ok());
        assert_eq!(store.keys(&oidc, 1000 + 86_401).unwrap_err(), KeysError::TooOld);
    }

    #[test]
    fn unknown_kid_refetch_is_throttled() {
        let oidc = plan().oidc;
        let mut store = KeyStore::new(&oidc);
        let shared = crate::shared::tests::FakeStore::default();
        assert!(store.allow_kid_refetch(&oidc, &shared, 1000).is_none(), "no JWKS URL known yet");
        store.on_discovery(&oidc, Some(200), &discovery("https://idp.example.com/keys")).unwrap();
        assert!(store.allow_kid_refetch(&oidc, &shared, 1000).is_some());
        assert!(store.allow_kid_refetch(&oidc, &shared, 1000).is_none(), "cooling down");
        let mut other_worker = KeyStore::new(&oidc);
        other_worker.on_discovery(&oidc, Some(200), &discovery("https://idp.example.com/keys")).unwrap();
        assert!(other_worker.allow_kid_refetch(&oidc, &shared, 1000).is_none(), "the cool-down is shared");
        assert!(other_worker.allow_kid_refetch(&oidc, &shared, 1001).is_some(), "1 s later");
        assert!(store.allow_kid_refetch(&oidc, &shared, 1001).is_none(), "taken by the other worker");
        assert!(store.allow_kid_refetch(&oidc, &shared, 1002).is_some());
    }

    #[test]
    fn discovery_is_checked() {
        let oidc = plan().oidc;
        let mut store = KeyStore::new(&oidc);
        let wrong_issuer =
            serde_json::json!({"issuer": "https://evil", "jwks_uri": "https://idp.example.com/k"}).to_string();
        assert!(matches!(
            store.on_discovery(&oidc, Some(200), wrong_issuer.as_bytes()),
            Err(FetchError::BadDiscovery(_))
        ));
        assert!(matches!(
            store.on_discovery(&oidc, Some(200), &discovery("https://other.example.com/k")),
            Err(FetchError::BadDiscovery(_))
        ));
        assert!(matches!(store.on_discovery(&oidc, None, b""), Err(FetchError::Unreachable(_))));
        // The operator reads which field to fix, and the usual slip by name.
        let slash = serde_json::json!({"issuer": "https://idp.example.com/oauth2/default/", "jwks_uri": "https://idp.example.com/k"});
        let said = store.on_discovery(&oidc, Some(200), slash.to_string().as_bytes()).unwrap_err().to_string();
        assert!(said.contains("is not oidc.issuer \"https://idp.example.com/oauth2/default\""), "{said}");
        assert!(said.contains("differ only in a trailing \"/\""), "{said}");
    }

    #[test]
    fn publish_keeps_the_newest_record() {
        let store = crate::shared::tests::FakeStore::default();
        let record = |t| SharedRecord {
            issuer: ISSUER.into(),
            fetched_at: t,
            jwks_uri: "https://idp.example.com/keys".into(),
            jwks: "{}".into(),
        };
        assert_eq!(publish(&store, KEY, &record(10)), Ok(true));
        assert_eq!(publish(&store, KEY, &record(5)), Ok(false), "older record does not overwrite");
        store.lose_races.set(2);
        assert_eq!(publish(&store, KEY, &record(20)), Ok(true));
        assert_eq!(read_shared(&store, KEY, None).unwrap().0.fetched_at, 20);
        assert_eq!(publish(&store, KEY, &record(20)), Ok(false), "the same record is not written again");
        let rotated = SharedRecord { jwks: "{\"keys\":[]}".into(), ..record(20) };
        assert_eq!(publish(&store, KEY, &rotated), Ok(true), "other keys fetched in the same second replace it");
    }

    #[test]
    fn adopts_only_newer_shared_records() {
        let oidc = plan().oidc;
        let jwks = TestKeys::new().jwks();
        let mut store = KeyStore::new(&oidc);
        let record = SharedRecord {
            issuer: ISSUER.into(),
            fetched_at: 500,
            jwks_uri: "https://idp.example.com/keys".into(),
            jwks,
        };
        assert!(store.adopt(&record));
        assert!(!store.adopt(&record), "same record twice");
        let rotated = SharedRecord { jwks: TestKeys::new().jwks(), ..record.clone() };
        assert!(store.adopt(&rotated), "a rotation in the same second is still adopted");
        assert!(store.keys(&oidc, 600).is_ok());
        assert_eq!(store.due(&oidc, 600), None, "fresh keys from another worker need no fetch");
    }

    #[test]
    fn the_same_document_again_keeps_the_parsed_keys() {
        let oidc = plan().oidc;
        let jwks = TestKeys::new().jwks();
        let mut store = KeyStore::new(&oidc);
        store.on_jwks(Some(200), jwks.as_bytes(), 1000).unwrap();
        let first = store.keys(&oidc, 1000).unwrap();
        store.on_jwks(Some(200), jwks.as_bytes(), 1300).unwrap();
        assert!(Rc::ptr_eq(&first, &store.keys(&oidc, 1300).unwrap()), "a refresh of the same keys parses nothing");
        let later = SharedRecord {
            issuer: ISSUER.into(),
            fetched_at: 1600,
            jwks_uri: "https://idp.example.com/keys".into(),
            jwks: jwks.clone(),
        };
        assert!(store.adopt(&later));
        let adopted = store.keys(&oidc, 1600).unwrap();
        assert!(Rc::ptr_eq(&first, &adopted), "nor another worker's refresh of them");
        assert_eq!(store.due(&oidc, 1600), None, "the refresh time still moves");
        store.on_jwks(Some(200), TestKeys::new().jwks().as_bytes(), 1900).unwrap();
        let rotated = store.keys(&oidc, 1900).unwrap();
        assert!(!Rc::ptr_eq(&first, &rotated), "rotated keys are parsed");
        assert!(store.on_jwks(Some(200), b"{not json", 2000).is_err(), "a bad document is still refused");
        assert!(Rc::ptr_eq(&rotated, &store.keys(&oidc, 2000).unwrap()), "and the keys stay");
    }
}
