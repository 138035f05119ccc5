//! How one run gets a token, decided as data: hand out the cached one, refresh it, sign in with
//! the browser or the device flow, or refuse at once because nobody can see a sign-in prompt.
//!
//! Claude Code runs the helper with stdin, stdout and stderr on pipes (measured with 2.1.330, in
//! `-p` and in the TUI) and shows the helper's stderr only after it has exited non-zero (its first
//! 500 characters). A device code printed while the helper waits is therefore never seen, so such
//! a run must fail fast with a message that says what to run instead.

use std::io::IsTerminal;

/// Whether a person can read what this run prints while it waits: stderr is a terminal.
///
/// Claude Code gives its helper a pipe for stderr; a person at a shell gives it the terminal.
/// (Claude Code also sets `AI_AGENT` and `CLAUDE_CODE_ENTRYPOINT`, but their values change with
/// its version and every command its Bash tool runs inherits them, so they are not used.)
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// What the browser setting can do on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserCan {
    /// A window opens by itself (the system opener with a display, or a configured command).
    Open,
    /// `CLAUDE_SSO_BROWSER=none`: the address is only printed.
    PrintOnly,
    /// The system opener, but no display (SSH, a container).
    Nothing,
}

/// Which sign-in a run that has no usable token starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    /// Authorization Code + PKCE in a browser, with a loopback redirect.
    Browser,
    /// The device authorization grant: a code the person enters elsewhere.
    Device,
    /// None: nobody would see the prompt; fail at once with [`not_signed_in`].
    NotNow,
}

/// The facts [`choose`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// A person can read stderr while we wait (see [`interactive`]).
    pub interactive: bool,
    /// `--device` was given.
    pub device_flag: bool,
    /// What the browser setting can do.
    pub browser: BrowserCan,
    /// The IdP offers the device authorization grant (only consulted for interactive runs).
    pub device_offered: bool,
}

/// Chooses the sign-in. A run nobody watches only signs in when a browser window opens by
/// itself (the window is then the prompt); otherwise it must not start a flow that waits.
pub fn choose(s: Situation) -> SignIn {
    match (s.interactive, s.device_flag, s.browser) {
        (false, true, _) | (false, false, BrowserCan::PrintOnly | BrowserCan::Nothing) => SignIn::NotNow,
        (false, false, BrowserCan::Open) => SignIn::Browser,
        (true, true, _) => SignIn::Device,
        (true, false, BrowserCan::Nothing) if s.device_offered => SignIn::Device,
        (true, false, _) => SignIn::Browser,
    }
}

/// What a browser sign-in does when the browser cannot be started (no such program, or the
/// system opener is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserDidNotStart {
    /// Print the address for the person to open themselves, and wait for the redirect.
    ShowAddress,
    /// Fail at once with [`not_signed_in`].
    GiveUp,
}

/// Decides [`BrowserDidNotStart`]: only a person at a terminal reads the address while the sign-in
/// waits. Under Claude Code nobody does, and waiting the login timeout (5 minutes by default)
/// would only delay the message that says what to run.
pub fn when_the_browser_does_not_start(interactive: bool) -> BrowserDidNotStart {
    if interactive {
        BrowserDidNotStart::ShowAddress
    } else {
        BrowserDidNotStart::GiveUp
    }
}

/// Whether a token expiring at `expires_at` may still be handed out at `now`: Claude Code keeps
/// using a token for its helper TTL (and sends it once more while the helper re-runs), so it must
/// outlive that plus a margin.
pub fn fresh_enough(expires_at: u64, now: u64, helper_ttl_ms: u64, margin_s: u64) -> bool {
    expires_at > now.saturating_add(helper_ttl_ms.div_ceil(1000)).saturating_add(margin_s)
}

/// Whether a token just obtained from the IdP may be handed out at all: it must have more than
/// the margin left. One that is expired or about to be would only earn a 401 from the gateway,
/// and Claude Code would re-run the helper and retry, up to 13 times over four minutes.
pub fn usable(expires_at: u64, now: u64, margin_s: u64) -> bool {
    expires_at > now.saturating_add(margin_s)
}

