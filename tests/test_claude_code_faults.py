"""What a person sees in real Claude Code (`claude -p`) when the gateway says no (issue #14):
for each situation, the text on their screen and how long it takes to get there.

Claude Code retries a 401 or 403 (re-running its apiKeyHelper) and any 5xx for three to four
minutes, and a 429 whose Retry-After is 60 s or less. The gateway therefore answers what a retry
cannot fix with a 400, a 429 with a long Retry-After, or `x-should-retry: false`; these tests hold
it to that with the real client: the run ends within seconds and stdout carries the gateway's
words. The time bounds are generous for a loaded 2-core machine and far below the minutes Claude
Code spends retrying.
"""
import re
import shlex
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness.claude import run_claude
from tests.harness.client import call, fixture
from tests.harness.envoy import free_port
from tests.harness.hosts import gateway_class
from tests.harness.signer import Signer

BODY = fixture("request_title_small_fast_model.json")
CONTACT = "#claude-access on Slack"
SETTLED = 15  # seconds: a settled refusal (no retries) reaches the person within this
HELLO = "Hello from the stand-in upstream."
# Tiers added to the contract's sample config, one per budget situation (each its own counter).
LIMIT = 1000  # tokens: less than one answer of the stand-in upstream, so one call spends it


def budget_tiers(per_request: int) -> list:
    models = ["claude-sonnet-4-6", "claude-haiku-4-5"]
    return [
        {"name": "hourly", "groups": ["team-hourly"], "models": models,
         "limits": [{"limit": LIMIT, "window_seconds": 3600, "window_type": "fixed"}]},
        {"name": "daily", "groups": ["team-daily"], "models": models, "per": "person",
         "limits": [{"limit": LIMIT, "window_seconds": 86400, "window_type": "fixed"}]},
        {"name": "sliding", "groups": ["team-sliding"], "models": models,
         "limits": [{"limit": LIMIT, "window_seconds": 20}]},
        # Just under one answer: room comes back a few seconds after the answer stops counting.
        {"name": "short", "groups": ["team-short"], "models": models,
         "limits": [{"limit": per_request - 100, "window_seconds": 4}]},
    ]


@pytest.fixture(scope="module")
def per_request():
    # conftest's fresh_stub sets these usage figures before every test.
    return 120 + 30 + 1000 + 2000


