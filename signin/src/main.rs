//! claude-sso-signin: Claude Code's `apiKeyHelper`. Prints a valid access token from the
//! company's OpenID Provider on stdout and nothing else; every message goes to stderr.

mod cache;
mod claims;
mod flow;
mod login;
mod oidc;
mod pkce;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use cache::{CacheFile, Cached, Requested};
use flow::{SignIn, Situation};
use login::{Browser, BrowserLogin, LoginError};
use oidc::{Client, OidcError, Revocation, TokenError, TokenResponse};

#[derive(Parser)]
#[command(
    name = "claude-sso-signin",
    version,
    about = "Sign in with your company's identity provider and print an access token for Claude Code"
)]
struct Cli {
    #[command(flatten)]
    idp: Idp,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// The scopes asked for unless told otherwise.
const DEFAULT_SCOPES: &str = "openid email profile offline_access";
/// The loopback port of the browser redirect unless told otherwise.
const DEFAULT_REDIRECT_PORT: u16 = 8765;
/// The extra life of a handed-out token unless told otherwise.
const DEFAULT_MARGIN_SECONDS: u64 = 60;

#[derive(Args)]
struct Idp {
    /// OpenID Provider issuer URL (discovery is <issuer>/.well-known/openid-configuration).
    #[arg(long, env = "CLAUDE_SSO_ISSUER", global = true)]
    issuer: Option<String>,
    /// OAuth client id registered for Claude Code (a public client with PKCE).
    #[arg(long, env = "CLAUDE_SSO_CLIENT_ID", default_value = "claude-code", global = true)]
    client_id: String,
    /// Scopes to request.
    #[arg(long, env = "CLAUDE_SSO_SCOPES", default_value = DEFAULT_SCOPES, global = true)]
    scopes: String,
    /// Loopback port for the browser redirect (register http://127.0.0.1:<port>/callback; 0 = any free port).
    #[arg(long, env = "CLAUDE_SSO_REDIRECT_PORT", default_value_t = DEFAULT_REDIRECT_PORT, global = true)]
    redirect_port: u16,
    /// Extra `audience` parameter for IdPs that need one (Auth0).
    #[arg(long, env = "CLAUDE_SSO_AUDIENCE", global = true)]
    audience: Option<String>,
    /// Use the device authorization grant (chosen automatically when no browser can open).
    #[arg(long, global = true)]
    device: bool,
    /// Command that opens the sign-in URL, or `none` to only print it.
    #[arg(long, env = "CLAUDE_SSO_BROWSER", global = true)]
    browser: Option<String>,
    /// Where tokens are cached (default: <config dir>/claude-sso).
    #[arg(long, env = "CLAUDE_SSO_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// How long Claude Code reuses a token before re-running the helper.
    #[arg(long, env = "CLAUDE_CODE_API_KEY_HELPER_TTL_MS", default_value_t = DEFAULT_HELPER_TTL_MS,
          value_parser = helper_ttl_ms, global = true)]
    helper_ttl_ms: u64,
    /// Extra life a handed-out token must have beyond the helper TTL.
    #[arg(long, env = "CLAUDE_SSO_MARGIN_SECONDS", default_value_t = DEFAULT_MARGIN_SECONDS, global = true)]
    margin_seconds: u64,
    /// The gateway's `oidc.max_token_age_seconds`: a token is taken to expire that long after it
    /// was received (if sooner than its `exp`), so it is renewed before the gateway refuses it as
    /// too old (Claude Code would re-run the helper, get the same token, and retry for minutes).
    #[arg(long, env = "CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS", global = true)]
    max_token_age_seconds: Option<u64>,
    /// How long to wait for the person to finish signing in.
    #[arg(long, env = "CLAUDE_SSO_LOGIN_TIMEOUT_SECONDS", default_value_t = 300, global = true)]
    login_timeout_seconds: u64,
    /// Accept a plain http:// issuer that is not on this computer (sign-in codes and tokens then
    /// cross the network unencrypted).
    /// From the environment, `1`, `true`, `yes`, `on` (any case) is true; `0`, `false`, `no`, `off`
    /// or empty is false; anything else is refused rather than taken for either (a typo must not
    /// switch this on).
    #[arg(long, env = "CLAUDE_SSO_ALLOW_INSECURE_HTTP", value_parser = BoolishValueParser::new(), global = true)]
    allow_insecure_http: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a valid access token (the default). Run by Claude Code, where nobody sees a
    /// prompt, it never waits for a device code: it tells the person to run `login` instead.
    Token,
    /// Sign in now (in a browser, or with --device a code to enter on another device) and keep
    /// the tokens for Claude Code; prints no token.
    Login,
    /// Show who is signed in, their groups and the token's expiry (never the token).
    Status,
    /// Delete the saved sign-in and revoke its refresh token at the IdP (if it has a
    /// revocation endpoint). An access token already issued stays valid until it expires.
    Logout,
    /// Point Claude Code at the gateway: merge our keys into ~/.claude/settings.json.
    Setup(SetupArgs),
    /// Remove exactly the keys `setup` added.
    Uninstall {
        /// Claude Code settings file.
        #[arg(long)]
        settings: Option<PathBuf>,
    },
}