/// The longest lifetime believed for a token, whatever the IdP says (24 h): a larger or absurd
/// `expires_in` (2^64 - 1 overflowed the sum with the clock) is taken as this.
pub const MAX_LIFETIME_S: u64 = 86_400;

/// The lifetime assumed for a token when the IdP gives neither `expires_in` nor `exp`.
pub const DEFAULT_LIFETIME_S: u64 = 300;

/// How far apart this computer's clock and the IdP's may be and still count as agreeing.
pub const CLOCK_TOLERANCE_S: u64 = 60;

/// Whether this computer's clock reads earlier than when a token arrived (`received_at`, by
/// the same clock; 0 when unknown) by more than [`CLOCK_TOLERANCE_S`]: it has been set back since
/// (it was ahead at receipt: a dual boot, a VM resumed before NTP), so the token's expiry,
/// counted from the clock at receipt, is late by as much, and nothing tells how much time has
/// really passed.
pub fn clock_set_back(received_at: u64, now: u64) -> bool {
    received_at > now.saturating_add(CLOCK_TOLERANCE_S)
}

/// How soon after a token was handed out a run that would hand it out again is taken as Claude
/// Code's re-run after the gateway refused it (it re-runs the helper about 1 s after a 401 or 403).
pub const ASKED_AGAIN_WITHIN_S: u64 = 10;

/// How long after it arrived a token is never renewed for being asked for again: the IdP has just
/// issued it, so a new one would be refused as well, and parallel starts of Claude Code within
/// [`ASKED_AGAIN_WITHIN_S`] of each other would otherwise renew the token on every start.
pub const JUST_RECEIVED_S: u64 = 60;

/// Whether a fresh token that is about to be handed out again is renewed first (once): it was
/// handed out at `handed_out_at` (by this clock; `None` if it was not the last one handed out),
/// within [`ASKED_AGAIN_WITHIN_S`] of `now`, so the gateway most likely refused it (a maximum
/// token age lower than the helper knows, a signing key withdrawn), and Claude Code would retry
/// with it for minutes. Not when it was renewed so before (`renewed`), nor when it arrived within
/// [`JUST_RECEIVED_S`] or at an unknown time (`received_at` 0, a cache from before it was kept).
pub fn renew_when_asked_again(handed_out_at: Option<u64>, renewed: bool, received_at: u64, now: u64) -> bool {
    let asked_again = handed_out_at.is_some_and(|at| at <= now && now - at <= ASKED_AGAIN_WITHIN_S);
    asked_again && !renewed && received_at != 0 && now.saturating_sub(received_at) > JUST_RECEIVED_S
}

/// When a token just received expires, by this computer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Seconds since the epoch, by this computer's clock.
    pub expires_at: u64,
    /// The token's `iat` (as issued: [`Expiry::backdated_s`] added) minus this computer's clock at
    /// receipt: positive when the IdP's clock is ahead. `None` without `iat`.
    pub skew_s: Option<i64>,
    /// Seconds the IdP dated `iat` back from when it issued the token (Entra ID dates it five
    /// minutes back): how far `exp - iat` is over the `expires_in` it gave, at most
    /// [`MAX_BACKDATE_S`]. A gateway counting a token's age from `iat` counts these too.
    pub backdated_s: u64,
}

/// Most seconds an IdP is believed to date `iat` back.
const MAX_BACKDATE_S: u64 = 3600;

impl Expiry {
    /// Whether the clocks disagree by more than [`CLOCK_TOLERANCE_S`] (worth a warning).
    pub fn clocks_disagree(&self) -> bool {
        self.skew_s.is_some_and(|s| s.unsigned_abs() > CLOCK_TOLERANCE_S)
    }
}

