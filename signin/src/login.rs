//! Signing in: the browser flow (Authorization Code + PKCE with a loopback redirect) and the
//! device authorization grant for machines without a browser.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::flow::{self, BrowserCan, BrowserDidNotStart};
use crate::oidc::{Client, OidcError, TokenResponse};
use crate::pkce;

/// Why signing in failed.
#[derive(Debug)]
pub enum LoginError {
    /// The IdP refused or could not be reached.
    Oidc(OidcError),
    /// The loopback listener could not be set up.
    Listener(String),
    /// Nobody finished signing in in time; `foreign` redirects (without this sign-in's `state`)
    /// were refused meanwhile.
    TimedOut { foreign: usize },
    /// Randomness was unavailable.
    Random,
    /// The browser could not be started, and nobody would see the address printed instead.
    NoBrowser(String),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Oidc(e) => write!(f, "{e}"),
            LoginError::Listener(why) => write!(
                f,
                "cannot listen for the sign-in redirect: {why} (set CLAUDE_SSO_REDIRECT_PORT, or use --device)"
            ),
            LoginError::TimedOut { foreign: 0 } => {
                write!(f, "sign-in was not completed in time; run the command again")
            }
            LoginError::TimedOut { foreign } => write!(
                f,
                "sign-in was not completed in time; run the command again \
                 ({foreign} redirect(s) that were not this sign-in's were refused)"
            ),
            LoginError::Random => write!(f, "the system has no randomness source"),
            LoginError::NoBrowser(why) => write!(f, "could not open a browser: {why}"),
        }
    }
}

impl From<OidcError> for LoginError {
    fn from(e: OidcError) -> Self {
        LoginError::Oidc(e)
    }
}

/// The operating system, for what differs by it; data, so that a test on one system can check
/// what another would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// macOS.
    Mac,
    /// Windows.
    Windows,
    /// Linux and the other Unixes (X11 or Wayland, `xdg-open`).
    Unix,
}

impl Os {
    /// The system this program runs on.
    pub const CURRENT: Os = if cfg!(target_os = "macos") {
        Os::Mac
    } else if cfg!(windows) {
        Os::Windows
    } else {
        Os::Unix
    };
}

/// How the browser is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Browser {
    /// The platform's opener (`xdg-open`, `open`, `url.dll` on Windows).
    System,
    /// A program (one path, no arguments) that receives the URL as its only argument.
    Command(String),
    /// Print the URL only.
    PrintOnly,
}

impl Browser {
    /// From `CLAUDE_SSO_BROWSER`: unset means the system opener, `none` means print only.
    pub fn from_setting(value: Option<&str>) -> Browser {
        match value.map(str::trim) {
            None | Some("") => Browser::System,
            Some("none") => Browser::PrintOnly,
            Some(cmd) => Browser::Command(cmd.to_owned()),
        }
    }

    /// What this setting can do on this machine.
    pub fn can(&self) -> BrowserCan {
        match self {
            Browser::System if system_browser_available(Os::CURRENT, env_set) => BrowserCan::Open,
            Browser::System => BrowserCan::Nothing,
            Browser::Command(_) => BrowserCan::Open,
            Browser::PrintOnly => BrowserCan::PrintOnly,
        }
    }

    /// Starts the browser on `url` (nothing to start for [`Browser::PrintOnly`]); why it could
    /// not be started, or why the opener failed within [`OPENER_GRACE`].
    fn open(&self, url: &str) -> Result<(), String> {
        let Some((program, args)) = opener(self, Os::CURRENT, url) else { return Ok(()) };
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let deadline = Instant::now() + OPENER_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{program} failed ({status})")),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                // Still running: some openers run the browser in the foreground. Taken as opened.
                Ok(None) | Err(_) => return Ok(()),
            }
        }
    }
}