@pytest.fixture(scope="module")
def gw(host, stub, signer, per_request):
    """One gateway per host for the situations that leave the IdP as it is."""
    config = gateway_config(signer, budgets={"reserve": "none"}, access={"contact": CONTACT})
    config["tiers"] += budget_tiers(per_request)
    g = gateway_class(host)(config, stub.port, [signer.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    yield g
    g.stop()


def helper(home: Path, *tokens: str, failures: int = 0) -> tuple[str, Path]:
    """An apiKeyHelper that fails `failures` times (exit 1, as claude-sso-signin does when nobody
    is signed in), then prints `tokens` in turn (the last one from then on); the counter file it
    returns holds how often Claude Code ran it."""
    home.mkdir(parents=True, exist_ok=True)
    for i, token in enumerate(tokens):
        (home / f"token{i}").write_text(token)
    count = home / "helper-runs"
    count.write_text("0")
    script = home / "helper.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {shlex.quote(str(count))})\n"
        f"echo $((n + 1)) > {shlex.quote(str(count))}\n"
        f"if [ \"$n\" -lt {failures} ]; then echo 'claude-sso-signin: not signed in' >&2; exit 1; fi\n"
        f"i=$((n - {failures})); [ \"$i\" -ge {len(tokens)} ] && i={len(tokens) - 1}\n"
        f"cat {shlex.quote(str(home))}/token$i\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), count


def claude(home: Path, gateway, *tokens: str, failures: int = 0, **kwargs):
    """`claude -p` with a helper failing `failures` times, then printing `tokens`; returns the run
    and how often the helper ran."""
    script, count = helper(home, *tokens, failures=failures)
    run = run_claude(home, gateway.port, helper=script, **kwargs)
    runs = int(count.read_text())
    print(f"claude -p: exit {run.code} after {run.seconds:.1f} s, helper ran {runs}x: {run.stdout.strip()}")
    return run, runs


def refused(gateway, status) -> int:
    """Local answers with `status` the gateway has logged so far (each refusal is logged once)."""
    time.sleep(0.3)
    return gateway.logs().count(f"claude-sso-gateway: refused {status}:")


def shown(run) -> str:
    """What the person reads: Claude Code prints the error to stdout; whitespace folded."""
    return " ".join(run.stdout.split())


def away_from_window_end(window: int, margin=75.0):
    """Sleeps past the end of the current fixed window when fewer than `margin` seconds remain,
    so a spent budget's Retry-After stays over 60 s (Claude Code gives up at once)."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 1)


def utc_clock(epoch: float, seconds=True) -> str:
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.gmtime(epoch))


# 1. A token no new sign-in can fix: 400, shown at once; an expired one: 401, the helper re-runs.

SETUP = ("Signing in again will not change this: the sign-in helper or the gateway is set up for another "
         "identity provider or audience; ask your administrator")
IDP = ("Signing in again will not change this: the identity provider issues access tokens this gateway does "
       "not take; ask your administrator")


@pytest.mark.parametrize("claims, reason, remedy", [
    ({"aud": "some-other-app"}, "access token audience not accepted", SETUP),
    ({"iss": "https://login.elsewhere.example"}, "access token issuer not accepted", SETUP),
    ({"sub": None}, "access token has no subject", IDP),
], ids=["audience", "issuer", "no-sub"])
def test_a_token_for_another_setup_fails_fast_with_the_reason(gw, signer, stub, tmp_path, claims, reason, remedy):
    before = refused(gw, 400)
    run, helper_runs = claude(tmp_path, gw, signer.token(**claims))
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    assert f"API Error: 400 gateway: {reason}. {remedy}" in shown(run), run.stdout
    assert helper_runs == 1, "Claude Code re-ran its helper: it took the answer for an expired sign-in"
    assert refused(gw, 400) == before + 1, "Claude Code retried a settled refusal"
    assert stub.requests == []


def test_an_expired_token_gets_401_and_the_helpers_next_token_goes_through(gw, signer, stub, tmp_path):
    now = int(time.time())
    expired = signer.token(iat=now - 900, exp=now - 300)  # past the 60 s leeway
    before = refused(gw, 401)
    run, helper_runs = claude(tmp_path, gw, expired, signer.token())
    assert run.code == 0, run.stdout + run.stderr
    assert HELLO in run.stdout
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    assert helper_runs == 2, "the 401 should make Claude Code run its helper once more"
    assert refused(gw, 401) == before + 1
    assert len(stub.requests) == 1


def test_a_helper_that_keeps_handing_out_the_same_expired_token_fails_fast(gw, signer, stub, tmp_path):
    # Each 401 makes Claude Code re-run the helper and retry: thirteen attempts over about four
    # minutes when the helper hands back the same token (a cached one it does not refresh, or one
    # signed with a key the IdP withdrew). From the fourth refusal of one token on, a 400 ends it.
    now = int(time.time())
    expired = signer.token(iat=now - 900, exp=now - 300)
    run, helper_runs = claude(tmp_path, gw, expired)
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s (the 401 loop takes about 263 s)"
    assert "access token expired" in shown(run), run.stdout
    assert "keeps handing out this same token" in shown(run) and "claude-sso-signin login" in shown(run)
    assert 2 <= helper_runs <= 12, helper_runs
    assert stub.requests == []


def test_a_failing_helper_gets_a_401_and_its_next_token_goes_through(gw, signer, stub, tmp_path):
    # Claude Code still sends the request, with `Authorization: Bearer` alone. That was a 400
    # saying signing in again would not help, and Claude Code gave up; a 401 has it run the helper
    # again (a sign-in that just finished, an IdP that is back).
    run, helper_runs = claude(tmp_path, gw, signer.token(), failures=1)
    assert run.code == 0, run.stdout + run.stderr
    assert HELLO in run.stdout
    assert helper_runs >= 2, "the 401 should make Claude Code run its helper again"
    assert "Signing in again will not change this" not in run.stdout
    assert len(stub.requests) == 1


def test_a_helper_that_keeps_failing_is_named_as_the_cause(gw, signer, stub, tmp_path):
    run, _ = claude(tmp_path, gw, signer.token(), failures=1000)
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    assert "apiKeyHelper" in shown(run), run.stdout
    assert "Signing in again will not change this" not in run.stdout
    assert stub.requests == []


# 5. Signed in, but in no tier.

NO_TIER = "gateway: access denied: you are signed in, but your account is in no group that may use Claude"


def test_a_person_in_no_tier_is_told_whom_to_ask_at_once(gw, signer, stub, tmp_path):
    before = refused(gw, 400)
    run, helper_runs = claude(tmp_path, gw, signer.token(sub="dave", groups=["engineering"]))
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    assert f"API Error: 400 {NO_TIER}. To get access, ask {CONTACT}" in shown(run), run.stdout
    assert "claude-standard-users" not in run.stdout, "group names are shown only with access.show_groups"
    assert helper_runs == 1 and refused(gw, 400) == before + 1
    assert stub.requests == []


def test_the_groups_that_give_access_are_named_only_when_configured(make_gateway, signer, stub):
    config = gateway_config(signer, access={"show_groups": True})
    g = make_gateway(config, [signer.upstream])
    answer = call(g.port, signer.token(groups=["engineering"]), BODY)
    assert answer.status == 400 and answer.headers.get("x-should-retry") == "false", answer
    assert answer.error_message == (f"{NO_TIER} (one of: claude-power-users, claude-standard-users). "
                                    "To get access, ask your administrator")


# 3. A budget spent for longer than Claude Code waits: 429 with the limit, the use and the time.

def spend(gateway, token):
    """One answer's worth of tokens on the budget `token`'s tier counts against."""
    answer = call(gateway.port, token, BODY)
    assert answer.status == 200, answer


def test_a_tier_budget_spent_for_the_hour_says_when_it_comes_back(gw, signer, stub, tmp_path, per_request):
    away_from_window_end(3600)
    token = signer.token(sub="erin", groups=["team-hourly"])
    spend(gw, token)
    before = refused(gw, 429)
    run, _ = claude(tmp_path, gw, token)
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    text = shown(run)
    ends = (time.time() // 3600 + 1) * 3600  # a fixed window starts over on the hour (UTC)
    match = re.search(
        r"API Error: Request rejected \(429\) · gateway: token budget spent: your tier's shared limit of "
        rf"{LIMIT} tokens per 1 h \(used {per_request}\)\. The window starts over in full when it ends\. "
        r"Try again in (\d+) min(?: \d+ s)? \(at (\d\d:\d\d:\d\d) UTC\)\.", text)
    assert match, run.stdout
    assert match[2] == utc_clock(ends), "the time of day is the top of the next hour, in UTC"
    assert abs(int(match[1]) - (ends - time.time()) / 60) <= 2, match[0]
    assert refused(gw, 429) == before + 1, "Claude Code retried a budget spent for the hour"
    assert len(stub.requests) == 1


def test_a_personal_budget_says_it_is_personal(gw, signer, stub, tmp_path, per_request):
    away_from_window_end(86400)
    token = signer.token(sub="frank", groups=["team-daily"])
    spend(gw, token)
    run, _ = claude(tmp_path, gw, token)
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    ends = (time.time() // 86400 + 1) * 86400  # midnight UTC
    left = ends - time.time()
    wait = r"\d+ h(?: \d+ min)?" if left >= 3600 else r"\d+ min(?: \d+ s)?"
    at = utc_clock(ends, seconds=left < 3600)
    pattern = (rf"API Error: Request rejected \(429\) · gateway: token budget spent: your personal limit of {LIMIT} "
               rf"tokens per 1 d \(used {per_request}\)\. The window starts over in full when it ends\. "
               rf"Try again in {wait} \(at {at} UTC\)\.")
    assert re.search(pattern, shown(run)), run.stdout
    # Someone else in the same tier has their own budget.
    other = call(gw.port, signer.token(sub="grace", groups=["team-daily"]), BODY)
    assert other.status == 200, other


# 4. A short sliding window: Claude Code waits it out by itself.

def test_a_short_sliding_window_explains_that_room_comes_back_gradually(gw, signer, per_request):
    token = signer.token(sub="heidi", groups=["team-sliding"])
    spend(gw, token)
    answer = call(gw.port, token, BODY)
    assert answer.status == 429, answer
    retry_after = int(answer.headers["retry-after"])
    assert 1 <= retry_after <= 60 and "x-should-retry" not in answer.headers, answer.headers
    assert re.fullmatch(
        rf"gateway: token budget spent: your tier's shared limit of {LIMIT} tokens per 20 s \(used \d+\)\. "
        r"This is a sliding window: use older than 20 s stops counting, so room comes back gradually\. "
        r"Try again in \d+ s \(at \d\d:\d\d:\d\d UTC\)\.", answer.error_message), answer.error_message


def test_claude_code_rides_out_a_short_sliding_window(gw, signer, stub, tmp_path):
    token = signer.token(sub="ivan", groups=["team-short"])
    away_from_window_end(4, margin=1.5)  # so the next call still finds the answer counting in full
    spend(gw, token)
    refusal = call(gw.port, token, BODY)
    assert refusal.status == 429, refusal
    retry_after = int(refusal.headers["retry-after"])
    before = refused(gw, 429)
    run, helper_runs = claude(tmp_path, gw, token)
    assert run.code == 0, run.stdout + run.stderr
    assert HELLO in run.stdout
    assert run.seconds < retry_after + 20, f"took {run.seconds:.1f} s for a Retry-After of {retry_after} s"
    assert refused(gw, 429) - before <= 3 and helper_runs == 1


# 6. Key rotation: an unknown kid just before does not hold up the new key.

def test_a_rotated_key_is_picked_up_right_after_a_forged_unknown_kid(make_gateway, stub, tmp_path):
    idp = Signer()
    try:
        g = make_gateway(gateway_config(idp), [idp.upstream])
        assert call(g.port, idp.token(), BODY).status == 200  # the old key is loaded
        forged = idp.forged({"alg": "RS256", "typ": "JWT", "kid": "rs256-nobody-knows"})
        assert call(g.port, forged, BODY).status == 401  # starts the unknown-kid refetch cool-down
        idp.rotate()
        run, _ = claude(tmp_path, g, idp.token(sub="judy"))
        assert run.code == 0, run.stdout + run.stderr
        assert HELLO in run.stdout
        assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    finally:
        idp.stop()


# 2. The IdP down from the start: retried at first, then a settled 503 with the reason.

UNREACHABLE_IDP = ("gateway: sign-ins cannot be verified: the identity provider has been unreachable for 1 min. "
                   "This is on the gateway's side; try again later, and tell your administrator if it lasts")


def test_an_unreachable_identity_provider_fails_fast_after_a_while(make_gateway, stub, tmp_path):
    down = Signer()
    down.down = True
    try:
        config = gateway_config(down)
        config["oidc"]["keys_fail_fast_seconds"] = 3
        g = make_gateway(config, [down.upstream])
        token = down.token()
        # Within the threshold: 503 with Retry-After 5, which Claude Code retries; past it, it stops.
        run, _ = claude(tmp_path / "early", g, token)
        assert run.code == 1, run.stdout + run.stderr
        assert f"API Error: 503 {UNREACHABLE_IDP}" in shown(run), run.stdout
        assert run.seconds < 30, f"took {run.seconds:.1f} s"
        # Well past it: one attempt, no retry.
        before = refused(g, 503)
        run, _ = claude(tmp_path / "late", g, token)
        assert run.code == 1, run.stdout + run.stderr
        assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
        assert f"API Error: 503 {UNREACHABLE_IDP}" in shown(run), run.stdout
        assert refused(g, 503) == before + 1, "Claude Code retried the settled 503"
        assert stub.requests == []
    finally:
        down.stop()


# 7. The provider unreachable: Envoy's or nginx's own answer, in Anthropic's shape.

def test_an_unreachable_provider_is_shown_in_claude_code(host, signer, tmp_path):
    g = gateway_class(host)(gateway_config(signer), free_port(), [signer.upstream],
                            env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    try:
        # Claude Code retries a 5xx for about three minutes; with no retries it shows the first.
        run, _ = claude(tmp_path, g, signer.token(), settings_env={"CLAUDE_CODE_MAX_RETRIES": "0"})
        assert run.code == 1, run.stdout + run.stderr
        assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
        provider = r"API Error: 50[23] gateway: the AI provider could not be reached.*try again shortly\."
        assert re.search(provider, shown(run)), run.stdout
    finally:
        g.stop()


def test_the_provider_refusing_the_gateways_key_is_shown_as_the_gateways_problem(make_gateway, signer, stub, tmp_path):
    # Anthropic says "invalid x-api-key"; Claude Code replaces any error naming x-api-key with
    # "Invalid API key · Fix external API key", sending the person to fix a key they do not have.
    g = make_gateway(gateway_config(signer), [signer.upstream], env={"ANTHROPIC_API_KEY": "sk-revoked"})
    run, helper_runs = claude(tmp_path, g, signer.token())
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s (x-should-retry: false)"
    assert "Fix external API key" not in run.stdout
    assert "the AI provider refused the gateway's own credentials" in shown(run), run.stdout
    assert "tell your administrator" in shown(run)
    assert helper_runs == 1, "a 502, not a 401: the helper is not re-run"


def test_a_body_over_the_gateways_limit_names_that_limit(make_gateway, signer, stub, tmp_path):
    # Claude Code shows every 413 as its own "Request too large (max 32MB)", the API's limit; the
    # gateway's (here 60000 bytes, below one Claude Code request) comes in a 400 it shows as sent.
    g = make_gateway(gateway_config(signer, max_body_bytes=60000), [signer.upstream])
    run, helper_runs = claude(tmp_path, g, signer.token())
    assert run.code == 1, run.stdout + run.stderr
    assert run.seconds < SETTLED, f"took {run.seconds:.1f} s"
    assert "max 32MB" not in run.stdout
    assert "larger than this gateway's limit of 60000 bytes" in shown(run), run.stdout
    assert helper_runs == 1
    assert stub.requests == []