#[derive(Args)]
struct SetupArgs {
    /// The gateway's URL, e.g. https://claude-gw.example.com.
    #[arg(long, env = "CLAUDE_SSO_GATEWAY_URL")]
    gateway_url: String,
    /// Claude Code settings file.
    #[arg(long)]
    settings: Option<PathBuf>,
    /// ANTHROPIC_MODEL and ANTHROPIC_DEFAULT_SONNET_MODEL.
    #[arg(long, default_value = "claude-sonnet-4-6")]
    model: String,
    /// ANTHROPIC_DEFAULT_OPUS_MODEL.
    #[arg(long, default_value = "claude-opus-4-7")]
    opus_model: String,
    /// ANTHROPIC_DEFAULT_HAIKU_MODEL and ANTHROPIC_SMALL_FAST_MODEL.
    #[arg(long, default_value = "claude-haiku-4-5")]
    haiku_model: String,
    /// ANTHROPIC_DEFAULT_FABLE_MODEL (default: the `--model`), for subagents asking for `fable`.
    #[arg(long)]
    fable_model: Option<String>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("claude-sso-signin: {message}");
    ExitCode::FAILURE
}

/// Claude Code's settings file: `$CLAUDE_CONFIG_DIR/settings.json`, else `~/.claude/settings.json`.
fn claude_settings() -> Option<PathBuf> {
    std::env::var_os("CLAUDE_CONFIG_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".claude")))
        .map(|d| d.join("settings.json"))
}

/// Claude Code's managed settings file, which an organization deploys to every machine (MDM,
/// configuration management) and which outranks the person's: where Claude Code reads it on this
/// system, or `CLAUDE_SSO_MANAGED_SETTINGS`.
fn managed_settings() -> PathBuf {
    if let Some(path) = std::env::var_os("CLAUDE_SSO_MANAGED_SETTINGS").filter(|p| !blank(p)) {
        return PathBuf::from(path);
    }
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/ClaudeCode/managed-settings.json")
    } else if cfg!(windows) {
        PathBuf::from(r"C:\Program Files\ClaudeCode\managed-settings.json")
    } else {
        PathBuf::from("/etc/claude-code/managed-settings.json")
    }
}

