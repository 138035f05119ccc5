//! Talking to the OpenID Provider: discovery, the token endpoint (code, refresh, device code),
//! device authorization and revocation. Every call has a timeout.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;

/// Why a call to the IdP failed.
#[derive(Debug)]
pub enum OidcError {
    /// The IdP could not be reached, or did not answer in time.
    Transport(String),
    /// The IdP answered with an HTTP error status and no OAuth error.
    Status { url: String, status: u16 },
    /// The IdP answered, but not what the protocol says (not JSON, a missing field, discovery
    /// for another issuer).
    Unexpected(String),
    /// The IdP answered with an OAuth error (`error`, `error_description`).
    Refused { error: String, description: String },
    /// The token endpoint returned an access token that cannot go into an HTTP header (empty,
    /// or with whitespace, control or non-ASCII characters); the reason, never the token.
    UnusableAccessToken(&'static str),
}

impl OidcError {
    /// Whether the IdP is out of reach for now (no connection, a timeout, a 5xx from it or its
    /// load balancer, 408, a rate limit, or the OAuth errors that say so), as opposed to an
    /// answer that says no or makes no sense. An outage lets a run fall back on a saved token
    /// that is still valid, and never sends the person to sign in at an IdP that is down.
    pub fn is_outage(&self) -> bool {
        match self {
            OidcError::Transport(_) => true,
            OidcError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            // RFC 6749 §4.1.2.1: the IdP's own trouble, not a verdict on the grant. IdPs send
            // them from the token endpoint too (ORY Hydra: 500 server_error).
            OidcError::Refused { error, .. } => error == "temporarily_unavailable" || error == "server_error",
            OidcError::Unexpected(_) | OidcError::UnusableAccessToken(_) => false,
        }
    }
}

impl std::fmt::Display for OidcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OidcError::Transport(why) => write!(f, "cannot reach the identity provider: {why}"),
            OidcError::Status { url, status } => write!(f, "the identity provider answered {url} with status {status}"),
            OidcError::Unexpected(why) => write!(f, "the identity provider answered something unexpected: {why}"),
            OidcError::Refused { error, description } if description.is_empty() => {
                write!(f, "the identity provider refused: {error}")
            }
            OidcError::Refused { error, description } => {
                write!(f, "the identity provider refused: {error}: {description}")
            }
            OidcError::UnusableAccessToken(why) => {
                write!(f, "the identity provider returned an unusable access token: {why}")
            }
        }
    }
}

/// The endpoints discovery names.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    /// `issuer`.
    pub issuer: String,
    /// Where the browser signs in.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens become tokens.
    pub token_endpoint: String,
    /// Device authorization (RFC 8628), when supported.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// Token revocation (RFC 7009), when supported.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

impl Endpoints {
    /// The first endpoint that is not `https://` when `issuer` is.
    fn plain_http_under_https(&self, issuer: &str) -> Option<&str> {
        if !issuer.starts_with("https://") {
            return None;
        }
        [Some(&self.authorization_endpoint), Some(&self.token_endpoint)]
            .into_iter()
            .chain([self.device_authorization_endpoint.as_ref(), self.revocation_endpoint.as_ref()])
            .flatten()
            .map(String::as_str)
            .find(|url| !url.starts_with("https://"))
    }
}

/// A token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token Claude Code sends to the gateway.
    pub access_token: String,
    /// Lifetime in seconds, when given: a JSON number, or a numeric string as Azure AD v1 and
    /// some ADFS versions send it.
    #[serde(default, deserialize_with = "seconds")]
    pub expires_in: Option<u64>,
    /// For silent renewal.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The scopes granted, when the IdP says (RFC 6749 §5.1: it must when they differ from those
    /// asked for). Sent back with the refresh token.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A token endpoint request that failed, with the refresh token its answer carried, if any: an
/// answer rejected for its access token or its `expires_in` may come from an IdP that has rotated
/// the refresh token already, and the one it was sent is then spent.
#[derive(Debug)]
pub struct TokenError {
    /// Why the answer cannot be used.
    pub error: OidcError,
    /// The refresh token in a successful answer that was rejected for the rest.
    pub refresh_token: Option<String>,
}

impl From<OidcError> for TokenError {
    fn from(error: OidcError) -> Self {
        TokenError { error, refresh_token: None }
    }
}