/// When a token received at `received_at` (this computer's clock) expires. The lifetime is
/// relative, so a clock that is off does not matter: `expires_in`, else `exp - iat`, else (no
/// `iat` to tell the skew) `exp - received_at`, else [`DEFAULT_LIFETIME_S`]; never more than
/// [`MAX_LIFETIME_S`]. `exp` as an absolute time caps the lifetime only when `iat` shows that the
/// two clocks agree. Comparing the IdP's `exp` with a clock hours behind made a 1 h token look
/// good for 3 h (the gateway refuses it after 1 h); with a clock ahead, every token looked expired.
pub fn expiry(received_at: u64, expires_in: Option<u64>, exp: Option<u64>, iat: Option<u64>) -> Expiry {
    let backdated_s = match (expires_in, exp, iat) {
        (Some(lifetime), Some(exp), Some(iat)) => exp.saturating_sub(iat).saturating_sub(lifetime).min(MAX_BACKDATE_S),
        _ => 0,
    };
    let skew_s = iat.map(|iat| seconds_left(iat.saturating_add(backdated_s), received_at));
    let agree = skew_s.is_some_and(|s| s.unsigned_abs() <= CLOCK_TOLERANCE_S);
    let relative = expires_in.or_else(|| Some(exp?.saturating_sub(iat?)));
    let lifetime = match (relative, exp) {
        (Some(r), Some(e)) if agree => r.min(e.saturating_sub(received_at)),
        (Some(r), _) => r,
        (None, Some(e)) => e.saturating_sub(received_at),
        (None, None) => DEFAULT_LIFETIME_S,
    };
    Expiry { expires_at: received_at.saturating_add(lifetime.min(MAX_LIFETIME_S)), skew_s, backdated_s }
}

/// Seconds from `now` until `expires_at`, negative once past; saturates instead of overflowing.
pub fn seconds_left(expires_at: u64, now: u64) -> i64 {
    if expires_at >= now {
        i64::try_from(expires_at - now).unwrap_or(i64::MAX)
    } else {
        i64::try_from(now - expires_at).map_or(i64::MIN, |s| -s)
    }
}

/// How a person runs this program from a terminal: the bare name when the binary is found on
/// `PATH` under that name, else its full path (`setup` writes the full path into Claude Code's
/// settings, so the binary need not be on `PATH`).
pub fn command_name(exe: Option<&std::path::Path>, path_var: Option<&std::ffi::OsStr>) -> String {
    const NAME: &str = "claude-sso-signin";
    let Some(exe) = exe else { return NAME.to_owned() };
    let on_path = exe.file_stem().is_some_and(|s| s == NAME)
        && path_var.is_some_and(|p| std::env::split_paths(p).any(|dir| Some(dir.as_path()) == exe.parent()));
    if on_path {
        return NAME.to_owned();
    }
    let full = exe.to_string_lossy().into_owned();
    if full.contains(' ') {
        format!("\"{full}\"")
    } else {
        full
    }
}