fn main() -> ExitCode {
    // A person in a terminal lacks the `env` block Claude Code passes to the helper; take what
    // is not set from the settings files, the organization's managed ones first, so that
    // `claude-sso-signin login` signs in where the helper will look and the way it reaches the IdP.
    // This runs before any thread exists, so setting the environment is sound.
    for path in [Some(managed_settings()), claude_settings()].into_iter().flatten() {
        for (key, value) in settings::helper_env(&path) {
            if std::env::var_os(&key).is_none_or(|v| blank(&v)) {
                std::env::set_var(key, value);
            }
        }
    }
    // An empty setting means its default, as an empty CLAUDE_SSO_ISSUER means none: parsed as a
    // number, `CLAUDE_SSO_MARGIN_SECONDS=` in the settings' `env` failed every run with a usage
    // error, and every request of Claude Code with it.
    for (key, value) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("CLAUDE_SSO_")) && blank(&value) {
            std::env::remove_var(key);
        }
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        None | Some(Cmd::Token) => token(&cli.idp).map(|t| println!("{t}")),
        Some(Cmd::Login) => login(&cli.idp),
        Some(Cmd::Status) => status(&cli.idp),
        Some(Cmd::Logout) => logout(&cli.idp),
        Some(Cmd::Setup(args)) => setup(&cli.idp, args),
        Some(Cmd::Uninstall { settings }) => uninstall(settings.as_ref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

/// Whether an environment value is empty or only whitespace.
fn blank(value: &std::ffi::OsStr) -> bool {
    value.to_str().is_some_and(|v| v.trim().is_empty())
}

fn issuer(idp: &Idp) -> Result<&str, String> {
    let issuer = idp.issuer.as_deref().filter(|i| !i.is_empty()).ok_or_else(|| {
        "no issuer configured: set CLAUDE_SSO_ISSUER (or --issuer) to your identity provider's issuer URL".to_owned()
    })?;
    if oidc::plain_http_off_this_computer(issuer) && !idp.allow_insecure_http {
        return Err(format!(
            "the issuer {issuer} is plain http:// on the network: sign-in codes and tokens would cross it \
             unencrypted. Use its https:// address (or set CLAUDE_SSO_ALLOW_INSECURE_HTTP=true for a lab)"
        ));
    }
    Ok(issuer)
}

/// Claude Code's default helper TTL (5 minutes).
const DEFAULT_HELPER_TTL_MS: u64 = 300_000;

/// `CLAUDE_CODE_API_KEY_HELPER_TTL_MS` as Claude Code's own environment carries it: this helper
/// only reads it to renew early enough, so a value it cannot read (empty, `300000.0`, a typo)
/// means the default rather than a usage error that fails every run, and with it every request.
fn helper_ttl_ms(text: &str) -> Result<u64, std::convert::Infallible> {
    let text = text.trim();
    Ok(text
        .parse::<u64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().filter(|ms| ms.is_finite() && *ms >= 0.0).map(|ms| ms as u64))
        .unwrap_or(DEFAULT_HELPER_TTL_MS))
}

fn cache_file(idp: &Idp) -> Result<CacheFile, String> {
    let dir =
        idp.cache_dir.clone().or_else(CacheFile::default_dir).ok_or("no config directory; set CLAUDE_SSO_CACHE_DIR")?;
    Ok(CacheFile::new(&dir, issuer(idp)?, &idp.client_id))
}

/// The token run: [`token_from`], and a record of the token handed out (see
/// [`flow::renew_when_asked_again`]).
fn token(idp: &Idp) -> Result<String, String> {
    let cache = cache_file(idp)?;
    let token = token_from(idp, &cache)?;
    // Without the record a run asked again only hands out the same token, as before.
    let _ = cache.record_hand_out(&token, now());
    Ok(token)
}