/// How long an opener is watched for failing at once: `xdg-open` without a browser for URLs
/// (WSL with WSLg sets a `DISPLAY`), `open` without a handler, a `CLAUDE_SSO_BROWSER` used
/// over SSH. They exit non-zero within milliseconds; counted as started, they left the run
/// waiting out the login timeout for a sign-in nobody could see.
const OPENER_GRACE: Duration = Duration::from_millis(1500);

/// The program and arguments that open `url` on `os`; `None` for print-only. The URL is one
/// argument of its own and never passes through a shell: on Windows, `cmd /C start` took each
/// `&` of the URL as the end of a command, so the browser got the URL without `client_id`,
/// `state` and the PKCE challenge, and cmd ran the rest as commands.
fn opener(browser: &Browser, os: Os, url: &str) -> Option<(String, Vec<String>)> {
    let (program, mut args) = match (browser, os) {
        (Browser::PrintOnly, _) => return None,
        (Browser::Command(program), _) => (program.clone(), Vec::new()),
        (Browser::System, Os::Mac) => ("open".to_owned(), Vec::new()),
        // ShellExecute on the URL, as a click on a link does; rundll32 passes it on unparsed.
        (Browser::System, Os::Windows) => ("rundll32".to_owned(), vec!["url.dll,FileProtocolHandler".to_owned()]),
        (Browser::System, Os::Unix) => ("xdg-open".to_owned(), Vec::new()),
    };
    args.push(url.to_owned());
    Some((program, args))
}

/// Whether an environment variable is set to something.
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether the system opener shows a window the person sees, on `os` with these environment
/// variables set (`set`). Not in an SSH session (`SSH_CONNECTION`, `SSH_TTY`) on any system:
/// on Linux a `DISPLAY` kept from a desktop session (a tmux pane later attached over SSH)
/// opens the window on a screen nobody at this terminal looks at, or none at all.
fn system_browser_available(os: Os, set: impl Fn(&str) -> bool) -> bool {
    if set("SSH_CONNECTION") || set("SSH_TTY") {
        return false;
    }
    match os {
        Os::Mac | Os::Windows => true,
        Os::Unix => set("DISPLAY") || set("WAYLAND_DISPLAY"),
    }
}

/// What the browser flow needs.
pub struct BrowserLogin<'a> {
    /// The IdP.
    pub client: &'a Client,
    /// OAuth client id.
    pub client_id: &'a str,
    /// Space-separated scopes.
    pub scopes: &'a str,
    /// Loopback port (0: any free port).
    pub port: u16,
    /// Optional resource indicator / audience parameter.
    pub audience: Option<&'a str>,
    /// How the browser is opened.
    pub browser: &'a Browser,
    /// Whether a person reads stderr while the sign-in waits (see [`flow::interactive`]).
    pub interactive: bool,
    /// How long to wait for the person.
    pub timeout: Duration,
}

impl BrowserLogin<'_> {
    /// Runs the flow and returns the tokens.
    pub fn run(&self) -> Result<TokenResponse, LoginError> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).map_err(|e| LoginError::Listener(e.to_string()))?;
        let port = listener.local_addr().map_err(|e| LoginError::Listener(e.to_string()))?.port();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let verifier = pkce::random(32).map_err(|_| LoginError::Random)?;
        let state = pkce::random(16).map_err(|_| LoginError::Random)?;
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", self.client_id.to_owned()),
            ("redirect_uri", redirect_uri.clone()),
            ("scope", self.scopes.to_owned()),
            ("state", state.clone()),
            ("code_challenge", pkce::challenge(&verifier)),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(audience) = self.audience {
            params.push(("audience", audience.to_owned()));
        }
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let url = with_query(&self.client.endpoints.authorization_endpoint, &query.join("&"));
        let opened = self.browser.open(&url);
        if let Err(why) = &opened {
            if flow::when_the_browser_does_not_start(self.interactive) == BrowserDidNotStart::GiveUp {
                return Err(LoginError::NoBrowser(why.clone()));
            }
        }
        eprintln!("Sign in to continue. If no browser opens, visit:\n  {url}");
        if let Err(why) = opened {
            eprintln!("(could not open a browser: {why}; open the address above yourself)");
        }
        let code = wait_for_redirect(&listener, self.timeout, &state)??;
        Ok(self.client.exchange_code(self.client_id, &code, &redirect_uri, &verifier)?)
    }
}

