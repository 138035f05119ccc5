//! The sign-in helper against an identity provider that is down, or answers what a broken one
//! would (a small fake IdP on a loopback port): the answers the real `oidc-provider` of
//! `tests/flows.rs` never gives. Each test runs the real binary with pipes on stdin, stdout and
//! stderr, as Claude Code does.

// This whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

const HELPER: &str = env!("CARGO_BIN_EXE_claude-sso-signin");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An unsigned JWT with these claims (the helper does not verify; the gateway does).
fn jwt(claims: serde_json::Value) -> String {
    format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// What the fake answers to a POST: path and form body in, status and JSON body out.
type Answer = dyn Fn(&str, &str) -> (u16, String) + Send + Sync;

/// A fake IdP: discovery names itself; every POST goes to `answer`. Lives until the test ends.
struct FakeIdp {
    issuer: String,
    posts: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeIdp {
    fn start(answer: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> FakeIdp {
        FakeIdp::listen(None, answer)
    }

    /// Over HTTPS (`https://127.0.0.1:<port>`) with this server configuration, else plain HTTP.
    fn listen(
        tls: Option<Arc<rustls::ServerConfig>>,
        answer: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeIdp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = format!("{scheme}://{}", listener.local_addr().unwrap());
        let posts = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let (base, seen) = (issuer.clone(), posts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (base, seen, answer, tls) = (base.clone(), seen.clone(), answer.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => drop(serve(stream, &base, &seen, &*answer)),
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(config).unwrap();
                        let mut tls = serve(rustls::StreamOwned::new(connection, stream), &base, &seen, &*answer);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        FakeIdp { issuer, posts }
    }

    /// Answers every token request with this JSON.
    fn token(body: serde_json::Value) -> FakeIdp {
        FakeIdp::start(move |_, _| (200, body.to_string()))
    }

    fn posts(&self) -> usize {
        self.posts.lock().unwrap().len()
    }
}

/// Answers one request on `stream` and hands the stream back (a TLS stream is then closed).
fn serve<S: Read + Write>(stream: S, base: &str, posts: &Mutex<Vec<(String, String)>>, answer: &Answer) -> S {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        // A client that gave up on the handshake (it does not trust the certificate).
        return reader.into_inner();
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, reply) = match (method, path) {
        ("GET", "/.well-known/openid-configuration") => (
            200,
            serde_json::json!({
                "issuer": base,
                "authorization_endpoint": format!("{base}/auth"),
                "token_endpoint": format!("{base}/token"),
                "device_authorization_endpoint": format!("{base}/device"),
            })
            .to_string(),
        ),
        ("POST", _) => {
            posts.lock().unwrap().push((path.to_owned(), body.clone()));
            answer(path, &body)
        }
        _ => (404, "{}".to_owned()),
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    stream
}

/// An issuer nothing listens on: every connection is refused.
fn dead_issuer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A private HOME and cache directory for one issuer, removed on drop.
struct Home {
    dir: PathBuf,
    issuer: String,
}

impl Home {
    fn new(issuer: &str) -> Home {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("csg-hostile-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Home { dir, issuer: issuer.to_owned() }
    }

    /// As Claude Code over SSH runs it: no browser, pipes everywhere.
    fn command(&self) -> Command {
        let mut c = Command::new(HELPER);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("CLAUDE_SSO_ISSUER", &self.issuer)
            .env("CLAUDE_SSO_CACHE_DIR", self.dir.join("cache"))
            // None but the test's own: not this machine's.
            .env("CLAUDE_SSO_MANAGED_SETTINGS", self.dir.join("managed-settings.json"))
            .env("CLAUDE_SSO_BROWSER", "none")
            .env("CLAUDE_SSO_REDIRECT_PORT", "0")
            .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "30")
            .stdin(Stdio::piped());
        c
    }

    fn run(&self) -> Output {
        self.command().output().unwrap()
    }

    fn cache_path(&self) -> PathBuf {
        let digest = Sha256::digest(format!("{}\nclaude-code", self.issuer).as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("cache").join(format!("{name}.json"))
    }

    /// A saved sign-in, as the helper writes it.
    fn save(&self, access_token: &str, expires_at: u64, refresh_token: &str) {
        self.write(serde_json::json!({
            "issuer": self.issuer, "client_id": "claude-code", "access_token": access_token,
            "expires_at": expires_at, "refresh_token": refresh_token,
        }));
    }

    /// This cache entry, in the cache file.
    fn write(&self, entry: serde_json::Value) {
        let path = self.cache_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, entry.to_string()).unwrap();
    }
}

impl Home {
    /// A saved sign-in whose access token is about to expire, so the next run refreshes.
    fn save_stale(&self) {
        self.save("old-token", now() + 10, "rt");
    }

    fn cached(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.cache_path()).unwrap()).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 0 and exactly `token` and a newline on stdout.
fn assert_hands_out(out: &Output, token: &str) {
    assert!(out.status.success(), "helper failed: {}", stderr(out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{token}\n"), "{}", stderr(out));
}

/// Exit 1, nothing on stdout for Claude Code to take as a key.
fn assert_fails(out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(out.stdout.is_empty(), "stdout: {:?}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn idp_out_of_reach_hands_out_the_saved_token_while_it_is_still_good() {
    // 240 s left: inside helper TTL + margin (360 s), so the run refreshes, but the gateway
    // still takes it. The IdP refuses connections.
    let home = Home::new(&dead_issuer());
    let token = jwt(serde_json::json!({"sub": "alice", "exp": now() + 240}));
    home.save(&token, now() + 240, "rt");
    let out = home.run();
    assert_hands_out(&out, &token);
    let err = stderr(&out);
    assert!(err.contains("cannot reach the identity provider") && err.contains("using the saved token"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line of note: {err}");
}

#[test]
fn idp_out_of_reach_never_hands_out_a_token_within_the_margin() {
    let home = Home::new(&dead_issuer());
    home.save("nearly-expired", now() + 30, "rt");
    let out = home.run();
    assert_fails(&out);
    assert!(stderr(&out).contains("cannot reach the identity provider"), "{}", stderr(&out));
}

#[test]
fn idp_out_of_reach_never_hands_out_a_token_past_the_gateways_max_token_age() {
    // The gateway refuses tokens older than 600 s (CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS, the
    // gateway's oidc.max_token_age_seconds). This token was issued 1000 s ago, saved before the
    // limit was configured, and by `exp` still has close to an hour. The IdP is out of reach:
    // the helper must not fall back on a token the gateway refuses as too old (Claude Code would
    // retry 13 times with it), but say at once that the IdP cannot be reached.
    let home = Home::new(&dead_issuer());
    let token = jwt(serde_json::json!({"sub": "alice", "iat": now() - 1000, "exp": now() + 3000}));
    home.save(&token, now() + 3000, "rt");
    let out = home.command().env("CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS", "600").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&token),
        "a token older than the gateway's max token age was handed out during an outage: {}",
        stderr(&out)
    );
    assert_fails(&out);
    assert!(stderr(&out).contains("cannot reach the identity provider"), "{}", stderr(&out));
}

#[test]
fn a_token_without_a_refresh_token_is_handed_out_until_it_is_within_the_margin() {
    // An IdP that issues 5-minute access tokens (Keycloak's default lifespan; Okta allows it)
    // and no refresh token (offline_access not granted: Auth0's "Allow Offline Access" is off by
    // default; a Keycloak client with refresh tokens off). This is the cache `login` has just
    // written (it said "Claude Code will use this sign-in (token valid 5 min ...)"). The next run
    // by Claude Code over SSH hands that token out: it has 295 s left, more than the 60 s margin
    // (less than the helper TTL, so with a note, as a refreshed short-lived token is). Asking for
    // a sign-in instead would send the person back to `login` after every `login`.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "unused", "expires_in": 300}));
    let home = Home::new(&idp.issuer);
    let token = jwt(serde_json::json!({"sub": "alice", "iat": now() - 5, "exp": now() + 295}));
    let saved = |token: &str, expires_at: u64| {
        serde_json::json!({
            "issuer": home.issuer, "client_id": "claude-code", "access_token": token,
            "expires_at": expires_at, "refresh_token": null,
        })
    };
    home.write(saved(&token, now() + 295));
    let out = home.run();
    assert_hands_out(&out, &token);
    assert!(stderr(&out).contains("sooner than the helper TTL: there is no refresh token"), "{}", stderr(&out));
    // Within the margin, the run asks for a sign-in (here: says what to run).
    home.write(saved("nearly-expired", now() + 30));
    let out = home.run();
    assert_fails(&out);
    assert!(stderr(&out).contains("not signed in to"), "{}", stderr(&out));
    assert_eq!(idp.posts(), 0);
}

#[test]
fn a_helper_ttl_it_cannot_read_means_the_default_not_a_failed_run() {
    // Claude Code's environment reaches the helper as it is: an empty or fractional value must
    // not make every run (and so every request) fail with a usage error.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "renewed", "expires_in": 7200}));
    let home = Home::new(&idp.issuer);
    for ttl in ["", " ", "300000.0", "five minutes", "-1"] {
        home.save("good-for-50-minutes", now() + 3000, "rt");
        let out = home.command().env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", ttl).output().unwrap();
        assert_hands_out(&out, "good-for-50-minutes");
    }
    assert_eq!(idp.posts(), 0);
    // One it can read is used: an hour's TTL outlasts the saved token, which is renewed.
    home.save("good-for-50-minutes", now() + 3000, "rt");
    let out = home.command().env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "3600000").output().unwrap();
    assert_hands_out(&out, "renewed");
}

#[test]
fn idp_5xx_counts_as_out_of_reach() {
    let idp = FakeIdp::start(|_, _| (503, "<html>maintenance</html>".to_owned()));
    let home = Home::new(&idp.issuer);
    home.save("still-good", now() + 240, "rt");
    assert_hands_out(&home.run(), "still-good");
}

#[test]
fn a_refused_refresh_does_not_fall_back_on_the_saved_token() {
    // invalid_grant is an answer, not an outage: the grant is gone (revoked, a person left the
    // company), so the saved token is not handed out again.
    let idp = FakeIdp::start(|_, _| (400, r#"{"error":"invalid_grant"}"#.to_owned()));
    let home = Home::new(&idp.issuer);
    home.save("still-good", now() + 240, "rt");
    let out = home.run();
    assert_fails(&out);
    assert!(stderr(&out).contains("could not be renewed: the identity provider refused: invalid_grant"));
    assert_eq!(idp.posts(), 1);
}

#[test]
fn expires_in_as_a_string_is_a_lifetime() {
    // Azure AD v1 and some ADFS versions send `"expires_in": "3599"`.
    let idp =
        FakeIdp::token(serde_json::json!({"access_token": "opaque", "expires_in": "3599", "refresh_token": "rt2"}));
    let home = Home::new(&idp.issuer);
    home.save_stale();
    let started = now();
    assert_hands_out(&home.run(), "opaque");
    let expires_at = home.cached()["expires_at"].as_u64().unwrap();
    assert!((started + 3599..=now() + 3599).contains(&expires_at), "{expires_at}");
}

#[test]
fn an_answer_that_does_not_parse_is_unexpected_not_unreachable() {
    for (name, answer) in [
        ("expires_in that is no number", r#"{"access_token": "t", "expires_in": "soon"}"#),
        ("no access_token", r#"{"token": "t"}"#),
        ("an HTML page", "<html>sign in</html>"),
    ] {
        let idp = FakeIdp::start(move |_, _| (200, answer.to_owned()));
        let home = Home::new(&idp.issuer);
        home.save_stale();
        let out = home.run();
        assert_fails(&out);
        let err = stderr(&out);
        assert!(err.contains("the identity provider answered something unexpected"), "{name}: {err}");
        assert!(!err.contains("cannot reach"), "{name}: {err}");
    }
}

#[test]
fn an_unusable_access_token_is_refused_and_never_printed() {
    for (name, token) in [("empty", ""), ("a line break", "abc\nX-Evil: 1"), ("a space", "abc def")] {
        let idp =
            FakeIdp::token(serde_json::json!({"access_token": token, "expires_in": 3600, "refresh_token": "rt2"}));
        let home = Home::new(&idp.issuer);
        home.save_stale();
        let out = home.run();
        assert_fails(&out);
        let err = stderr(&out);
        assert!(err.contains("the identity provider returned an unusable access token"), "{name}: {err}");
        assert!(!err.contains("X-Evil"), "{name}: the token is not shown: {err}");
    }
}

#[test]
fn a_huge_lifetime_is_capped_at_a_day_without_a_panic() {
    let idp = FakeIdp::token(serde_json::json!({"access_token": "opaque", "expires_in": u64::MAX}));
    let home = Home::new(&idp.issuer);
    home.save_stale();
    assert_hands_out(&home.run(), "opaque");
    let left = home.cached()["expires_at"].as_u64().unwrap() - now();
    assert!((86_300..=86_400).contains(&left), "{left}");
}

#[test]
fn absurd_settings_do_not_panic() {
    let idp = FakeIdp::token(serde_json::json!({"access_token": "opaque", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    home.save_stale();
    let max = u64::MAX.to_string();
    let out = home.command().env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", &max).output().unwrap();
    assert_hands_out(&out, "opaque");
    let out = home.command().env("CLAUDE_SSO_MARGIN_SECONDS", &max).output().unwrap();
    assert_fails(&out);
    let out = home.command().env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", &max).arg("status").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An IdP (and gateway) whose clock is `skew` seconds ahead of this computer's; 1 h JWTs.
fn skewed_idp(skew: i64) -> FakeIdp {
    FakeIdp::start(move |_, _| {
        let t = now().checked_add_signed(skew).unwrap();
        let token = jwt(serde_json::json!({"sub": "a", "iat": t, "exp": t + 3600}));
        (200, serde_json::json!({"access_token": token, "expires_in": 3600, "refresh_token": "rt2"}).to_string())
    })
}

#[test]
fn a_clock_behind_the_idp_does_not_stretch_the_token_life() {
    // The laptop is 2 h behind: `exp` looks 3 h away, but the token lives 1 h at the gateway.
    for (name, skew, said) in [("behind", 7200, "7200 s behind"), ("ahead", -7200, "7200 s ahead of")] {
        let idp = skewed_idp(skew);
        let home = Home::new(&idp.issuer);
        home.save_stale();
        let out = home.run();
        assert!(out.status.success(), "clock {name}: {}", stderr(&out));
        let left = home.cached()["expires_at"].as_u64().unwrap() - now();
        assert!((3590..=3600).contains(&left), "clock {name}: believed {left} s left; really 3600 s");
        let err = stderr(&out);
        assert!(err.contains(&format!("this computer's clock is {said} the identity provider's")), "{err}");
    }
}

#[test]
fn clocks_that_agree_raise_no_warning_and_exp_still_caps() {
    let idp = FakeIdp::start(move |_, _| {
        let token = jwt(serde_json::json!({"sub": "a", "iat": now(), "exp": now() + 900}));
        (200, serde_json::json!({"access_token": token, "expires_in": 3600}).to_string())
    });
    let home = Home::new(&idp.issuer);
    home.save_stale();
    let out = home.run();
    assert!(out.status.success() && stderr(&out).is_empty(), "{}", stderr(&out));
    let left = home.cached()["expires_at"].as_u64().unwrap() - now();
    assert!((890..=900).contains(&left), "{left}");
}

#[test]
fn a_clock_set_back_since_the_token_arrived_does_not_keep_it_fresh() {
    // The laptop clock was 2 h ahead when the token arrived (dual boot, a VM resumed before
    // NTP), so the helper saved expires_at = (its clock at receipt) + 1 h. The clock has since
    // been set right (it now agrees with the IdP and the gateway). The token's `exp` is already
    // past, by the IdP's clock and now by this one: handed out, the gateway would refuse it with
    // 401 and Claude Code would re-run the helper and get the same token, for two hours. The
    // clock reads earlier than at receipt, so the saved expiry is not believed: the run refreshes.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "new-token", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    let iat = now() - 3610;
    let token = jwt(serde_json::json!({"sub": "alice", "iat": iat, "exp": iat + 3600}));
    // What `received` wrote: this clock at receipt (iat + 7200), plus the 3600 s lifetime.
    home.write(serde_json::json!({
        "issuer": home.issuer, "client_id": "claude-code", "access_token": token,
        "expires_at": iat + 7200 + 3600, "received_at": iat + 7200, "refresh_token": "rt",
    }));
    let out = home.run();
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        token,
        "a token whose exp passed 10 s ago (by a clock that agrees with the IdP) was handed out"
    );
    assert_hands_out(&out, "new-token");
    assert_eq!(idp.posts(), 1);
}

#[cfg(unix)]
#[test]
fn a_refresh_that_cannot_be_saved_still_hands_out_the_new_token() {
    // As on a full disk: no file may grow (the shell ignores SIGXFSZ, so writes fail with EFBIG
    // and the helper inherits both). The IdP has rotated the refresh token by then, so the new
    // access token is all this run can keep.
    let idp =
        FakeIdp::token(serde_json::json!({"access_token": "new-token", "expires_in": 3600, "refresh_token": "rt2"}));
    let home = Home::new(&idp.issuer);
    home.save_stale();
    let mut full_disk = Command::new("sh");
    full_disk.args(["-c", "trap '' XFSZ; ulimit -f 0; exec \"$0\"", HELPER]).env_clear();
    for (key, value) in home.command().get_envs() {
        if let Some(value) = value {
            full_disk.env(key, value);
        }
    }
    let out = full_disk.stdin(Stdio::piped()).output().unwrap();
    assert_hands_out(&out, "new-token");
    let err = stderr(&out);
    assert!(err.contains("the sign-in was not saved") && err.contains("cannot write the token cache"), "{err}");
    assert_eq!(home.cached()["access_token"], "old-token", "the cache was not written");
}

#[test]
fn a_device_polling_interval_of_a_day_does_not_outlast_the_login_timeout() {
    let idp = FakeIdp::start(|path, _| {
        match path {
        "/device" => (
            200,
            serde_json::json!({"device_code": "dc", "user_code": "AB-CD", "verification_uri": "http://x/device", "interval": 86_400})
                .to_string(),
        ),
        _ => (400, r#"{"error":"authorization_pending"}"#.to_owned()),
    }
    });
    let home = Home::new(&idp.issuer);
    let started = std::time::Instant::now();
    let mut login = home
        .command()
        .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "2")
        .args(["login", "--device"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = loop {
        if let Some(status) = login.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            let _ = login.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = login.wait_with_output().unwrap();
    assert!(finished.is_some(), "login --device still asleep after 10 s: {}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_fails(&out);
    assert!(stderr(&out).contains("sign-in was not completed in time"), "{}", stderr(&out));
    assert_eq!(idp.posts(), 2, "one device authorization, one poll at the deadline");
}

#[test]
fn a_device_login_polls_on_through_a_passing_idp_outage() {
    // RFC 8628 leaves 5xx to the client: one 503 between two polls ended the sign-in the person was
    // finishing on their phone.
    let polls = Arc::new(Mutex::new(0));
    let seen = polls.clone();
    let idp = FakeIdp::start(move |path, _| match path {
        "/device" => (
            200,
            serde_json::json!({"device_code": "dc", "user_code": "AB-CD", "verification_uri": "http://x/device",
                               "interval": 1})
            .to_string(),
        ),
        _ => {
            let mut n = seen.lock().unwrap();
            *n += 1;
            match *n {
                1 => (400, r#"{"error":"authorization_pending"}"#.to_owned()),
                2 => (503, "<html>upstream unavailable</html>".to_owned()),
                _ => (200, serde_json::json!({"access_token": "device-token", "expires_in": 3600}).to_string()),
            }
        }
    });
    let home = Home::new(&idp.issuer);
    let out = home.command().args(["login", "--device"]).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(*polls.lock().unwrap(), 3, "polled again after the 503");
    assert_eq!(home.cached()["access_token"], "device-token");
}

#[test]
fn a_plain_http_issuer_on_the_network_is_refused_unless_allowed() {
    // 192.0.2.0/24 is TEST-NET-1: nothing answers there, and the refusal comes before any attempt.
    let home = Home::new("http://192.0.2.1:9");
    let out = home.run();
    assert_fails(&out);
    assert!(stderr(&out).contains("plain http:// on the network"), "{}", stderr(&out));
    // 0.0.0.0 is not loopback by name, and connecting to it is refused at once.
    let unspecified = Home::new("http://0.0.0.0:1");
    assert!(stderr(&unspecified.run()).contains("plain http:// on the network"));
    let allowed = unspecified.command().env("CLAUDE_SSO_ALLOW_INSECURE_HTTP", "true").output().unwrap();
    assert_fails(&allowed);
    assert!(!stderr(&allowed).contains("plain http://"), "allowed: {}", stderr(&allowed));
}

/// Answers of an IdP that is down or overloaded rather than refusing: a refresh that gets one
/// is an outage, as a refused connection is.
const OUTAGES: [(&str, u16, &str); 5] = [
    ("503 maintenance page", 503, "<html>maintenance</html>"),
    ("500 server_error", 500, r#"{"error":"server_error"}"#),
    ("408 request timeout", 408, ""),
    ("429 rate limit (Okta)", 429, r#"{"errorCode":"E0000047","errorSummary":"API call exceeded rate limit"}"#),
    ("temporarily_unavailable", 400, r#"{"error":"temporarily_unavailable"}"#),
];

#[test]
fn a_rate_limited_or_temporarily_unavailable_idp_is_out_of_reach_too() {
    for (name, status, body) in OUTAGES {
        let idp = FakeIdp::start(move |_, _| (status, body.to_owned()));
        let home = Home::new(&idp.issuer);
        home.save("still-good", now() + 240, "rt");
        let out = home.run();
        assert_hands_out(&out, "still-good");
        assert!(stderr(&out).contains("using the saved token"), "{name}: {}", stderr(&out));
    }
}

#[cfg(unix)]
#[test]
fn an_idp_outage_at_refresh_never_starts_a_sign_in() {
    // The saved token is inside the margin (Claude Code re-runs the helper 30 s before `exp`),
    // and a browser "opens" (/bin/true): a run must not send the person to an IdP that is down
    // and wait the login timeout, but say at once that the IdP is unreachable.
    for (name, status, body) in OUTAGES {
        let idp = FakeIdp::start(move |_, _| (status, body.to_owned()));
        let home = Home::new(&idp.issuer);
        home.save("nearly-expired", now() + 30, "rt");
        let started = std::time::Instant::now();
        let out = home
            .command()
            .env("CLAUDE_SSO_BROWSER", "/bin/true")
            .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "12")
            .output()
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(6), "{name}: took {:?}", started.elapsed());
        assert_fails(&out);
        let err = stderr(&out);
        assert!(err.starts_with("claude-sso-signin: the identity provider is unreachable ("), "{name}: {err}");
        assert!(err.contains("try again when it is back") && !err.contains("signing in"), "{name}: {err}");
        assert_eq!(idp.posts(), 1, "{name}: only the refresh was sent");
        assert_eq!(home.cached()["access_token"], "nearly-expired", "{name}: the saved sign-in is kept");
    }
}

#[cfg(unix)]
#[test]
fn a_refused_refresh_still_signs_in_again() {
    // Only a refusal (the grant is gone) sends the person to sign in again.
    let idp = FakeIdp::start(|_, _| (400, r#"{"error":"invalid_grant"}"#.to_owned()));
    let home = Home::new(&idp.issuer);
    home.save("nearly-expired", now() + 30, "rt");
    let out = home
        .command()
        .env("CLAUDE_SSO_BROWSER", "/bin/true")
        .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "1")
        .output()
        .unwrap();
    assert_fails(&out);
    let err = stderr(&out);
    assert!(err.contains("invalid_grant; signing in again") && err.contains("not completed in time"), "{err}");
}

#[test]
fn a_sign_in_made_for_another_audience_is_not_handed_out_or_renewed() {
    // The sign-in was saved before CLAUDE_SSO_AUDIENCE was set (Auth0 rollout: the first
    // settings lacked it, the gateway refused the tokens, the admin added it). Handing out its
    // token, or refreshing it (which at Auth0 keeps the grant's original audience), would go on
    // until the refresh token dies, and every developer would have to find `logout` + `login`.
    // The run asks for a sign-in instead, for a cache written by an earlier version (its token
    // names the old audience) as for one that recorded what it was made for.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "should-not-be-needed", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    let old = jwt(serde_json::json!({"sub": "alice", "aud": "https://old-api", "iat": now(), "exp": now() + 3600}));
    let recorded = serde_json::json!({"audience": null, "scopes": ["email", "offline_access", "openid", "profile"]});
    for (name, requested) in [("earlier version", serde_json::Value::Null), ("recorded", recorded)] {
        home.write(serde_json::json!({
            "issuer": home.issuer, "client_id": "claude-code", "access_token": old,
            "expires_at": now() + 3600, "refresh_token": "rt", "requested": requested,
        }));
        assert_hands_out(&home.run(), &old);
        let out = home.command().env("CLAUDE_SSO_AUDIENCE", "https://claude-gw.example.com").output().unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&old),
            "{name}: a token issued for audience https://old-api was handed out for https://claude-gw.example.com"
        );
        assert_fails(&out);
        assert!(stderr(&out).contains("made for another CLAUDE_SSO_AUDIENCE"), "{name}: {}", stderr(&out));
        assert_eq!(idp.posts(), 0, "{name}: the old grant is not refreshed");
    }
}

/// A device authorization the fake IdP approves at once: the first poll gets a token.
fn device_idp() -> FakeIdp {
    FakeIdp::start(|path, _| match path {
        "/device" => (
            200,
            serde_json::json!({"device_code": "dc", "user_code": "AB-CD", "verification_uri": "http://x/device",
                               "interval": 1})
            .to_string(),
        ),
        _ => (200, serde_json::json!({"access_token": "device-token", "expires_in": 3600}).to_string()),
    })
}

#[test]
fn the_device_flow_asks_for_the_configured_audience() {
    // Auth0's /oauth/device/code takes `audience` as /authorize does; without it the token is
    // for another API and the gateway refuses it.
    for (audience, want) in [(Some("https://claude-gw.example.com"), true), (None, false)] {
        let idp = device_idp();
        let home = Home::new(&idp.issuer);
        let mut login = home.command();
        login.args(["login", "--device"]);
        if let Some(audience) = audience {
            login.env("CLAUDE_SSO_AUDIENCE", audience);
        }
        let out = login.output().unwrap();
        assert!(out.status.success(), "{audience:?}: {}", stderr(&out));
        let posts = idp.posts.lock().unwrap().clone();
        let (path, body) = &posts[0];
        assert_eq!(path, "/device");
        assert_eq!(body.contains("audience=https%3A%2F%2Fclaude-gw.example.com"), want, "{audience:?}: {body}");
        assert_eq!(body.contains("audience"), want, "{audience:?}: {body}");
    }
}

#[test]
fn a_browser_that_does_not_start_fails_at_once_when_nobody_watches() {
    // Run by Claude Code (pipes) with a browser command that cannot start: nobody sees the
    // address or the note, so waiting the login timeout would only delay the message.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "t", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    let started = std::time::Instant::now();
    let out = home
        .command()
        .env("CLAUDE_SSO_BROWSER", home.dir.join("no-such-browser"))
        .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "12")
        .output()
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(6), "took {:?}", started.elapsed());
    assert_fails(&out);
    let err = stderr(&out);
    assert!(err.starts_with("claude-sso-signin: not signed in to "), "the message comes first: {err}");
    assert!(err.contains("could not open a browser") && err.contains("no-such-browser"), "{err}");
    assert!(err.len() < 500, "Claude Code shows the first 500 characters: {err}");
    assert_eq!(idp.posts(), 0);
}

#[cfg(unix)]
#[test]
fn a_browser_command_that_exits_with_an_error_fails_at_once_when_nobody_watches() {
    // Run by Claude Code (pipes) with a browser opener that starts but fails at once: xdg-open
    // with no browser configured (WSL with WSLg sets DISPLAY and WAYLAND_DISPLAY), `open` with no
    // handler. Nobody sees the address; the helper does not wait out the login timeout in
    // silence, as it does not for an opener that cannot be started.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "t", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    let opener = home.dir.join("failing-opener.sh");
    std::fs::write(&opener, "#!/bin/sh\necho 'xdg-open: no method available for opening' >&2\nexit 3\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let started = std::time::Instant::now();
    let out = home
        .command()
        .env("CLAUDE_SSO_BROWSER", &opener)
        .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "15")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_fails(&out);
    assert!(
        took < std::time::Duration::from_secs(6),
        "waited {took:?} for a sign-in nobody could see (the opener had exited 3): {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.starts_with("claude-sso-signin: not signed in to "), "the message comes first: {err}");
    assert!(err.contains("could not open a browser") && err.contains("exit status: 3"), "{err}");
    assert_eq!(idp.posts(), 0);
}

/// A throwaway CA and a certificate it issued for 127.0.0.1: the CA's PEM, and a TLS server
/// configuration presenting that certificate.
fn company_ca() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Example Corp test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (ca.pem(), Arc::new(config))
}

#[test]
fn an_idp_behind_a_company_ca_is_trusted_through_ssl_cert_file() {
    let (ca_pem, tls) = company_ca();
    let idp = FakeIdp::listen(Some(tls), |_, _| {
        (200, serde_json::json!({"access_token": "via-company-ca", "expires_in": 3600}).to_string())
    });
    let home = Home::new(&idp.issuer);
    home.save_stale();
    // Without the CA: the certificate is not trusted (and nothing is sent to the IdP).
    let out = home.run();
    assert_fails(&out);
    let err = stderr(&out);
    assert!(err.contains("cannot reach the identity provider") && err.contains("UnknownIssuer"), "{err}");
    assert_eq!(idp.posts(), 0);
    // With SSL_CERT_FILE naming the CA (as OpenSSL and curl take it), the refresh goes through.
    let ca_file = home.dir.join("company-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let out = home.command().env("SSL_CERT_FILE", &ca_file).output().unwrap();
    assert_hands_out(&out, "via-company-ca");
    assert_eq!(idp.posts(), 1);
}

/// A device authorization answer, polled every second.
fn device_answer() -> (u16, String) {
    (
        200,
        serde_json::json!({"device_code": "dc", "user_code": "AB-CD", "verification_uri": "http://x/device", "interval": 1})
            .to_string(),
    )
}

/// The form bodies of the refresh requests the fake received, in order.
fn refreshes(idp: &FakeIdp) -> Vec<String> {
    let posts = idp.posts.lock().unwrap();
    posts.iter().filter(|(_, body)| body.contains("grant_type=refresh_token")).map(|(_, body)| body.clone()).collect()
}

#[test]
fn a_refresh_sends_back_the_scope_granted_as_entra_id_requires() {
    // Entra ID, one app registration exposing its own API (CLAUDE_SSO_SCOPES="openid
    // offline_access api://claude-code/access"): the token answer says `scope`, and a refresh
    // without `scope` is refused with AADSTS90009. Sign-in worked, but every developer had to
    // sign in again as soon as the first access token ran out.
    const AADSTS90009: &str = r#"{"error":"invalid_request","error_description":"AADSTS90009: Application is requesting a token for itself."}"#;
    let idp = FakeIdp::start(|path, body| match path {
        "/device" => device_answer(),
        _ if body.contains("grant_type=refresh_token") && !body.contains("scope=") => (400, AADSTS90009.to_owned()),
        _ if body.contains("grant_type=refresh_token") => (
            200,
            serde_json::json!({"access_token": "new-token", "expires_in": 3600, "refresh_token": "rt3"}).to_string(),
        ),
        _ => (
            200,
            serde_json::json!({"access_token": "device-token", "expires_in": 3600, "refresh_token": "rt2",
                               "scope": "api://claude-code/access"})
            .to_string(),
        ),
    });
    let home = Home::new(&idp.issuer);
    let scopes = "openid offline_access api://claude-code/access";
    let login = home.command().env("CLAUDE_SSO_SCOPES", scopes).args(["login", "--device"]).output().unwrap();
    assert!(login.status.success(), "{}", stderr(&login));
    assert_eq!(home.cached()["scope"], "api://claude-code/access");
    // An hour later: the access token is about to expire.
    let mut saved = home.cached();
    saved["expires_at"] = now().saturating_add(10).into();
    home.write(saved);
    let out = home.command().env("CLAUDE_SSO_SCOPES", scopes).output().unwrap();
    assert_hands_out(&out, "new-token");
    let sent = refreshes(&idp);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains("&scope=api%3A%2F%2Fclaude-code%2Faccess"), "{}", sent[0]);
    assert_eq!(home.cached()["scope"], "api://claude-code/access", "kept when the refresh answer does not say");
    assert_eq!(home.cached()["refresh_token"], "rt3");
}

#[test]
fn a_refresh_sends_no_scope_when_none_was_ever_granted() {
    let idp = FakeIdp::token(serde_json::json!({"access_token": "new-token", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    home.save_stale();
    assert_hands_out(&home.run(), "new-token");
    let sent = refreshes(&idp);
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].contains("scope"), "{}", sent[0]);
}

#[test]
fn a_rejected_refresh_answer_still_keeps_the_rotated_refresh_token() {
    // With rotation and reuse detection (oidc-provider, Okta, Auth0), the refresh token sent is
    // spent once the IdP answers: presenting it again revokes the whole sign-in. An answer the
    // helper rejects for its access token or its lifetime still carries the new one.
    for (name, answer) in [
        ("an empty access token", serde_json::json!({"access_token": "", "expires_in": 3600, "refresh_token": "rt2"})),
        (
            "expires_in that is no number",
            serde_json::json!({"access_token": "t", "expires_in": "3600s", "refresh_token": "rt2"}),
        ),
    ] {
        let idp = FakeIdp::token(answer);
        let home = Home::new(&idp.issuer);
        home.save_stale();
        let out = home.run();
        assert_fails(&out);
        assert_eq!(home.cached()["refresh_token"], "rt2", "{name}: {}", stderr(&out));
        assert_eq!(home.cached()["access_token"], "old-token", "{name}");
        // The next run presents the new refresh token, not the spent one.
        assert_fails(&home.run());
        let sent = refreshes(&idp);
        assert_eq!(sent.len(), 2, "{name}");
        assert!(sent[1].contains("refresh_token=rt2"), "{name}: {}", sent[1]);
    }
}

#[test]
fn the_max_token_age_counts_on_this_computers_clock() {
    // The laptop clock is 2 h ahead of the IdP's. The gateway refuses tokens older than an hour,
    // counted on its own clock from `iat`; the helper counts the hour from when the token
    // arrived, by its clock. Comparing the IdP's `iat` with this clock made every token look two
    // hours past the limit: each run refreshed (rotating the refresh token), and during an outage
    // the saved token was never used.
    let idp = skewed_idp(-7200);
    let home = Home::new(&idp.issuer);
    home.save_stale();
    let run = || home.command().env("CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS", "3600").output().unwrap();
    let first = run();
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run();
    assert_eq!(second.stdout, first.stdout, "{}", stderr(&second));
    assert_eq!(idp.posts(), 1, "the token received just now is fresh: {}", stderr(&second));
}

#[test]
fn settings_as_people_write_them_do_not_fail_every_run() {
    // `1`, `TRUE` or `yes` for the switch, and an empty number, in the settings' `env`: each was a
    // usage error (exit 2) on every run, and so on every request of Claude Code.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "renewed", "expires_in": 7200}));
    let home = Home::new(&idp.issuer);
    home.save("good-for-50-minutes", now() + 3000, "rt");
    let settings = [
        ("CLAUDE_SSO_ALLOW_INSECURE_HTTP", "1"),
        ("CLAUDE_SSO_ALLOW_INSECURE_HTTP", "TRUE"),
        ("CLAUDE_SSO_ALLOW_INSECURE_HTTP", "yes"),
        ("CLAUDE_SSO_ALLOW_INSECURE_HTTP", "0"),
        ("CLAUDE_SSO_ALLOW_INSECURE_HTTP", ""),
        ("CLAUDE_SSO_MARGIN_SECONDS", ""),
        ("CLAUDE_SSO_REDIRECT_PORT", ""),
        ("CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS", " "),
        ("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", ""),
    ];
    for (key, value) in settings {
        let out = home.command().env(key, value).output().unwrap();
        assert_hands_out(&out, "good-for-50-minutes");
    }
    assert_eq!(idp.posts(), 0);
    // What they mean: a plain-http issuer on the network is allowed by `1`, and only then.
    let insecure = Home::new("http://192.0.2.1:9");
    for value in ["0", "false", "No", "off", ""] {
        let out = insecure.command().env("CLAUDE_SSO_ALLOW_INSECURE_HTTP", value).output().unwrap();
        assert!(stderr(&out).contains("plain http:// on the network"), "{value:?}: {}", stderr(&out));
    }
    // 0.0.0.0 is not on this computer by name, and connecting to it is refused at once.
    let allowed = Home::new("http://0.0.0.0:1");
    for value in ["1", "TRUE", "yes"] {
        let out = allowed.command().env("CLAUDE_SSO_ALLOW_INSECURE_HTTP", value).output().unwrap();
        assert_fails(&out);
        assert!(!stderr(&out).contains("plain http://"), "{value:?}: {}", stderr(&out));
    }
    // A typo switches nothing on: it is refused, naming the value.
    let out = allowed.command().env("CLAUDE_SSO_ALLOW_INSECURE_HTTP", "flase").output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(stderr(&out).contains("flase"), "{}", stderr(&out));
}

/// An issuer that accepts connections and never answers (a VPN gone, a firewall that drops
/// packets after the handshake): connections are held open until the test ends.
fn blackhole_issuer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    issuer
}

#[test]
fn an_idp_that_never_answers_costs_seconds_with_a_saved_token_to_fall_back_on() {
    // 240 s left: not fresh (under helper TTL + margin), so the run tries to refresh, but the
    // gateway still takes it. Each run waited the full 30 s for the IdP; `claude -p` waits for
    // its helper.
    let home = Home::new(&blackhole_issuer());
    home.save("still-good", now() + 240, "rt");
    let started = std::time::Instant::now();
    let out = home.run();
    let took = started.elapsed();
    assert_hands_out(&out, "still-good");
    assert!(took < std::time::Duration::from_secs(12), "took {took:?}: {}", stderr(&out));
    assert!(stderr(&out).contains("using the saved token"), "{}", stderr(&out));
}

#[test]
fn a_token_asked_for_again_at_once_is_renewed_once() {
    // The gateway refuses a token the helper holds fresh (its max token age set lower than the
    // helper was told, a signing key withdrawn). Claude Code re-runs the helper at once; the same
    // token again would be refused again, 13 times over four minutes, then sent to `login`.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "new-token", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    let saved = |home: &Home| {
        home.write(serde_json::json!({
            "issuer": home.issuer, "client_id": "claude-code", "access_token": "old-token",
            "expires_at": now() + 3000, "received_at": now() - 600, "refresh_token": "rt",
        }));
    };
    saved(&home);
    assert_hands_out(&home.run(), "old-token");
    assert_eq!(idp.posts(), 0);
    let out = home.run();
    assert_hands_out(&out, "new-token");
    assert!(stderr(&out).contains("asked for again; renewing it"), "{}", stderr(&out));
    assert_eq!(idp.posts(), 1);
    // The new token, just received, is not renewed for being asked for again.
    assert_hands_out(&home.run(), "new-token");
    assert_eq!(idp.posts(), 1);
    // Once per token: a renewal that met an outage is not tried again with each run.
    let down = FakeIdp::start(|_, _| (503, "<html>maintenance</html>".to_owned()));
    let home = Home::new(&down.issuer);
    saved(&home);
    for _ in 0..4 {
        assert_hands_out(&home.run(), "old-token");
    }
    assert_eq!(down.posts(), 1);
    // A renewal the IdP refuses (parallel starts of Claude Code ask for the token moments apart
    // too) leaves the token that is still good, never a new sign-in.
    let refusing = FakeIdp::start(|_, _| (400, r#"{"error":"invalid_grant"}"#.to_owned()));
    let home = Home::new(&refusing.issuer);
    saved(&home);
    assert_hands_out(&home.run(), "old-token");
    let out = home.run();
    assert_hands_out(&out, "old-token");
    assert!(stderr(&out).contains("could not renew it"), "{}", stderr(&out));
    assert_eq!(refusing.posts(), 1);
}

#[test]
fn a_sign_in_holding_the_cache_does_not_hold_up_a_token_the_gateway_still_takes() {
    // A `login` in another terminal waits for its person with the lock held; the saved token has
    // 240 s left (not fresh, so the run wants the lock to renew it, but the gateway takes it).
    let idp = FakeIdp::token(serde_json::json!({"access_token": "renewed", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    home.save("good-for-4-minutes", now() + 240, "rt");
    let lock_path = home.cache_path().with_extension("lock");
    let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).unwrap();
    held.lock().unwrap();
    let started = std::time::Instant::now();
    let out = home.run();
    let took = started.elapsed();
    assert_hands_out(&out, "good-for-4-minutes");
    assert!(stderr(&out).contains("another sign-in holds the token cache"), "{}", stderr(&out));
    assert!(took < std::time::Duration::from_secs(12), "waited {took:?} for the sign-in holding the cache");
    assert_eq!(idp.posts(), 0, "nothing renewed behind the other sign-in's back");
    // Once it is done, the next run renews as usual.
    drop(held);
    assert_hands_out(&home.run(), "renewed");
}

#[test]
fn a_terminal_run_takes_the_organizations_managed_settings_before_the_persons() {
    // The rollout put the helper's `env` in Claude Code's managed settings (MDM): Claude Code
    // passes it to the helper, but `login` from a terminal found no issuer ("no issuer
    // configured"), or signed in to another issuer the person's own settings still named.
    let idp = FakeIdp::token(serde_json::json!({"access_token": "renewed", "expires_in": 3600}));
    let home = Home::new(&idp.issuer);
    home.save("saved-for-this-issuer", now() + 3000, "rt");
    let managed = home.dir.join("managed-settings.json");
    std::fs::write(&managed, serde_json::json!({"env": {"CLAUDE_SSO_ISSUER": idp.issuer}}).to_string()).unwrap();
    let person = home.dir.join(".claude/settings.json");
    std::fs::create_dir_all(person.parent().unwrap()).unwrap();
    std::fs::write(
        &person,
        serde_json::json!({"env": {"CLAUDE_SSO_ISSUER": "https://old-idp.example.com"}}).to_string(),
    )
    .unwrap();
    let out = home.command().env_remove("CLAUDE_SSO_ISSUER").output().unwrap();
    assert_hands_out(&out, "saved-for-this-issuer");
    // What the environment says (Claude Code's own env block) still comes first.
    let out = home.command().env("CLAUDE_SSO_ISSUER", "http://127.0.0.1:9").output().unwrap();
    assert_fails(&out);
}

#[test]
fn an_iat_dated_back_by_the_idp_counts_toward_the_gateways_age_limit() {
    // Entra ID dates `iat` five minutes back (`exp - iat` is five minutes over `expires_in`). The
    // gateway counts a token's age from `iat`: with a 1,000 s age limit it refuses the token 700 s
    // after it arrived, so the helper must renew it by then, and say nothing of clocks.
    let idp = FakeIdp::start(|_, _| {
        let t = now();
        let token = jwt(serde_json::json!({"sub": "a", "iat": t - 300, "exp": t + 3600}));
        (200, serde_json::json!({"access_token": token, "expires_in": 3600, "refresh_token": "rt2"}).to_string())
    });
    let home = Home::new(&idp.issuer);
    home.save_stale();
    let out = home.command().env("CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS", "1000").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let left = home.cached()["expires_at"].as_u64().unwrap() - now();
    assert!((690..=700).contains(&left), "believed {left} s left; the gateway takes it 700 s");
    assert!(!stderr(&out).contains("clock"), "{}", stderr(&out));
}