/// The token flow: cached if fresh enough (without a refresh token: while usable), else
/// refreshed, else a new sign-in if someone can see it (see [`flow::choose`]); all but handing
/// out a fresh token under the cache lock, so that parallel runs make one sign-in. A fresh token
/// asked for again right after it was handed out is renewed once.
fn token_from(idp: &Idp, cache: &CacheFile) -> Result<String, String> {
    let issuer = issuer(idp)?;
    // The gateway's age limit counts from when the token arrived, by this computer's clock as
    // `now` is; a token saved before that was recorded counts from its `iat`, by the IdP's clock.
    // One that arrived by a clock since set back may be past its real expiry already: it counts
    // as expired (refreshed, else signed in again), never as still good for hours.
    let limit = |c: &Cached| match idp.max_token_age_seconds {
        _ if flow::clock_set_back(c.received_at, now()) => 0,
        Some(age) if c.received_at != 0 => c.expires_at.min(c.received_at.saturating_add(age)),
        Some(age) => {
            claims::issued_at(&c.access_token).map_or(c.expires_at, |iat| c.expires_at.min(iat.saturating_add(age)))
        }
        None => c.expires_at,
    };
    let fresh = |c: &Cached| flow::fresh_enough(limit(c), now(), idp.helper_ttl_ms, idp.margin_seconds);
    // The gateway still takes it (more than the margin left).
    let usable = |c: &Cached| flow::usable(limit(c), now(), idp.margin_seconds);
    let asked_again = |c: &Cached| {
        let last = cache.last_hand_out();
        c.refresh_token.is_some()
            && flow::renew_when_asked_again(
                last.handed_out_at(&c.access_token),
                last.renewed(&c.access_token),
                c.received_at,
                now(),
            )
    };
    let load = || cache.load().filter(|c| c.issuer == issuer && c.client_id == idp.client_id);
    // One made for another audience or other scopes is set aside, not renewed: a refresh would
    // keep its grant's. The sign-in that replaces it overwrites it.
    let asked = Requested::new(idp.audience.as_deref(), &idp.scopes);
    // A fresh token is handed out without the lock (the file is replaced whole, by a rename): a
    // `login` in a terminal holds the lock until the person has signed in, up to its timeout, and
    // Claude Code's runs of the helper waited for it with a good token saved.
    if let Some(c) = load().filter(|c| c.made_for(&asked) && fresh(c) && !asked_again(c)) {
        return Ok(c.access_token);
    }
    // Another run holds the lock while it renews the token (a second or two) or while a `login`
    // waits for its person (minutes). A saved token the gateway still takes is handed out after
    // a short wait; without one, the run waits long enough for a renewal, never for a person.
    let usable_saved = || load().filter(|c| c.made_for(&asked) && usable(c));
    let wait = if usable_saved().is_some() { LOCK_WAIT_WITH_A_TOKEN } else { LOCK_WAIT };
    let locked = cache.lock_within(wait);
    let _lock = match locked.map_err(|e| format!("cannot lock the token cache in {}: {e}", cache.dir.display()))? {
        Some(lock) => lock,
        None => {
            if let Some(c) = usable_saved() {
                eprintln!(
                    "claude-sso-signin: note: another sign-in holds the token cache ({}); handing out the saved token, which is still good",
                    cache.lock_path().display()
                );
                return Ok(c.access_token);
            }
            return Err(format!(
                "another sign-in or renewal is under way (it holds {}): finish it (`claude-sso-signin login` in another terminal?), then try again",
                cache.lock_path().display()
            ));
        }
    };
    let saved = load();
    let asked_otherwise = saved.as_ref().is_some_and(|c| !c.made_for(&asked));
    let cached = saved.filter(|_| !asked_otherwise);
    // A fresh token renewed only because it was asked for again: if the renewal fails, for any
    // reason, the token goes out as it would have (a refused renewal must not send the person to
    // a new sign-in for a token that is still good).
    let mut renewing_fresh = false;
    if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
        // Claude Code runs the helper again right after the gateway refuses a token (401, 403):
        // the same token again would be refused again, for minutes. Renewed once; when that
        // cannot be recorded, not at all (each run would renew it).
        if !asked_again(c) || cache.record_renewal(&c.access_token).is_err() {
            return Ok(c.access_token.clone());
        }
        eprintln!("claude-sso-signin: note: this token was handed out moments ago and is asked for again; renewing it");
        renewing_fresh = true;
    }
    let keep_fresh = |saved: &Cached, e: &OidcError| {
        eprintln!("claude-sso-signin: note: could not renew it ({e}); handing out the saved token");
        saved.access_token.clone()
    };
    // Nothing can renew a sign-in without a refresh token, and a new sign-in before the token
    // runs out would only come sooner (under Claude Code over SSH it cannot start at all, so
    // every run right after `login` failed): the token goes out while the gateway takes it.
    let no_refresh = |c: &&Cached| c.refresh_token.is_none() && usable(c);
    if let Some(c) = cached.as_ref().filter(no_refresh) {
        note_sooner_than_the_ttl(limit(c), "there is no refresh token to renew it");
        return Ok(c.access_token.clone());
    }
    let mut why = match &cached {
        None if asked_otherwise => {
            "the saved sign-in was made for another CLAUDE_SSO_AUDIENCE or CLAUDE_SSO_SCOPES".to_owned()
        }
        None => "no saved sign-in".to_owned(),
        Some(c) if flow::clock_set_back(c.received_at, now()) => {
            "this computer's clock was set back since the saved token arrived, and there is no refresh token".to_owned()
        }
        Some(_) => "the saved token expires within the margin and there is no refresh token".to_owned(),
    };
    let mut client = None;
    if let Some((saved, refresh_token)) = cached.as_ref().and_then(|c| Some((c, c.refresh_token.clone()?))) {
        // With a token the gateway takes to fall back on, an IdP that does not answer is given
        // up on soon: every run of the helper, and Claude Code with it, would wait for it.
        let fallback = usable(saved);
        let timeout = if fallback { oidc::TIMEOUT_WITH_A_FALLBACK } else { oidc::TIMEOUT };
        let idp_client = match Client::discover(issuer, timeout) {
            Ok(c) => c,
            Err(e) if renewing_fresh => return Ok(keep_fresh(saved, &e)),
            Err(e) => {
                return saved_during_outage(saved, limit(saved), &e, idp.margin_seconds)
                    .ok_or_else(|| discovery_failed(&e))
            }
        };
        match idp_client.refresh(&idp.client_id, &refresh_token, saved.scope.as_deref()) {
            Ok(tokens) => {
                let c = received(idp, issuer, tokens, Some(saved));
                save_or_say(cache, &c);
                if !fresh(&c) {
                    note_sooner_than_the_ttl(limit(&c), "the identity provider issues tokens shorter-lived than that");
                }
                return hand_out(c, idp.margin_seconds);
            }
            Err(TokenError { error: e, refresh_token: rotated }) => {
                // The IdP may have rotated the refresh token before its answer was rejected:
                // the one sent is then spent, and presenting it again can revoke the sign-in.
                if let Some(rotated) = rotated {
                    save_or_say(cache, &Cached { refresh_token: Some(rotated), ..saved.clone() });
                }
                if renewing_fresh {
                    return Ok(keep_fresh(saved, &e));
                }
                if let Some(token) = saved_during_outage(saved, limit(saved), &e, idp.margin_seconds) {
                    return Ok(token);
                }
                // An IdP that is down is down for a sign-in too: the person would be sent to it
                // and the run would wait out the login timeout. Only a refusal (the grant is
                // gone) calls for a new sign-in; the saved one is kept for when the IdP is back.
                if e.is_outage() {
                    return Err(idp_unreachable(&e));
                }
                why = format!("the saved sign-in could not be renewed: {e}");
            }
        }
        client = Some(idp_client);
    }
    let situation = Situation {
        interactive: flow::interactive(),
        device_flag: idp.device,
        browser: Browser::from_setting(idp.browser.as_deref()).can(),
        device_offered: false,
    };
    // Decided before discovery: a run that may not sign in needs no network and fails at once.
    if flow::choose(situation) == SignIn::NotNow {
        return Err(not_signed_in(issuer, &why));
    }
    if cached.is_some() || asked_otherwise {
        eprintln!("claude-sso-signin: {why}; signing in again");
    }
    let client = match client {
        Some(c) => c,
        None => discover(issuer)?,
    };
    let c = sign_in(idp, &client, situation)?;
    save_or_say(cache, &c);
    hand_out(c, idp.margin_seconds)
}