/// The longest a sign-in waits for the person, whatever the setting says: one day.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// `timeout` from now, capped at [`MAX_WAIT`] (`Instant + Duration` panics on overflow).
fn deadline_after(timeout: Duration) -> Instant {
    Instant::now() + timeout.min(MAX_WAIT)
}

/// What one request to the loopback listener means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Redirect {
    /// This sign-in's redirect, with a code to exchange.
    Code(String),
    /// This sign-in's redirect, with an OAuth error from the IdP.
    Refused { error: String, description: String },
    /// A `/callback` without this sign-in's `state`, or with neither code nor error: forged (any
    /// local process or web page can send one) or stale. Answered 400; the wait goes on, so that
    /// one such request cannot cancel a sign-in.
    Foreign,
    /// Another path: answered 404.
    NotFound,
}

/// Reads a request target (`/callback?code=…&state=…`) against this sign-in's `state`.
fn judge(target: &str, state: &str) -> Redirect {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        return Redirect::NotFound;
    }
    let query = parse_query(query);
    let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if get("state").as_deref() != Some(state) {
        return Redirect::Foreign;
    }
    match (get("code"), get("error")) {
        (_, Some(error)) => Redirect::Refused { error, description: get("error_description").unwrap_or_default() },
        (Some(code), None) => Redirect::Code(code),
        (None, None) => Redirect::Foreign,
    }
}

/// Accepts connections until this sign-in's redirect comes or the deadline passes; returns its
/// code, or the IdP's refusal.
fn wait_for_redirect(
    listener: &TcpListener,
    timeout: Duration,
    state: &str,
) -> Result<Result<String, OidcError>, LoginError> {
    listener.set_nonblocking(true).map_err(|e| LoginError::Listener(e.to_string()))?;
    let deadline = deadline_after(timeout);
    let mut foreign = 0;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => match answer_redirect(stream, state) {
                Some(Redirect::Code(code)) => return Ok(Ok(code)),
                Some(Redirect::Refused { error, description }) => {
                    return Ok(Err(OidcError::Refused { error, description }))
                }
                Some(Redirect::Foreign) => foreign += 1,
                Some(Redirect::NotFound) | None => {}
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(LoginError::Listener(e.to_string())),
        }
    }
    Err(LoginError::TimedOut { foreign })
}

/// Longest request line the listener reads (a redirect's code and state fit many times over).
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// How long one connection may take to send its request line. A browser sends it at once; a
/// local process that sends nothing, or a byte now and then, must not hold the one-at-a-time
/// listener past this (nor the sign-in past its own deadline).
const REQUEST_LINE_WAIT: Duration = Duration::from_secs(2);

/// The request line of `stream` (`None`: not sent whole within [`REQUEST_LINE_WAIT`] and
/// [`MAX_REQUEST_LINE`] bytes, or not UTF-8).
fn request_line(mut stream: &TcpStream) -> Option<String> {
    let deadline = Instant::now() + REQUEST_LINE_WAIT;
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    while !line.contains(&b'\n') {
        let left = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())?;
        // Silence of half a second also ends it (a connection opened and left idle).
        stream.set_read_timeout(Some(left.min(Duration::from_millis(500)))).ok()?;
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_REQUEST_LINE {
            return None;
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    String::from_utf8(line[..end].to_vec()).ok()
}

/// Reads one request, answers it and says what it was (`None`: unreadable).
fn answer_redirect(mut stream: TcpStream, state: &str) -> Option<Redirect> {
    stream.set_nonblocking(false).ok()?;
    let line = request_line(&stream)?;
    let redirect = judge(line.split_whitespace().nth(1)?, state);
    let (status, page) = page(&redirect);
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
        page.len()
    );
    // Closing with the rest of the request unread (its headers, the cookies a browser keeps for
    // 127.0.0.1) sends a reset, and the browser may show "connection reset" in place of the page:
    // the answer is ended first, then what is left is read, briefly, before the close.
    let _ = stream.shutdown(Shutdown::Write);
    drain(&stream);
    Some(redirect)
}

