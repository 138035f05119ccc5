//! The sign-in helper against a real OpenID Provider (`oidc-provider`, demo/idp/server.mjs):
//! the browser and device flows driven over HTTP as a person would, refresh, fallback to login,
//! refusal, concurrency, cache permissions, and `setup`/`uninstall`.

// This whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const HELPER: &str = env!("CARGO_BIN_EXE_claude-sso-signin");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The real OP on a free port, stopped on drop.
struct Idp {
    child: Child,
    issuer: String,
}

impl Idp {
    fn start(env: &[(&str, &str)]) -> Idp {
        assert!(
            repo().join("node_modules/oidc-provider").exists(),
            "node_modules is missing: run `npm ci` (make does)"
        );
        let mut child = Command::new("node")
            .arg(repo().join("demo/idp/server.mjs"))
            .args(["--port", "0"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let issuer = line.trim().strip_prefix("ready ").expect("IdP did not start").to_owned();
        Idp { child, issuer }
    }

    fn logins(&self) -> u64 {
        let out = Command::new("curl").args(["-s", &format!("{}/__demo/logins", self.issuer)]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["logins"].as_u64().unwrap()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A private working directory with a "browser" that signs in as `user`.
struct Home {
    dir: PathBuf,
}

impl Home {
    fn new(user: &str) -> Home {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("csg-signin-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let browser = dir.join("browser.sh");
        let login = repo().join("demo/idp/login.mjs");
        std::fs::write(&browser, format!("#!/bin/sh\nexec node '{}' --browse \"$1\" --user {user}\n", login.display()))
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Home { dir }
    }

    fn command(&self, idp: &Idp) -> Command {
        let mut c = Command::new(HELPER);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("CLAUDE_SSO_ISSUER", &idp.issuer)
            .env("CLAUDE_SSO_CACHE_DIR", self.dir.join("cache"))
            .env("CLAUDE_SSO_MANAGED_SETTINGS", self.dir.join("managed-settings.json"))
            .env("CLAUDE_SSO_BROWSER", self.dir.join("browser.sh"))
            .env("CLAUDE_SSO_REDIRECT_PORT", "0")
            .env("CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", "30");
        c
    }

    fn run(&self, idp: &Idp, args: &[&str]) -> Output {
        self.command(idp).args(args).output().unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn token_of(out: &Output) -> String {
    assert!(out.status.success(), "helper failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout must hold the token and nothing else: {stdout:?}");
    stdout.trim().to_owned()
}

/// A sign-in under way in a terminal (`login`, waiting for the person up to its timeout) holds the
/// cache's lock; Claude Code's runs of the helper hand out the fresh token saved meanwhile at once.
#[test]
fn a_login_under_way_does_not_hold_up_a_fresh_token() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let first = token_of(&home.run(&idp, &[]));
    // A browser that opens nothing: the login waits for a redirect that never comes.
    let opened = home.dir.join("opened");
    let idle = home.dir.join("idle.sh");
    std::fs::write(&idle, format!("#!/bin/sh\ntouch '{}'\n", opened.display())).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&idle, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut login = home
        .command(&idp)
        .env("CLAUDE_SSO_BROWSER", &idle)
        .arg("login")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !opened.exists() {
        assert!(std::time::Instant::now() < deadline, "the login never opened its browser");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = std::time::Instant::now();
    let again = token_of(&home.run(&idp, &[]));
    let took = started.elapsed();
    let _ = login.kill();
    let _ = login.wait();
    assert_eq!(again, first);
    assert!(took < Duration::from_secs(5), "waited {took:?} for the login under way");
}

#[test]
fn browser_login_with_pkce_then_cached() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let first = token_of(&home.run(&idp, &[]));
    let c = claims(&first);
    assert_eq!((c["sub"].as_str(), c["aud"].as_str()), (Some("alice"), Some("claude-sso-gateway")));
    assert_eq!(idp.logins(), 1);
    let second = token_of(&home.run(&idp, &[]));
    assert_eq!(first, second, "a fresh cached token is reused");
    assert_eq!(idp.logins(), 1);

    let status = home.run(&idp, &["status"]);
    let text = String::from_utf8_lossy(&status.stderr);
    assert!(status.stdout.is_empty(), "status prints no token");
    assert!(text.contains("as alice") && text.contains("claude-standard-users"), "{text}");
}

#[cfg(unix)]
#[test]
fn cache_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    token_of(&home.run(&idp, &[]));
    let dir = home.dir.join("cache");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.iter().any(|p| p.extension().is_some_and(|e| e == "json")));
    for f in files {
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
}

/// Runs `login --device` (what a person on SSH types), approves the code it shows as `user`
/// would on another device, and returns what `login` printed.
fn device_login(mut login: Command, idp: &Idp, user: &str) -> Output {
    let mut child = login.args(["login", "--device"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut shown = String::new();
    let code = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no user code printed");
        shown.push_str(&line);
        if let Some(rest) = line.split("enter the code ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    assert!(shown.contains(&format!("visit {}/device", idp.issuer)), "{shown}");
    let approve = Command::new("node")
        .arg(repo().join("demo/idp/login.mjs"))
        .args(["--issuer", &idp.issuer, "--device", &code, "--user", user])
        .output()
        .unwrap();
    assert!(approve.status.success(), "{}", String::from_utf8_lossy(&approve.stderr));
    std::io::Read::read_to_string(&mut stderr, &mut shown).unwrap();
    let out = child.wait_with_output().unwrap();
    Output { stderr: shown.into_bytes(), ..out }
}

#[test]
fn device_flow() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let out = device_login(home.command(&idp), &idp, "bob");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "login prints no token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("as bob"));
    assert_eq!(claims(&token_of(&home.run(&idp, &[])))["sub"], "bob");
    assert_eq!(idp.logins(), 1);
}

#[test]
fn headless_helper_fails_fast_with_what_to_run_then_works_after_device_login() {
    // As on SSH: no display, no browser setting, and Claude Code's pipes for stdin/stdout/stderr.
    // The issuer comes only from Claude Code's settings (written by `setup`), as for a person
    // who then types the command from the message into a terminal.
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let helper = || {
        let mut c = home.command(&idp);
        c.env_remove("CLAUDE_SSO_BROWSER").env_remove("CLAUDE_SSO_ISSUER").stdin(Stdio::null());
        c
    };
    let setup = home.run(&idp, &["setup", "--gateway-url", "https://gw.example.com"]);
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));

    let started = std::time::Instant::now();
    let out = helper().output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout for Claude Code to take as a key");
    let err = String::from_utf8_lossy(&out.stderr);
    // The helper names itself by its resolved path (a `target` that is a symlink, as in CI).
    let exe = std::fs::canonicalize(HELPER).unwrap();
    let exe = exe.display();
    let want = format!(
        "claude-sso-signin: not signed in to {}.\nRun `{exe} login` in a terminal \
                        (on SSH or without a browser: `{exe} login --device`), then try again.\n",
        idp.issuer
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(err.len() < 500, "Claude Code shows the first 500 characters");
    assert_eq!(idp.logins(), 0, "no sign-in was started");

    let login = device_login(helper(), &idp, "alice");
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    assert_eq!(claims(&token_of(&helper().output().unwrap()))["sub"], "alice");
    assert_eq!(idp.logins(), 1);
}

#[test]
fn headless_helper_with_an_expired_sign_in_and_no_refresh_fails_fast() {
    // Tokens live 400 s but Claude Code wants 350 + 60; the refresh token is gone after 1 s.
    let idp = Idp::start(&[("IDP_ACCESS_TOKEN_TTL", "400"), ("IDP_REFRESH_TOKEN_TTL", "1")]);
    let home = Home::new("alice");
    token_of(&home.run(&idp, &[]));
    std::thread::sleep(Duration::from_millis(2100));
    let out = home
        .command(&idp)
        .env("CLAUDE_SSO_BROWSER", "none")
        .env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "350000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "the cached token, too close to expiry, was handed out");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed in to") && err.contains("could not be renewed"), "{err}");
    assert_eq!(idp.logins(), 1);
}

#[test]
fn a_token_within_the_margin_of_expiry_is_never_handed_out() {
    let idp = Idp::start(&[("IDP_ACCESS_TOKEN_TTL", "30")]);
    let home = Home::new("alice");
    let out = home.run(&idp, &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("within the 60 s margin"), "{err}");
}

#[test]
fn silent_refresh_before_the_helper_ttl_runs_out() {
    // Tokens live 400 s; Claude Code reuses one for 350 s plus a 60 s margin: every run refreshes.
    let idp = Idp::start(&[("IDP_ACCESS_TOKEN_TTL", "400")]);
    let home = Home::new("alice");
    let run = || home.command(&idp).env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "350000").output().unwrap();
    let first = token_of(&run());
    std::thread::sleep(Duration::from_millis(1100));
    let second = token_of(&run());
    assert_ne!(first, second, "a token too close to expiry was handed out again");
    assert_eq!(idp.logins(), 1, "refreshed silently, no second sign-in");
}

#[test]
fn a_token_is_renewed_before_the_gateways_max_token_age() {
    // Tokens live an hour, but the gateway refuses them 400 s after they were issued: with the
    // gateway's limit given, the helper renews before it (else it would hand out the refused
    // token again on each of Claude Code's retries).
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let run = |age: Option<&str>| {
        let mut c = home.command(&idp);
        c.env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "350000");
        if let Some(age) = age {
            c.env("CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS", age);
        }
        c.output().unwrap()
    };
    let first = token_of(&run(None));
    assert_eq!(token_of(&run(None)), first, "without the limit the hour-long token is reused");
    let renewed = token_of(&run(Some("400")));
    std::thread::sleep(Duration::from_millis(1100));
    let again = token_of(&run(Some("400")));
    assert_ne!(renewed, again, "a token within the helper TTL of the gateway's age limit was handed out again");
    assert_eq!(idp.logins(), 1, "renewed silently, no second sign-in");
}

#[test]
fn expired_refresh_token_falls_back_to_login() {
    let idp = Idp::start(&[("IDP_ACCESS_TOKEN_TTL", "400"), ("IDP_REFRESH_TOKEN_TTL", "1")]);
    let home = Home::new("alice");
    let run = || home.command(&idp).env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "350000").output().unwrap();
    token_of(&run());
    std::thread::sleep(Duration::from_millis(2100));
    let out = run();
    token_of(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the saved sign-in could not be renewed"));
    assert_eq!(idp.logins(), 2);
}

#[test]
fn refused_login_is_a_clear_error() {
    let idp = Idp::start(&[]);
    let home = Home::new("mallory");
    let out = home.run(&idp, &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sign-in failed") && err.contains("access_denied"), "{err}");
}

#[test]
fn missing_issuer_says_what_to_do() {
    let out = Command::new(HELPER).env_clear().env("HOME", std::env::temp_dir()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set CLAUDE_SSO_ISSUER"));
}

#[test]
fn ten_parallel_runs_make_one_login() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let children: Vec<Child> =
        (0..10).map(|_| home.command(&idp).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()).collect();
    let tokens: Vec<String> = children.into_iter().map(|c| token_of(&c.wait_with_output().unwrap())).collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(idp.logins(), 1);
}

/// Uses a refresh token at the IdP's token endpoint; returns the OAuth `error`, if any.
fn refresh_error(idp: &Idp, refresh_token: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", &format!("{}/token", idp.issuer), "-d", "grant_type=refresh_token", "-d", "client_id=claude-code"])
        .args(["--data-urlencode", &format!("refresh_token={refresh_token}")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["error"].as_str().map(str::to_owned)
}

#[test]
fn logout_revokes_the_refresh_token_and_deletes_the_cache() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    token_of(&home.run(&idp, &[]));
    let cache_files = || -> Vec<PathBuf> {
        std::fs::read_dir(home.dir.join("cache"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()
    };
    let [file] = &cache_files()[..] else { panic!("one cache file") };
    let cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let refresh_token = cached["refresh_token"].as_str().unwrap().to_owned();

    let out = home.run(&idp, &["logout"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    for said in ["signed out of", "revoked the refresh token", "the access token already issued is not revoked"] {
        assert!(err.contains(said), "{said:?} missing from {err}");
    }
    assert!(cache_files().is_empty());
    assert_eq!(refresh_error(&idp, &refresh_token).as_deref(), Some("invalid_grant"), "refresh token still works");
    token_of(&home.run(&idp, &[]));
    assert_eq!(idp.logins(), 2, "signed in again after logout");
}

#[test]
fn setup_and_uninstall_keep_other_settings() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let settings = home.dir.join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let original = serde_json::json!({"theme": "dark", "env": {"HTTPS_PROXY": "http://proxy:3128"}});
    std::fs::write(&settings, original.to_string()).unwrap();
    let out = home.run(&idp, &["setup", "--gateway-url", "https://gw.example.com"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merged: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    let helper = merged["apiKeyHelper"].as_str().unwrap();
    assert!(Path::new(helper).is_absolute() && Path::new(helper).exists(), "{helper}");
    assert_eq!(merged["env"]["ANTHROPIC_BASE_URL"], "https://gw.example.com");
    assert_eq!(merged["env"]["ANTHROPIC_DEFAULT_OPUS_MODEL"], "claude-opus-4-7");
    assert_eq!(merged["env"]["CLAUDE_SSO_ISSUER"], idp.issuer.as_str());
    assert_eq!(merged["env"]["HTTPS_PROXY"], "http://proxy:3128");
    // What setup is told besides the issuer reaches the helper Claude Code runs (an Auth0
    // audience was dropped, and the helper then asked for tokens without it).
    let out = home.run(
        &idp,
        &["setup", "--gateway-url", "https://gw.example.com", "--audience", "api://gw", "--redirect-port", "0"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merged: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(merged["env"]["CLAUDE_SSO_AUDIENCE"], "api://gw");
    assert_eq!(merged["env"]["CLAUDE_SSO_REDIRECT_PORT"], "0");
    assert!(home.run(&idp, &["uninstall"]).status.success());
    let restored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(restored, original);
}

/// Sends `GET <target>` to the helper's loopback listener; returns the HTTP status.
fn get_status(url: &str) -> String {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn forged_callbacks_are_refused_and_the_sign_in_goes_on() {
    // Any local process, or a web page (<img src=http://127.0.0.1:8765/callback?...>), can send
    // the listener a request; only the redirect with this sign-in's state may end the wait.
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let opened = home.dir.join("opened.txt");
    let browser = home.dir.join("record.sh");
    std::fs::write(&browser, format!("#!/bin/sh\necho \"$1\" > '{}'\n", opened.display())).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let helper = home
        .command(&idp)
        .env("CLAUDE_SSO_BROWSER", &browser)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::read_to_string(&opened).ok().filter(|u| !u.trim().is_empty())
        })
        .expect("the helper opened no browser");
    let url = url.trim();
    let redirect =
        url.split("redirect_uri=").nth(1).unwrap().split('&').next().unwrap().replace("%3A", ":").replace("%2F", "/");
    for forged in ["?code=forged&state=forged", "?code=forged", "?error=access_denied&state=x", ""] {
        assert_eq!(get_status(&format!("{redirect}{forged}")), "400", "{forged}");
    }
    let browse = Command::new("node")
        .arg(repo().join("demo/idp/login.mjs"))
        .args(["--browse", url, "--user", "alice"])
        .output()
        .unwrap();
    assert!(browse.status.success(), "{}", String::from_utf8_lossy(&browse.stderr));
    let out = helper.wait_with_output().unwrap();
    assert_eq!(claims(&token_of(&out))["sub"], "alice");
    assert_eq!(idp.logins(), 1);
}