/// How long a run waits for the token cache's lock when it has a saved token the gateway still
/// takes to hand out instead ([`LOCK_WAIT`] when it has none: a renewal in another run takes at
/// most discovery's and the refresh's timeouts, 30 s each).
const LOCK_WAIT_WITH_A_TOKEN: Duration = Duration::from_secs(5);
const LOCK_WAIT: Duration = Duration::from_secs(65);

/// `login`: signs in now, whatever is cached, and keeps the tokens for Claude Code.
fn login(idp: &Idp) -> Result<(), String> {
    let issuer = issuer(idp)?;
    let cache = cache_file(idp)?;
    let cannot = |e: std::io::Error| format!("cannot lock the token cache in {}: {e}", cache.dir.display());
    let _lock = match cache.lock_within(Duration::ZERO).map_err(cannot)? {
        Some(lock) => lock,
        None => {
            eprintln!(
                "claude-sso-signin: waiting for another sign-in to finish (it holds {})",
                cache.lock_path().display()
            );
            cache.lock().map_err(cannot)?
        }
    };
    let client = discover(issuer)?;
    // The person asked for it, so it runs even without a terminal (they chose where its output goes).
    let situation = Situation {
        interactive: true,
        device_flag: idp.device,
        browser: Browser::from_setting(idp.browser.as_deref()).can(),
        device_offered: false,
    };
    let c = sign_in(idp, &client, situation)?;
    save(&cache, &c)?;
    let who = claims::summary(&c.access_token);
    eprintln!(
        "Signed in to {issuer} as {}. Claude Code will use this sign-in (token valid {} min, renewed silently).",
        who.subject,
        c.expires_at.saturating_sub(now()) / 60
    );
    Ok(())
}