/// Most of a request the listener reads after its answer, and for how long.
const DRAIN_BYTES: usize = 256 * 1024;
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// Reads what the client still sends, until it closes, [`DRAIN_BYTES`] or [`DRAIN_WAIT`].
fn drain(mut stream: &TcpStream) {
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < DRAIN_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else {
            return;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// The status and page the browser gets for a request to the listener. A refusal says so: the
/// person was denied (`access_denied`, not assigned to the application), not signed in.
fn page(redirect: &Redirect) -> (&'static str, String) {
    match redirect {
        Redirect::NotFound => ("404 Not Found", String::new()),
        Redirect::Foreign => (
            "400 Bad Request",
            "<!doctype html><title>Not this sign-in</title><p>This is not the sign-in Claude Code is waiting for.</p>"
                .to_owned(),
        ),
        Redirect::Code(_) => (
            "200 OK",
            "<!doctype html><title>Signed in</title><p>Signed in. You can close this window and return to Claude Code.</p>"
                .to_owned(),
        ),
        Redirect::Refused { error, description } => {
            let detail = if description.is_empty() { String::new() } else { format!(": {}", html(description)) };
            (
                "200 OK",
                format!(
                    "<!doctype html><title>Sign-in refused</title><p>The identity provider refused the sign-in \
                     ({}{detail}). You are not signed in; close this window and see Claude Code or the terminal \
                     for what to do.</p>",
                    html(error)
                ),
            )
        }
    }
}

/// `text` for an HTML page: the IdP's error and its description come from the redirect's query.
fn html(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// Runs the device authorization grant: prints where to go and polls until done. `audience`
/// is asked for as in the browser flow.
pub fn device_login(
    client: &Client,
    client_id: &str,
    scopes: &str,
    audience: Option<&str>,
    timeout: Duration,
) -> Result<TokenResponse, LoginError> {
    let device = client.start_device(client_id, scopes, audience)?;
    eprintln!("To sign in, visit {} and enter the code {}", device.verification_uri, device.user_code);
    if let Some(complete) = &device.verification_uri_complete {
        eprintln!("  or open {complete}");
    }
    let deadline = deadline_after(timeout.min(Duration::from_secs(device.expires_in)));
    let mut interval = poll_interval(device.interval);
    let mut now = Instant::now();
    while now < deadline {
        // Never sleep past the deadline, however long the IdP asks to wait.
        std::thread::sleep(interval.min(deadline - now));
        match client.poll_device(client_id, &device.device_code) {
            Ok(tokens) => return Ok(tokens),
            Err(OidcError::Refused { error, .. }) if error == "authorization_pending" => {}
            // RFC 8628 §3.5: slow_down adds 5 s to the interval.
            Err(OidcError::Refused { error, .. }) if error == "slow_down" => {
                interval = poll_interval(interval.as_secs().saturating_add(5));
            }
            // The IdP's own trouble (a 503, a dropped connection) says nothing of the sign-in,
            // which the person may be finishing right now: poll on, less often, until the deadline.
            Err(e) if e.is_outage() => interval = poll_interval(interval.as_secs().saturating_mul(2)),
            Err(e) => return Err(e.into()),
        }
        now = Instant::now();
    }
    Err(LoginError::TimedOut { foreign: 0 })
}

/// The device-flow polling interval the IdP asks for, kept within 1..=60 s: an IdP that asks
/// for a day would otherwise keep `login --device` asleep long past its own deadline.
fn poll_interval(seconds: u64) -> Duration {
    Duration::from_secs(seconds.clamp(1, 60))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Splits and percent-decodes a query string.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(value: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            (b'%', Some(hi), Some(lo)) => Some((hi * 16 + lo) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `endpoint` with `query` added: after `&` when the endpoint has a query of its own, which
/// must be kept (RFC 6749 §3.1; Azure AD B2C names its policy there).
fn with_query(endpoint: &str, query: &str) -> String {
    let joint = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{joint}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_query_keeps_the_endpoints_own() {
        assert_eq!(with_query("https://idp/authorize", "a=1&b=2"), "https://idp/authorize?a=1&b=2");
        assert_eq!(
            with_query("https://b2c/authorize?p=B2C_1_signin", "a=1"),
            "https://b2c/authorize?p=B2C_1_signin&a=1"
        );
    }

    /// A local process that trickles a byte now and then holds the listener no longer than a
    /// silent one; a request line sent at once is read whole, a huge one is not kept.
    #[test]
    fn a_trickling_connection_is_cut_off() {
        use std::io::Write as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let trickle = std::thread::spawn(move || {
            let mut client = TcpStream::connect(addr).unwrap();
            for _ in 0..60 {
                if client.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        assert_eq!(request_line(&stream), None);
        assert!(started.elapsed() < REQUEST_LINE_WAIT + Duration::from_millis(500), "{:?}", started.elapsed());
        drop(stream);
        trickle.join().unwrap();

        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"GET /callback?code=c&state=s HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let (stream, _) = listener.accept().unwrap();
        assert_eq!(request_line(&stream).as_deref(), Some("GET /callback?code=c&state=s HTTP/1.1\r"));

        let mut client = TcpStream::connect(addr).unwrap();
        let huge = vec![b'a'; MAX_REQUEST_LINE * 2];
        let writer = std::thread::spawn(move || drop(client.write_all(&huge)));
        let (stream, _) = listener.accept().unwrap();
        assert_eq!(request_line(&stream), None);
        drop(stream);
        writer.join().unwrap();
    }

    #[test]
    fn query_round_trip() {
        let q = parse_query("code=a%2Bb%20c&state=x~y&error_description=no+way&flag");
        assert_eq!(
            q,
            vec![
                ("code".into(), "a+b c".into()),
                ("state".into(), "x~y".into()),
                ("error_description".into(), "no way".into()),
                ("flag".into(), "".into())
            ]
        );
        assert_eq!(encode("openid email/x y"), "openid%20email%2Fx%20y");
        assert_eq!(parse_query("bad=%zz%4"), vec![("bad".into(), "%zz%4".into())]);
    }

    #[test]
    fn only_this_sign_ins_redirect_ends_the_wait() {
        let code = |c: &str| Redirect::Code(c.to_owned());
        let refused = |e: &str, d: &str| Redirect::Refused { error: e.to_owned(), description: d.to_owned() };
        let cases = [
            ("the redirect", "/callback?code=abc&state=S1", code("abc")),
            ("state first, escaped code", "/callback?state=S1&code=a%2Bb", code("a+b")),
            (
                "the IdP refused",
                "/callback?error=access_denied&error_description=no+way&state=S1",
                refused("access_denied", "no way"),
            ),
            ("forged state", "/callback?code=forged&state=forged", Redirect::Foreign),
            ("no state", "/callback?code=forged", Redirect::Foreign),
            ("forged error", "/callback?error=access_denied&state=x", Redirect::Foreign),
            ("state but neither code nor error", "/callback?state=S1", Redirect::Foreign),
            ("no query", "/callback", Redirect::Foreign),
            ("another path", "/favicon.ico", Redirect::NotFound),
            ("a prefix of the path", "/callbackx?code=abc&state=S1", Redirect::NotFound),
        ];
        for (name, target, want) in cases {
            assert_eq!(judge(target, "S1"), want, "{name}");
        }
    }

    #[test]
    fn connections_that_send_nothing_hold_the_listener_only_briefly() {
        use std::io::Write as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let started = Instant::now();
        let client = std::thread::spawn(move || {
            // Served one at a time: each silent connection costs the listener its read timeout.
            let idle: Vec<_> = (0..3).map(|_| TcpStream::connect(at).unwrap()).collect();
            let mut real = TcpStream::connect(at).unwrap();
            write!(real, "GET /callback?code=c1&state=s1 HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut real, &mut answer);
            drop(idle);
            answer
        });
        let got = wait_for_redirect(&listener, Duration::from_secs(30), "s1").unwrap();
        assert_eq!(got.unwrap(), "c1");
        assert!(client.join().unwrap().starts_with("HTTP/1.1 200"));
        // Three silent connections cost 1.5 s now; at the old 5 s each they cost 15.
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    }

    #[cfg(unix)]
    #[test]
    fn an_opener_that_fails_at_once_did_not_open_the_browser() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("csg-opener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            Browser::Command(path.to_string_lossy().into_owned())
        };
        assert_eq!(script("opens", "exit 0").open("http://x"), Ok(()));
        let failed = script("fails", "exit 3").open("http://x").unwrap_err();
        assert!(failed.contains("fails failed (exit status: 3)"), "{failed}");
        let started = Instant::now();
        assert_eq!(script("stays", "sleep 3; exit 1").open("http://x"), Ok(()), "one still running is not waited for");
        assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn device_polling_interval_is_bounded() {
        for (name, asked, want) in [("none", 0, 1), ("usual", 5, 5), ("a minute", 60, 60), ("a day", 86_400, 60)] {
            assert_eq!(poll_interval(asked), Duration::from_secs(want), "{name}");
        }
        assert_eq!(poll_interval(u64::MAX), Duration::from_secs(60));
    }

    #[test]
    fn the_url_reaches_the_opener_whole_and_never_through_a_shell() {
        let url = "https://idp.example.com/authorize?response_type=code&client_id=claude-code&state=S&x=%22a%20b%22";
        let launch = |browser: &Browser, os| opener(browser, os, url);
        let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            launch(&Browser::System, Os::Windows),
            Some(("rundll32".to_owned(), args(&["url.dll,FileProtocolHandler", url]))),
            "Windows: no `cmd /C start`, which ends the command at the first `&`"
        );
        assert_eq!(launch(&Browser::System, Os::Mac), Some(("open".to_owned(), args(&[url]))));
        assert_eq!(launch(&Browser::System, Os::Unix), Some(("xdg-open".to_owned(), args(&[url]))));
        for os in [Os::Windows, Os::Mac, Os::Unix] {
            let own = Browser::Command("/opt/firefox/firefox".to_owned());
            assert_eq!(launch(&own, os), Some(("/opt/firefox/firefox".to_owned(), args(&[url]))), "{os:?}");
            assert_eq!(launch(&Browser::PrintOnly, os), None, "{os:?}");
        }
        // Windows quotes an argument only when it holds a space, a tab or a quote; the URL
        // holds none (it is percent-encoded), so rundll32 gets it verbatim.
        assert!(!url.contains([' ', '\t', '"']));
    }

    #[test]
    fn a_browser_window_is_seen_only_on_a_desktop_and_never_over_ssh() {
        use Os::{Mac, Unix, Windows};
        let cases: [(&str, Os, &[&str], bool); 10] = [
            ("Linux desktop (X11)", Unix, &["DISPLAY"], true),
            ("Linux desktop (Wayland)", Unix, &["WAYLAND_DISPLAY"], true),
            ("Linux without a display", Unix, &[], false),
            (
                "Linux over SSH, DISPLAY kept from the desktop (tmux)",
                Unix,
                &["DISPLAY", "SSH_CONNECTION", "SSH_TTY"],
                false,
            ),
            ("Linux, ssh -X", Unix, &["DISPLAY", "SSH_CONNECTION"], false),
            ("Linux, only SSH_TTY", Unix, &["WAYLAND_DISPLAY", "SSH_TTY"], false),
            ("macOS", Mac, &[], true),
            ("macOS over SSH", Mac, &["SSH_CONNECTION"], false),
            ("Windows", Windows, &[], true),
            ("Windows over SSH", Windows, &["SSH_TTY"], false),
        ];
        for (name, os, set, want) in cases {
            assert_eq!(system_browser_available(os, |v| set.contains(&v)), want, "{name}");
        }
    }

    #[test]
    fn the_browser_page_says_what_happened() {
        let refused = Redirect::Refused { error: "access_denied".into(), description: "not <assigned> & \"x\"".into() };
        let (status, shown) = page(&refused);
        assert_eq!(status, "200 OK");
        assert!(
            shown.contains("refused the sign-in (access_denied: not &lt;assigned&gt; &amp; &quot;x&quot;)"),
            "{shown}"
        );
        assert!(!shown.contains("Signed in"), "{shown}");
        let (_, shown) = page(&Redirect::Refused { error: "access_denied".into(), description: String::new() });
        assert!(shown.contains("(access_denied)") && !shown.contains("Signed in"), "{shown}");
        let (status, shown) = page(&Redirect::Code("c".into()));
        assert_eq!(status, "200 OK");
        assert!(shown.contains("Signed in."));
        assert_eq!(page(&Redirect::Foreign).0, "400 Bad Request");
        assert_eq!(page(&Redirect::NotFound), ("404 Not Found", String::new()));
    }

    #[test]
    fn a_refused_sign_in_is_not_shown_as_signed_in() {
        use std::io::Write as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let browser = std::thread::spawn(move || {
            let mut redirect = TcpStream::connect(at).unwrap();
            write!(
                redirect,
                "GET /callback?error=access_denied&error_description=not+assigned&state=s1 HTTP/1.1\r\n\r\n"
            )
            .unwrap();
            let mut shown = String::new();
            let _ = std::io::Read::read_to_string(&mut redirect, &mut shown);
            shown
        });
        let got = wait_for_redirect(&listener, Duration::from_secs(30), "s1").unwrap();
        assert!(matches!(got, Err(OidcError::Refused { ref error, .. }) if error == "access_denied"), "{got:?}");
        let shown = browser.join().unwrap();
        assert!(shown.contains("Sign-in refused") && shown.contains("access_denied: not assigned"), "{shown}");
        assert!(!shown.contains("Signed in"), "{shown}");
    }

    #[test]
    fn the_page_arrives_whole_after_a_request_with_many_cookies() {
        use std::io::Write as _;
        // A browser's request: the line, then headers and the cookies of every local dev server.
        for _ in 0..5 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let at = listener.local_addr().unwrap();
            let browser = std::thread::spawn(move || {
                let mut redirect = TcpStream::connect(at).unwrap();
                let cookie = "c".repeat(60_000);
                write!(
                    redirect,
                    "GET /callback?code=c1&state=s1 HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
                )
                .unwrap();
                let mut shown = String::new();
                std::io::Read::read_to_string(&mut redirect, &mut shown).map(|_| shown)
            });
            let got = wait_for_redirect(&listener, Duration::from_secs(30), "s1").unwrap();
            assert!(matches!(got, Ok(ref code) if code == "c1"), "{got:?}");
            let shown = browser.join().unwrap().expect("the page, not a reset");
            assert!(shown.contains("Signed in."), "{shown}");
        }
    }

    #[test]
    fn browser_setting() {
        assert_eq!(Browser::from_setting(None), Browser::System);
        assert_eq!(Browser::from_setting(Some("none")), Browser::PrintOnly);
        assert_eq!(Browser::from_setting(Some("/bin/true")), Browser::Command("/bin/true".into()));
    }
}