/// Checks that an access token can be printed as one line and sent as `Authorization: Bearer`
/// and `x-api-key`: non-empty and visible ASCII only (RFC 6750's b64token is a subset). An empty
/// token would only earn 401s and Claude Code's retries; one with a line break would print as
/// two lines and make an invalid header.
pub fn check_access_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("it is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it contains whitespace, control or non-ASCII characters");
    }
    Ok(())
}

/// A device authorization answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAuthorization {
    /// Polled at the token endpoint.
    pub device_code: String,
    /// What the person types.
    pub user_code: String,
    /// Where they type it.
    pub verification_uri: String,
    /// The same with the code filled in.
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    /// Seconds between polls.
    #[serde(default = "default_interval")]
    pub interval: u64,
    /// Seconds until the code expires.
    #[serde(default = "default_device_ttl")]
    pub expires_in: u64,
}

/// `expires_in` as a number (a fraction is cut, a value past `u64` saturates) or a string of
/// digits; `null` counts as absent. Anything else is an answer the helper cannot use.
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let unusable = |v: &Value| D::Error::custom(format!("expires_in {v} is not a number of seconds"));
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(s), _) => Ok(Some(s)),
            // `as` saturates at u64::MAX; the lifetime is capped when it is used.
            (None, Some(f)) if f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(unusable(&Value::Number(n))),
        },
        Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| unusable(&Value::String(text))),
        Some(other) => Err(unusable(&other)),
    }
}

fn default_interval() -> u64 {
    5
}
fn default_device_ttl() -> u64 {
    600
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// What a revocation request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The IdP accepted it: the token can no longer be used there.
    Revoked,
    /// The IdP advertises no revocation endpoint; nothing was sent.
    NoEndpoint,
}

/// How long a call to the IdP may take in all, from the name lookup to the end of the answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// [`TIMEOUT`] when a saved token the gateway still takes is there to fall back on: an IdP that
/// accepts connections and never answers (a VPN gone, a firewall that drops) must not hold up
/// every run of the helper, and Claude Code with it, for the full timeout.
pub const TIMEOUT_WITH_A_FALLBACK: Duration = Duration::from_secs(5);

/// How long connecting to the IdP may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one IdP.
pub struct Client {
    agent: Agent,
    /// The discovered endpoints.
    pub endpoints: Endpoints,
}