fn discover(issuer: &str) -> Result<Client, String> {
    Client::discover(issuer, oidc::TIMEOUT).map_err(|e| discovery_failed(&e))
}

fn discovery_failed(e: &OidcError) -> String {
    format!("{e}; check CLAUDE_SSO_ISSUER and your network")
}

/// A refresh met an IdP outage and the saved token is no longer good enough to hand out.
fn idp_unreachable(e: &OidcError) -> String {
    format!("the identity provider is unreachable ({e}); try again when it is back")
}

/// [`flow::not_signed_in`], naming this program as a person would type it.
fn not_signed_in(issuer: &str, why: &str) -> String {
    let exe = std::env::current_exe().ok();
    let command = flow::command_name(exe.as_deref(), std::env::var_os("PATH").as_deref());
    flow::not_signed_in(issuer, &command, why)
}

/// The saved token, when the IdP is out of reach for a refresh (not when it refuses) and the
/// gateway will still take the token: a short IdP outage should not stop Claude Code while the
/// token it has is good. Claude Code reads the JWT's `exp` and runs the helper again before it.
/// `expires_at` is the saved expiry within the gateway's age limit, as the freshness check
/// counts it: past that limit the gateway refuses the token however long its `exp` runs.
fn saved_during_outage(saved: &Cached, expires_at: u64, e: &OidcError, margin_s: u64) -> Option<String> {
    let now = now();
    if !e.is_outage() || !flow::usable(expires_at, now, margin_s) {
        return None;
    }
    eprintln!(
        "claude-sso-signin: note: {e}; using the saved token, which expires in {} s",
        expires_at.saturating_sub(now)
    );
    Some(saved.access_token.clone())
}

/// Says on stderr that the token handed out does not last the helper TTL, and `why`. Claude Code
/// reads the JWT's `exp` and runs the helper again before it.
fn note_sooner_than_the_ttl(expires_at: u64, why: &str) {
    eprintln!(
        "claude-sso-signin: note: the token handed out expires in {} s, sooner than the helper TTL: {why}",
        expires_at.saturating_sub(now())
    );
}

/// Runs the sign-in [`flow::choose`] picks; the caller stores the tokens.
fn sign_in(idp: &Idp, client: &Client, situation: Situation) -> Result<Cached, String> {
    let issuer = issuer(idp)?;
    let situation = Situation { device_offered: client.endpoints.device_authorization_endpoint.is_some(), ..situation };
    let timeout = Duration::from_secs(idp.login_timeout_seconds);
    let tokens = match flow::choose(situation) {
        SignIn::NotNow => return Err("cannot sign in here: nobody can see the sign-in prompt".to_owned()),
        SignIn::Device => login::device_login(client, &idp.client_id, &idp.scopes, idp.audience.as_deref(), timeout),
        SignIn::Browser => BrowserLogin {
            client,
            client_id: &idp.client_id,
            scopes: &idp.scopes,
            port: idp.redirect_port,
            audience: idp.audience.as_deref(),
            browser: &Browser::from_setting(idp.browser.as_deref()),
            interactive: situation.interactive,
            timeout,
        }
        .run(),
    }
    .map_err(|e| match e {
        // Nobody saw an address to open: say what to run, as a run that may not sign in does.
        LoginError::NoBrowser(_) => not_signed_in(issuer, &e.to_string()),
        e => format!("sign-in failed: {e}"),
    })?;
    Ok(received(idp, issuer, tokens, None))
}

