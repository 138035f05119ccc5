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

#[test]
fn device_flow() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    let mut child = home.command(&idp).arg("--device").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let code = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no user code printed");
        if let Some(rest) = line.split("enter the code ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    let approve = Command::new("node")
        .arg(repo().join("demo/idp/login.mjs"))
        .args(["--issuer", &idp.issuer, "--device", &code, "--user", "bob"])
        .output()
        .unwrap();
    assert!(approve.status.success(), "{}", String::from_utf8_lossy(&approve.stderr));
    let out = child.wait_with_output().unwrap();
    assert_eq!(claims(&token_of(&out))["sub"], "bob");
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
fn expired_refresh_token_falls_back_to_login() {
    let idp = Idp::start(&[("IDP_ACCESS_TOKEN_TTL", "400"), ("IDP_REFRESH_TOKEN_TTL", "1")]);
    let home = Home::new("alice");
    let run = || home.command(&idp).env("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "350000").output().unwrap();
    token_of(&run());
    std::thread::sleep(Duration::from_millis(2100));
    let out = run();
    token_of(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("silent refresh failed"));
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

#[test]
fn logout_revokes_and_deletes_the_cache() {
    let idp = Idp::start(&[]);
    let home = Home::new("alice");
    token_of(&home.run(&idp, &[]));
    let out = home.run(&idp, &["logout"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signed out"));
    let left: Vec<_> = std::fs::read_dir(home.dir.join("cache"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(left.is_empty());
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
    assert!(home.run(&idp, &["uninstall"]).status.success());
    let restored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(restored, original);
}