/// The HTTP client for one IdP. `https_only` for an https issuer: then no request, and no
/// redirect of one, goes over plain http (a discovery redirected to http could have its
/// endpoints swapped on the way, and codes and verifiers sent where the swap says). `timeout`
/// bounds each call as a whole.
fn agent(https_only: bool, timeout: Duration) -> Agent {
    let tls = TlsConfig::builder().root_certs(roots()).build();
    Agent::config_builder()
        .https_only(https_only)
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The certificate authorities trusted for the IdP: the bundled Mozilla roots, and the operating
/// system's store, where a company CA or a TLS-inspecting proxy's CA is installed. When
/// `SSL_CERT_FILE` or `SSL_CERT_DIR` is set, the certificates there take the place of the
/// system's store (as OpenSSL reads them); the bundled roots stay. Verification is never off.
fn roots() -> RootCerts {
    // Parts of the store that cannot be read are skipped: the rest still counts, and an IdP
    // whose issuer is then missing fails with UnknownIssuer, which says what to do.
    let system = rustls_native_certs::load_native_certs().certs;
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .chain(&system)
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect::<Vec<_>>()
        .into()
}

/// A transport failure, with what to do when the cause is an IdP certificate from an issuer
/// nobody here trusts (a company CA, a TLS-inspecting proxy).
fn transport(why: String) -> OidcError {
    if why.contains("UnknownIssuer") {
        return OidcError::Transport(format!(
            "{why} (if the identity provider's certificate comes from a company CA, add that CA to the \
             system's certificate store, or set SSL_CERT_FILE to a PEM file holding it)"
        ));
    }
    OidcError::Transport(why)
}

impl Client {
    /// Discovers the IdP's endpoints from `issuer`; discovery may take up to `timeout`
    /// ([`TIMEOUT`], or [`TIMEOUT_WITH_A_FALLBACK`]), every later call through the client up to
    /// [`TIMEOUT`]: an IdP that answered discovery is there, and a refresh cut short after the IdP
    /// rotated the refresh token would lose the new one (the next run would present a spent one).
    pub fn discover(issuer: &str, timeout: Duration) -> Result<Client, OidcError> {
        let agent = agent(issuer.starts_with("https://"), TIMEOUT);
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let request = agent.get(&url).config().timeout_global(Some(timeout)).build();
        let mut response = request.call().map_err(|e| transport(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(OidcError::Status { url, status: response.status().as_u16() });
        }
        let text = response.body_mut().read_to_string().map_err(|e| transport(format!("{url}: {e}")))?;
        let endpoints: Endpoints =
            serde_json::from_str(&text).map_err(|e| OidcError::Unexpected(format!("{url}: {e}")))?;
        if endpoints.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(OidcError::Unexpected(format!(
                "discovery names issuer {:?}, not {issuer:?}",
                endpoints.issuer
            )));
        }
        // Codes, verifiers and refresh tokens go to these: an https issuer's must be https too.
        if let Some(plain) = endpoints.plain_http_under_https(issuer) {
            return Err(OidcError::Unexpected(format!(
                "discovery names {plain:?}, which is not https like the issuer; codes and tokens would travel unencrypted"
            )));
        }
        Ok(Client { agent, endpoints })
    }

    fn post<T: serde::de::DeserializeOwned>(&self, url: &str, form: &[(&str, &str)]) -> Result<T, OidcError> {
        let text = self.post_for_text(url, form)?;
        serde_json::from_str(&text).map_err(|e| OidcError::Unexpected(format!("{url}: {e}")))
    }

    /// The body of a successful answer; an OAuth error or a failure status otherwise.
    fn post_for_text(&self, url: &str, form: &[(&str, &str)]) -> Result<String, OidcError> {
        let mut response =
            self.agent.post(url).send_form(form.iter().copied()).map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(|e| transport(e.to_string()))?;
        if status.is_success() {
            return Ok(text);
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => Err(OidcError::Refused { error: e.error, description: e.error_description.unwrap_or_default() }),
            Err(_) => Err(OidcError::Status { url: url.to_owned(), status: status.as_u16() }),
        }
    }

    /// A token endpoint request whose answer carries a usable access token. One that does not is
    /// an error that still carries the answer's refresh token, if any.
    fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenError> {
        let url = &self.endpoints.token_endpoint;
        let text = self.post_for_text(url, form)?;
        let refresh_token = rotated_refresh_token(&text);
        let rejected = |error| TokenError { error, refresh_token: refresh_token.clone() };
        let tokens: TokenResponse =
            serde_json::from_str(&text).map_err(|e| rejected(OidcError::Unexpected(format!("{url}: {e}"))))?;
        check_access_token(&tokens.access_token).map_err(|why| rejected(OidcError::UnusableAccessToken(why)))?;
        Ok(tokens)
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    pub fn exchange_code(
        &self,
        client_id: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<TokenResponse, OidcError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ];
        self.token_request(&form).map_err(|e| e.error)
    }

    /// Uses a refresh token, asking for `scope` (the scopes granted last) when there is one.
    pub fn refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, TokenError> {
        self.token_request(&refresh_form(client_id, refresh_token, scope))
    }

    /// Starts the device authorization grant, for `audience` when one is configured (Auth0 takes
    /// it here as at its authorization endpoint).
    pub fn start_device(
        &self,
        client_id: &str,
        scopes: &str,
        audience: Option<&str>,
    ) -> Result<DeviceAuthorization, OidcError> {
        let url = self.endpoints.device_authorization_endpoint.as_deref().ok_or_else(|| OidcError::Refused {
            error: "unsupported".to_owned(),
            description: "the identity provider does not offer the device authorization grant".to_owned(),
        })?;
        self.post(url, &device_form(client_id, scopes, audience))
    }

    /// Polls once for a device code's tokens.
    pub fn poll_device(&self, client_id: &str, device_code: &str) -> Result<TokenResponse, OidcError> {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
            ("client_id", client_id),
        ];
        self.token_request(&form).map_err(|e| e.error)
    }

    /// Revokes a token (RFC 7009) if the IdP advertises a revocation endpoint.
    pub fn revoke(&self, client_id: &str, token: &str, hint: &str) -> Result<Revocation, OidcError> {
        let Some(url) = self.endpoints.revocation_endpoint.as_deref() else { return Ok(Revocation::NoEndpoint) };
        let mut response = self
            .agent
            .post(url)
            .send_form([("token", token), ("token_type_hint", hint), ("client_id", client_id)])
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Revocation::Revoked);
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => Err(OidcError::Refused { error: e.error, description: e.error_description.unwrap_or_default() }),
            Err(_) => Err(OidcError::Status { url: url.to_owned(), status: status.as_u16() }),
        }
    }
}