/// Prints nothing itself: returns the token unless it is expired or about to be, which the
/// gateway would refuse (and Claude Code would re-run the helper and retry, for minutes).
fn hand_out(c: Cached, margin_s: u64) -> Result<String, String> {
    let now = now();
    if flow::usable(c.expires_at, now, margin_s) {
        return Ok(c.access_token);
    }
    Err(format!(
        "the identity provider issued a token that expires in {} s (exp {}), within the {margin_s} s margin; \
         check this computer's clock, or the IdP's access token lifetime",
        flow::seconds_left(c.expires_at, now),
        c.expires_at
    ))
}

/// What to remember of a token endpoint answer received just now; for a refresh, `renewed` is the
/// saved sign-in, whose refresh token and granted scopes stand unless the answer has new ones.
fn received(idp: &Idp, issuer: &str, tokens: TokenResponse, renewed: Option<&Cached>) -> Cached {
    let token = &tokens.access_token;
    let received_at = now();
    let expiry = flow::expiry(received_at, tokens.expires_in, claims::expiry(token), claims::issued_at(token));
    if let Some(skew) = expiry.skew_s.filter(|_| expiry.clocks_disagree()) {
        eprintln!(
            "claude-sso-signin: note: this computer's clock is {} s {} the identity provider's; \
             the token's lifetime is counted from this clock, but set it right",
            skew.unsigned_abs(),
            if skew > 0 { "behind" } else { "ahead of" }
        );
    }
    // The token was issued just now: its age limit runs from this clock, less what the IdP dated
    // its `iat` back (the gateway counts the age from `iat`).
    let too_old_at = idp
        .max_token_age_seconds
        .map_or(u64::MAX, |age| received_at.saturating_add(age).saturating_sub(expiry.backdated_s));
    let expires_at = expiry.expires_at.min(too_old_at);
    Cached {
        issuer: issuer.to_owned(),
        client_id: idp.client_id.clone(),
        access_token: tokens.access_token,
        expires_at,
        received_at,
        refresh_token: tokens.refresh_token.or_else(|| renewed?.refresh_token.clone()),
        requested: Some(Requested::new(idp.audience.as_deref(), &idp.scopes)),
        scope: tokens.scope.filter(|s| !s.trim().is_empty()).or_else(|| renewed?.scope.clone()),
    }
}

fn save(cache: &CacheFile, c: &Cached) -> Result<(), String> {
    cache.store(c).map_err(|e| format!("cannot write the token cache {}: {e}", cache.path.display()))
}

/// Saves for the token run. Failing to save (a full disk) must not also lose the token just
/// received: the IdP may have rotated the refresh token, so the old one is spent either way,
/// and this run can still hand out the new access token.
fn save_or_say(cache: &CacheFile, c: &Cached) {
    if let Err(e) = save(cache, c) {
        eprintln!("claude-sso-signin: note: the sign-in was not saved ({e}); the next run may have to sign in again");
    }
}

fn status(idp: &Idp) -> Result<(), String> {
    let cache = cache_file(idp)?;
    let Some(c) = cache.load() else {
        eprintln!("not signed in to {} (run `claude-sso-signin login`)", issuer(idp)?);
        return Ok(());
    };
    let who = claims::summary(&c.access_token);
    let left = flow::seconds_left(c.expires_at, now());
    eprintln!("signed in to {} as {}", c.issuer, who.subject);
    if let Some(email) = who.email {
        eprintln!("  email:   {email}");
    }
    eprintln!("  groups:  {}", if who.groups.is_empty() { "(none)".to_owned() } else { who.groups.join(", ") });
    if left > 0 {
        eprintln!("  expires: in {} min", left / 60);
    } else {
        eprintln!("  expired: {} min ago", -left / 60);
    }
    eprintln!("  refresh: {}", if c.refresh_token.is_some() { "available" } else { "none" });
    Ok(())
}