/// The message for a run that may not sign in. Claude Code shows the first 500 characters of the
/// helper's stderr, so what to do comes first and the detail (`why`) last.
pub fn not_signed_in(issuer: &str, command: &str, why: &str) -> String {
    format!(
        "not signed in to {issuer}.\n\
         Run `{command} login` in a terminal (on SSH or without a browser: `{command} login --device`), \
         then try again.\n({why})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::path::Path;

    #[test]
    fn choose_the_sign_in() {
        use BrowserCan::{Nothing, Open, PrintOnly};
        let cases = [
            ("Claude Code, desktop: the browser window is the prompt", false, false, Open, true, SignIn::Browser),
            ("Claude Code over SSH: fail fast", false, false, Nothing, true, SignIn::NotNow),
            ("Claude Code, browser=none: fail fast", false, false, PrintOnly, true, SignIn::NotNow),
            ("Claude Code with --device: fail fast", false, true, Open, true, SignIn::NotNow),
            ("terminal, desktop", true, false, Open, true, SignIn::Browser),
            ("terminal over SSH", true, false, Nothing, true, SignIn::Device),
            ("terminal over SSH, IdP without device grant", true, false, Nothing, false, SignIn::Browser),
            ("terminal, browser=none prints the address", true, false, PrintOnly, true, SignIn::Browser),
            ("terminal with --device", true, true, Open, true, SignIn::Device),
        ];
        for (name, interactive, device_flag, browser, device_offered, want) in cases {
            assert_eq!(choose(Situation { interactive, device_flag, browser, device_offered }), want, "{name}");
        }
    }

    #[test]
    fn a_browser_that_does_not_start_ends_the_wait_unless_someone_reads_the_address() {
        assert_eq!(when_the_browser_does_not_start(true), BrowserDidNotStart::ShowAddress, "a terminal");
        assert_eq!(when_the_browser_does_not_start(false), BrowserDidNotStart::GiveUp, "Claude Code");
    }

    #[test]
    fn freshness_covers_helper_ttl_and_margin() {
        let cases = [
            ("plenty left", 10_000, true),
            ("exactly ttl + margin left", 1000 + 300 + 60, false),
            ("one second more", 1000 + 300 + 61, true),
            ("expired", 900, false),
        ];
        for (name, expires_at, want) in cases {
            assert_eq!(fresh_enough(expires_at, 1000, 300_000, 60), want, "{name}");
        }
        assert!(!fresh_enough(1000 + 60 + 6, 1000, 5_500, 60), "TTL in ms rounds up");
    }

    #[test]
    fn expiry_counts_the_lifetime_from_this_computers_clock() {
        const NOW: u64 = 1_000_000;
        const H: u64 = 3600;
        let cases = [
            ("clocks agree", Some(H), Some(NOW + H), Some(NOW), NOW + H, Some(0)),
            ("laptop 2 h behind the IdP", Some(H), Some(NOW + 3 * H), Some(NOW + 2 * H), NOW + H, Some(7200)),
            ("laptop 2 h ahead of the IdP", Some(H), Some(NOW - H), Some(NOW - 2 * H), NOW + H, Some(-7200)),
            ("no expires_in: exp - iat", None, Some(NOW + 3 * H), Some(NOW + 2 * H), NOW + H, Some(7200)),
            ("clocks agree, exp sooner than expires_in", Some(H), Some(NOW + 600), Some(NOW), NOW + 600, Some(0)),
            ("within tolerance", Some(H), Some(NOW + 30 + H), Some(NOW + 30), NOW + H, Some(30)),
            ("opaque token", Some(H), None, None, NOW + H, None),
            ("exp only: nothing tells the skew", None, Some(NOW + 900), None, NOW + 900, None),
            ("expires_in and exp, no iat", Some(H), Some(NOW + 3 * H), None, NOW + H, None),
            ("nothing at all", None, None, None, NOW + DEFAULT_LIFETIME_S, None),
            ("absurd expires_in", Some(u64::MAX), None, None, NOW + MAX_LIFETIME_S, None),
            ("absurd exp - iat", None, Some(u64::MAX), Some(NOW), NOW + MAX_LIFETIME_S, Some(0)),
            ("exp before iat", None, Some(NOW - 1), Some(NOW), NOW, Some(0)),
        ];
        for (name, expires_in, exp, iat, expires_at, skew_s) in cases {
            assert_eq!(expiry(NOW, expires_in, exp, iat), Expiry { expires_at, skew_s, backdated_s: 0 }, "{name}");
        }
        // Entra ID dates `iat` five minutes back: no skew, and the age a gateway counts is older.
        let entra = expiry(NOW, Some(H), Some(NOW + H), Some(NOW - 300));
        assert_eq!(entra, Expiry { expires_at: NOW + H, skew_s: Some(0), backdated_s: 300 });
        assert!(!entra.clocks_disagree());
        // The same with the laptop 2 h behind.
        let behind = expiry(NOW, Some(H), Some(NOW + 3 * H), Some(NOW + 2 * H - 300));
        assert_eq!((behind.skew_s, behind.backdated_s), (Some(7200), 300));
        assert!(expiry(NOW, Some(H), None, Some(NOW + 61)).clocks_disagree());
        assert!(!expiry(NOW, Some(H), None, Some(NOW - 60)).clocks_disagree());
        assert!(!expiry(NOW, Some(H), None, None).clocks_disagree());
    }

    #[test]
    fn a_clock_set_back_since_receipt_is_seen_beyond_the_tolerance() {
        let cases = [
            ("same clock", 1000, 1000, false),
            ("later", 1000, 5000, false),
            ("set back within the tolerance", 1060, 1000, false),
            ("set back beyond it", 1061, 1000, true),
            ("set back two hours", 1000 + 7200, 1000, true),
            ("not recorded", 0, 1000, false),
            ("absurd", u64::MAX, u64::MAX, false),
        ];
        for (name, received_at, now, want) in cases {
            assert_eq!(clock_set_back(received_at, now), want, "{name}");
        }
    }

    #[test]
    fn a_token_asked_for_again_at_once_is_renewed_once() {
        const NOW: u64 = 1_000_000;
        let old = NOW - 600;
        let cases = [
            ("handed out 1 s ago", Some(NOW - 1), false, old, true),
            ("handed out 10 s ago", Some(NOW - 10), false, old, true),
            ("handed out 11 s ago: the TTL's re-run", Some(NOW - 11), false, old, false),
            ("another token was handed out last", None, false, old, false),
            ("renewed so already", Some(NOW - 1), true, old, false),
            ("received 60 s ago", Some(NOW - 1), false, NOW - 60, false),
            ("received 61 s ago", Some(NOW - 1), false, NOW - 61, true),
            ("arrival not recorded", Some(NOW - 1), false, 0, false),
            ("handed out later by a clock set back since", Some(NOW + 5), false, old, false),
        ];
        for (name, handed_out_at, renewed, received_at, want) in cases {
            assert_eq!(renew_when_asked_again(handed_out_at, renewed, received_at, NOW), want, "{name}");
        }
    }

    #[test]
    fn time_arithmetic_saturates() {
        assert!(!fresh_enough(1000 + 864_000, 1000, u64::MAX, 60), "an absurd helper TTL means: always renew");
        assert!(!fresh_enough(u64::MAX, u64::MAX, 300_000, u64::MAX));
        assert!(!usable(u64::MAX, u64::MAX - 10, 60));
        let cases = [
            ("ahead", 1060, 1000, 60),
            ("past", 940, 1000, -60),
            ("far ahead", u64::MAX, 0, i64::MAX),
            ("far past", 0, u64::MAX, i64::MIN),
        ];
        for (name, expires_at, now, want) in cases {
            assert_eq!(seconds_left(expires_at, now), want, "{name}");
        }
    }

    #[test]
    fn never_hand_out_an_expired_or_expiring_token() {
        let cases = [
            ("expired", 900, false),
            ("expires now", 1000, false),
            ("exactly the margin left", 1060, false),
            ("more than the margin left", 1061, true),
        ];
        for (name, expires_at, want) in cases {
            assert_eq!(usable(expires_at, 1000, 60), want, "{name}");
        }
    }

    #[test]
    fn command_name_is_bare_only_when_on_path() {
        let path = OsStr::new("/usr/bin:/opt/csg/bin");
        let cases = [
            ("on PATH", Some("/opt/csg/bin/claude-sso-signin"), "claude-sso-signin"),
            ("not on PATH", Some("/home/a/dl/claude-sso-signin"), "/home/a/dl/claude-sso-signin"),
            ("renamed", Some("/usr/bin/csg"), "/usr/bin/csg"),
            ("with a space", Some("/home/a b/claude-sso-signin"), "\"/home/a b/claude-sso-signin\""),
            ("unknown", None, "claude-sso-signin"),
        ];
        for (name, exe, want) in cases {
            assert_eq!(command_name(exe.map(Path::new), Some(path)), want, "{name}");
        }
    }

    #[test]
    fn message_says_what_to_run_first_and_fits_what_claude_code_shows() {
        let m = not_signed_in("https://idp.example.com/oauth2/default", "claude-sso-signin", "no saved sign-in");
        assert_eq!(
            m,
            "not signed in to https://idp.example.com/oauth2/default.\n\
             Run `claude-sso-signin login` in a terminal (on SSH or without a browser: \
             `claude-sso-signin login --device`), then try again.\n(no saved sign-in)"
        );
        assert!(m.len() + "claude-sso-signin: ".len() < 500, "Claude Code cuts the helper's stderr at 500");
    }
}