/// The refresh request. `scope` goes along when there is one: Entra ID refuses a refresh without
/// it (AADSTS90009) for an app that asks for a token to its own API; RFC 6749 §6 makes it
/// optional, and the scopes granted before are what it may ask for.
fn refresh_form<'a>(
    client_id: &'a str,
    refresh_token: &'a str,
    scope: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", client_id)];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    form
}

/// The non-empty `refresh_token` of a token endpoint answer, read without the rest of it.
fn rotated_refresh_token(text: &str) -> Option<String> {
    let answer: Value = serde_json::from_str(text).ok()?;
    answer.get("refresh_token")?.as_str().filter(|t| !t.is_empty()).map(str::to_owned)
}

/// The device authorization request: the client, its scopes and the audience, if any.
fn device_form<'a>(client_id: &'a str, scopes: &'a str, audience: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![("client_id", client_id), ("scope", scopes)];
    if let Some(audience) = audience {
        form.push(("audience", audience));
    }
    form
}

/// Whether `url` is plain `http://` to a host other than this computer (`localhost`, 127.0.0.0/8,
/// `[::1]`): a sign-in there sends its code and tokens over the network unencrypted.
pub fn plain_http_off_this_computer(url: &str) -> bool {
    let Some(rest) = url.get(..7).filter(|s| s.eq_ignore_ascii_case("http://")).map(|_| &url[7..]) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_issuers_endpoints_must_be_https() {
        let endpoints = |token: &str, revocation: Option<&str>| Endpoints {
            issuer: "https://idp".into(),
            authorization_endpoint: "https://idp/authorize".into(),
            token_endpoint: token.into(),
            device_authorization_endpoint: None,
            revocation_endpoint: revocation.map(str::to_owned),
        };
        assert_eq!(endpoints("https://idp/token", None).plain_http_under_https("https://idp"), None);
        assert_eq!(endpoints("http://idp/token", None).plain_http_under_https("https://idp"), Some("http://idp/token"));
        let revocation = endpoints("https://idp/token", Some("http://idp/revoke"));
        assert_eq!(revocation.plain_http_under_https("https://idp"), Some("http://idp/revoke"));
        // A plain-http issuer (a local test IdP) is held to nothing more.
        assert_eq!(endpoints("http://idp/token", None).plain_http_under_https("http://idp"), None);
    }

    /// An https issuer's client sends nothing over plain http, not even after a redirect (ureq
    /// checks every hop); a plain-http issuer's (a local test IdP) may.
    #[test]
    fn an_https_issuers_client_never_speaks_plain_http() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/.well-known/openid-configuration", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).unwrap();
            stream.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
        });
        let refused = agent(true, TIMEOUT).get(&url).call().unwrap_err();
        assert!(matches!(refused, ureq::Error::RequireHttpsOnly(_)), "{refused}");
        assert_eq!(agent(false, TIMEOUT).get(&url).call().unwrap().status().as_u16(), 204);
        server.join().unwrap();
    }

    #[test]
    fn access_token_must_fit_a_header_line() {
        let cases = [
            ("a JWT", "eyJhbGciOi.eyJzdWIi.c2ln", Ok(())),
            ("b64token characters", "abc-._~+/==", Ok(())),
            ("empty", "", Err("it is empty")),
            ("a line break", "abc\nX-Evil: 1", Err("it contains whitespace, control or non-ASCII characters")),
            ("a space", "abc def", Err("it contains whitespace, control or non-ASCII characters")),
            ("a tab", "abc\tdef", Err("it contains whitespace, control or non-ASCII characters")),
            ("a NUL", "abc\0", Err("it contains whitespace, control or non-ASCII characters")),
            ("DEL", "abc\x7f", Err("it contains whitespace, control or non-ASCII characters")),
            ("non-ASCII", "abcé", Err("it contains whitespace, control or non-ASCII characters")),
        ];
        for (name, token, want) in cases {
            assert_eq!(check_access_token(token), want, "{name}");
        }
    }

    #[test]
    fn expires_in_as_number_or_numeric_string() {
        let cases: [(&str, &str, Option<u64>); 7] = [
            ("a number", r#""expires_in": 3599"#, Some(3599)),
            ("a string (Azure AD v1, ADFS)", r#""expires_in": "3599""#, Some(3599)),
            ("a string with spaces", r#""expires_in": " 60 ""#, Some(60)),
            ("a fraction", r#""expires_in": 59.9"#, Some(59)),
            ("past u64", r#""expires_in": 1e30"#, Some(u64::MAX)),
            ("null", r#""expires_in": null"#, None),
            ("absent", r#""x": 1"#, None),
        ];
        for (name, field, want) in cases {
            let json = format!(r#"{{"access_token": "t", {field}}}"#);
            let got: TokenResponse = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.expires_in, want, "{name}");
        }
    }

    #[test]
    fn expires_in_that_is_no_number_is_refused() {
        for field in [r#""soon""#, "-5", "true", "[3600]", r#""3600s""#] {
            let json = format!(r#"{{"access_token": "t", "expires_in": {field}}}"#);
            let err = serde_json::from_str::<TokenResponse>(&json).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("is not a number of seconds"), "{field}: {err}");
        }
    }

    #[test]
    fn outage_or_refusal() {
        let status = |status| OidcError::Status { url: "https://idp/token".into(), status };
        let refused = |error: &str| OidcError::Refused { error: error.into(), description: String::new() };
        let cases = [
            ("no connection", OidcError::Transport("refused".into()), true),
            ("503", status(503), true),
            ("500", status(500), true),
            ("408 request timeout", status(408), true),
            ("429 rate limit", status(429), true),
            ("404", status(404), false),
            ("400 without an OAuth error", status(400), false),
            ("temporarily_unavailable", refused("temporarily_unavailable"), true),
            ("server_error", refused("server_error"), true),
            ("invalid_grant: the grant is gone", refused("invalid_grant"), false),
            ("invalid_client", refused("invalid_client"), false),
            ("not JSON", OidcError::Unexpected("x".into()), false),
            ("an unusable token", OidcError::UnusableAccessToken("it is empty"), false),
        ];
        for (name, e, want) in cases {
            assert_eq!(e.is_outage(), want, "{name}");
        }
    }

    #[test]
    fn the_device_request_carries_the_audience_when_configured() {
        assert_eq!(device_form("cc", "openid", None), vec![("client_id", "cc"), ("scope", "openid")]);
        assert_eq!(
            device_form("cc", "openid", Some("https://api")),
            vec![("client_id", "cc"), ("scope", "openid"), ("audience", "https://api")]
        );
    }

    #[test]
    fn an_untrusted_certificate_says_how_to_trust_a_company_ca() {
        let e = transport("https://idp/x: io: invalid peer certificate: UnknownIssuer".into()).to_string();
        assert!(e.starts_with("cannot reach the identity provider: https://idp/x: io: invalid peer"), "{e}");
        assert!(e.contains("set SSL_CERT_FILE"), "{e}");
        let e = transport("io: Connection refused".into()).to_string();
        assert_eq!(e, "cannot reach the identity provider: io: Connection refused");
    }

    #[test]
    fn the_bundled_roots_are_trusted_whatever_the_system_has() {
        // A bare container has no system store at all; the bundled Mozilla roots still count.
        let RootCerts::Specific(certs) = roots() else { panic!("specific roots") };
        for bundled in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            assert!(certs.iter().any(|c| c.der() == bundled.as_ref()));
        }
    }

    #[test]
    fn plain_http_is_refused_only_off_this_computer() {
        for url in [
            "http://idp.example.com",
            "HTTP://10.0.0.5:8080/realms/x",
            "http://127.0.0.1.evil.com/",
            "http://user@192.0.2.1/",
            "http://[2001:db8::1]:80/",
        ] {
            assert!(plain_http_off_this_computer(url), "{url}");
        }
        for url in [
            "https://idp.example.com",
            "http://127.0.0.1:9100",
            "http://localhost/x",
            "http://[::1]:9100/",
            "http://127.8.9.10",
            "https://10.0.0.5",
        ] {
            assert!(!plain_http_off_this_computer(url), "{url}");
        }
    }
}