/// `logout`: deletes the saved sign-in and revokes its refresh token (RFC 7009) when the IdP
/// advertises a revocation endpoint. The access token is not revoked: the gateway verifies it
/// on its own and keeps accepting it until it expires.
fn logout(idp: &Idp) -> Result<(), String> {
    let issuer = issuer(idp)?;
    let cache = cache_file(idp)?;
    let _lock = cache.lock().map_err(|e| e.to_string())?;
    let Some(c) = cache.load() else {
        cache.delete().map_err(|e| e.to_string())?;
        eprintln!("was not signed in to {issuer}");
        return Ok(());
    };
    let revoked = match c.refresh_token.as_deref() {
        None => Ok("there was no refresh token to revoke"),
        Some(refresh_token) => match Client::discover(issuer, oidc::TIMEOUT) {
            Ok(client) => match client.revoke(&idp.client_id, refresh_token, "refresh_token") {
                Ok(Revocation::Revoked) => Ok("revoked the refresh token at the identity provider"),
                Ok(Revocation::NoEndpoint) => Ok("the identity provider advertises no revocation endpoint, \
                     so the refresh token was not revoked and stays valid there until it expires"),
                Err(e) => Err(format!("could not revoke the refresh token: {e}")),
            },
            Err(e) => Err(format!("could not reach the identity provider to revoke the refresh token: {e}")),
        },
    };
    cache.delete().map_err(|e| format!("cannot delete {}: {e}", cache.path.display()))?;
    eprintln!("signed out of {issuer}: deleted the saved sign-in ({})", cache.path.display());
    if let Ok(done) = revoked {
        eprintln!("{done}");
    }
    let left = flow::seconds_left(c.expires_at, now());
    if left > 0 {
        eprintln!(
            "the access token already issued is not revoked: the gateway accepts it until it expires (in {} min), \
             or until the gateway's max token age if one is set",
            left.saturating_add(59) / 60
        );
    }
    revoked.map(|_| ())
}

fn settings_path(path: Option<&PathBuf>) -> Result<PathBuf, String> {
    path.cloned().or_else(claude_settings).ok_or_else(|| "no home directory; pass --settings".to_owned())
}

fn setup(idp: &Idp, args: &SetupArgs) -> Result<(), String> {
    let issuer = issuer(idp)?;
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot find this program's path: {e}"))?;
    // canonicalize gives `\\?\C:\...` on Windows, which the shell Claude Code uses does not take.
    let helper = settings::helper_command(exe.to_string_lossy().trim_start_matches(r"\\?\"), cfg!(windows));
    let path = settings_path(args.settings.as_ref())?;
    let values = [
        args.model.clone(),
        args.model.clone(),
        args.opus_model.clone(),
        args.haiku_model.clone(),
        args.fable_model.clone().unwrap_or_else(|| args.model.clone()),
        args.haiku_model.clone(),
        idp.helper_ttl_ms.to_string(),
        issuer.to_owned(),
        idp.client_id.clone(),
    ];
    // The settings given besides the issuer and client go along too: Claude Code's runs of the
    // helper have only this file's `env`.
    let optional = [
        idp.audience.clone(),
        (idp.scopes != DEFAULT_SCOPES).then(|| idp.scopes.clone()),
        (idp.redirect_port != DEFAULT_REDIRECT_PORT).then(|| idp.redirect_port.to_string()),
        idp.max_token_age_seconds.map(|s| s.to_string()),
        (idp.margin_seconds != DEFAULT_MARGIN_SECONDS).then(|| idp.margin_seconds.to_string()),
        idp.allow_insecure_http.then(|| "true".to_owned()),
    ];
    settings::setup(&path, &settings::Setup { helper, gateway_url: args.gateway_url.clone(), values, optional })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("Claude Code now signs in through {} ({})", args.gateway_url, path.display());
    Ok(())
}

fn uninstall(path: Option<&PathBuf>) -> Result<(), String> {
    let path = settings_path(path)?;
    let changed = settings::uninstall(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("{}", if changed { "removed the gateway settings" } else { "nothing to remove" });
    Ok(())
}
