"""Token budgets in real Envoy (two workers): exact counting of streamed and JSON answers,
per-tier and per-person windows, Retry-After, the rate-limit headers and the overshoot bound."""
import copy
import json
import math
import re
import threading
import time

import pytest

from tests.conftest import gateway_config
from tests.harness import windows
from tests.harness.claude import run_claude
from tests.harness.client import call, cut_after, fixture, with_model
from tests.harness.signer import Signer

STREAM = fixture("request_title_small_fast_model.json")  # streaming, 4 KB
JSON_BODY = fixture("request_automode_classifier_nonstream.json")  # non-streaming


def per_request(stub):
    """Total tokens the stand-in upstream reports for each answer."""
    return sum(stub.usage.values())


def budget_gateway(make_gateway, signer, limits, reserve="none", **tier):
    config = gateway_config(signer, budgets={"reserve": reserve})
    config["tiers"][1].update(limits=limits, **tier)
    return make_gateway(config, [signer.upstream])


def remaining(answer, window):
    return int(answer.headers[f"x-ai-ratelimit-remaining-{window}-anthropic"])


def wait_for_window_start(window, margin=3):
    """Sleeps until at least `margin` seconds remain in the current fixed window."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.05)


def test_tier_runs_out_then_recovers_as_the_window_slides(make_gateway, signer, stub):
    window = 12
    limit = 2 * per_request(stub) - 100  # the second answer crosses it
    g = budget_gateway(make_gateway, signer, [{"limit": limit, "window_seconds": window}])
    wait_for_window_start(window)
    token = signer.token()
    assert call(g.port, token, STREAM).status == 200
    assert call(g.port, token, STREAM).status == 200
    refused = call(g.port, token, STREAM)
    assert refused.status == 429
    body = refused.json()
    assert body["error"]["type"] == "rate_limit_error"
    message = body["error"]["message"]
    assert f"your tier's shared limit of {limit} tokens per {window} s" in message, message
    assert "sliding window: use older than 12 s stops counting, so room comes back gradually" in message
    assert re.search(r"Try again in \d+ s \(at \d\d:\d\d:\d\d UTC\)", message), message
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2 * window
    assert "x-should-retry" not in refused.headers, "a short wait lets Claude Code retry"
    assert len(stub.requests) == 2, "refused before any upstream call"
    refused_at = time.monotonic()
    # Whole seconds on the host's clock: the check before Retry-After keeps 3 s of slack.
    if retry_after > 3:
        time.sleep(retry_after - 3)
        assert call(g.port, token, STREAM).status == 429, "room came back long before Retry-After"
    time.sleep(max(0.0, refused_at + retry_after + 1.0 - time.monotonic()))
    assert call(g.port, token, STREAM).status == 200, "no room after Retry-After"


def test_two_windows_are_enforced_together(make_gateway, signer, stub):
    one = per_request(stub)
    limits = [{"limit": 100 * one, "window_seconds": 60},
              {"limit": one + 1, "window_seconds": 3600, "window_type": "fixed"}]
    g = budget_gateway(make_gateway, signer, limits)
    token = signer.token()
    # The refusal must come with a long wait (it failed once at 10:59:27, told "Try again in 33 s").
    windows.inside_one_window(3600, 120)
    first = call(g.port, token, STREAM)
    assert first.status == 200
    assert first.headers["x-ai-ratelimit-limit-60-anthropic"] == str(100 * one)
    assert first.headers["x-ai-ratelimit-limit-3600-anthropic"] == str(one + 1)
    assert call(g.port, token, STREAM).status == 200  # 1 token of room was left
    refused = call(g.port, token, STREAM)
    assert refused.status == 429
    assert "per 1 h" in refused.error_message and "starts over in full" in refused.error_message
    assert re.search(r"Try again in \d+ min( \d+ s)? \(at \d\d:\d\d(:\d\d)? UTC\)", refused.error_message), \
        refused.error_message
    assert abs(int(refused.headers["retry-after"]) - (3600 - time.time() % 3600)) <= 3, "room comes at the hour's turn"
    assert int(refused.headers["retry-after"]) > 60
    assert refused.headers["x-should-retry"] == "false", "a long wait must fail fast in Claude Code"


def test_per_person_budgets_isolate_people_of_one_tier(make_gateway, signer, stub):
    g = budget_gateway(make_gateway, signer, [{"limit": per_request(stub), "window_seconds": 600}], per="person")
    alice, bob = signer.token(sub="alice"), signer.token(sub="bob")
    assert call(g.port, alice, STREAM).status == 200
    assert call(g.port, alice, STREAM).status == 429
    assert call(g.port, bob, STREAM).status == 200
    assert call(g.port, bob, STREAM).status == 429
    assert "your personal limit" in call(g.port, alice, STREAM).error_message


def test_people_whose_counter_keys_share_a_crc32_keep_their_own_budgets(make_gateway, signer, stub, host):
    """Kong's store finds shared data by the key's CRC32 alone. The counters of `user17583` and
    `user87328` in this tier and window have keys with one CRC32 (0xfc860e7e, found by brute force
    as the filter names them): on nginx each write wiped the other's count, so neither limit held
    (alice 200, 429, bob 200, alice 200, ...). Each now keeps their own, on both hosts."""
    g = budget_gateway(make_gateway, signer, [{"limit": per_request(stub), "window_seconds": 600}], per="person")
    alice, bob = signer.token(sub="user17583"), signer.token(sub="user87328")
    seen = [(who, call(g.port, token, STREAM).status)
            for who, token in [("alice", alice), ("alice", alice), ("bob", bob), ("alice", alice), ("bob", bob)]]
    assert seen == [("alice", 200), ("alice", 429), ("bob", 200), ("alice", 429), ("bob", 429)]


def test_non_streaming_answers_are_counted_and_headers_decrease(make_gateway, signer, stub):
    limit = 10 * per_request(stub)
    g = budget_gateway(make_gateway, signer, [{"limit": limit, "window_seconds": 600}])
    token = signer.token()
    seen = []
    for body in (JSON_BODY, JSON_BODY, STREAM):
        answer = call(g.port, token, body)
        assert answer.status == 200
        assert "ratelimit-reset" in answer.headers
        seen.append(remaining(answer, 600))
    # Without a reserve, the headers show what was spent before each request.
    assert seen == [limit, limit - per_request(stub), limit - 2 * per_request(stub)]


def test_warning_header_once_the_share_is_spent(make_gateway, signer, stub):
    limit = 3 * per_request(stub)
    config = gateway_config(signer, budgets={"reserve": "none", "warning_share": 0.5})
    config["tiers"][1]["limits"] = [{"limit": limit, "window_seconds": 600}]
    g = make_gateway(config, [signer.upstream])
    token = signer.token()
    warnings = [call(g.port, token, STREAM).headers.get("x-ai-ratelimit-warning") for _ in range(3)]
    # Spent before each request: 0, 1/3, 2/3 of the limit; the warning starts past one half.
    assert warnings[:2] == [None, None]
    assert warnings[2].startswith(f"66% of {limit} tokens per 600 s for the tier"), warnings[2]


def test_reserve_is_held_and_settled_to_the_true_count(make_gateway, signer, stub):
    limit = 1_000_000
    g = budget_gateway(make_gateway, signer, [{"limit": limit, "window_seconds": 600}], reserve="estimate")
    token = signer.token()
    windows.inside_one_window(600, 10)
    first = call(g.port, token, STREAM)
    estimate = len(STREAM) // 4 + 4096  # bytes / 4 + reserve_output_tokens (max_tokens is 32000)
    assert remaining(first, 600) == limit - estimate
    second = call(g.port, token, STREAM)
    assert remaining(second, 600) == limit - per_request(stub) - estimate, "first request settled to its true usage"


def test_a_stream_the_client_cuts_is_charged_its_reported_prompt_not_its_bodys_size(make_gateway, signer, stub):
    """Claude Code's Esc closes the connection after `message_start` told the prompt (here mostly
    cache reads): the floor charged for an answer not seen whole is that prompt and the output
    reserve, not the body's size counted as uncached input."""
    limit = 1_000_000
    g = budget_gateway(make_gateway, signer, [{"limit": limit, "window_seconds": 600}])
    token = signer.token()
    windows.inside_one_window(600, 20)
    stub.usage = {"input_tokens": 3, "output_tokens": 30,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2000}
    stub.event_pause = 0.5
    request = json.loads(STREAM)
    request["system"] = [{"type": "text", "text": "x" * 120_000}]
    body = json.dumps(request).encode()
    cut_after(g.port, token, body)
    stub.event_pause = 0.0
    prompt = 3 + 2000
    reserve = 4096  # reserve_output_tokens (max_tokens is 32000): the provider may have gone on
    assert len(body) // 4 > 10 * prompt, "the body's guess would be far more"
    # Settled when the host ends the request; each probe before that spends its own answer.
    deadline = time.monotonic() + 10
    probes = 0
    while True:
        time.sleep(0.2)
        after = call(g.port, token, STREAM)
        assert after.status == 200, after.body
        before = limit - probes * per_request(stub)
        probes += 1
        if remaining(after, 600) != before or time.monotonic() > deadline:
            break
    assert remaining(after, 600) == before - (prompt + reserve)


def test_a_screenshot_in_the_conversation_is_held_as_an_image_not_as_its_bytes(make_gateway, signer, stub):
    """A pasted screenshot rides in every later turn as base64: 1.6 MB here, which its bytes over
    four held as 400,000 tokens at admission (and charged so for a request cut before any usage),
    where an image costs at most 4,800. Admission holds the rest of the body's bytes over four
    and the image at that bound."""
    limit = 2_000_000
    g = budget_gateway(make_gateway, signer, [{"limit": limit, "window_seconds": 600}], reserve="estimate")
    windows.inside_one_window(600, 20)
    request = json.loads(STREAM)
    shot = "iVBORw0KGgoAAAANSUhEUgAA" * 66_000
    request["messages"][0]["content"] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": shot}},
        {"type": "text", "text": "what is on this screen?"}]
    body = json.dumps(request, separators=(",", ":")).encode()
    assert len(body) // 4 > 390_000
    answer = call(g.port, signer.token(), body)
    assert answer.status == 200, answer.body
    held = limit - remaining(answer, 600)
    reserve = 4096  # reserve_output_tokens (max_tokens is 32000)
    assert held == (len(body) - len(shot)) // 4 + 4800 + reserve, held


@pytest.mark.envoy_only("plain nginx has no reader for proxy-wasm metrics (Kong's Prometheus plugin reads them)")
def test_usage_metrics_per_tier_and_model(make_gateway, signer, stub):
    g = budget_gateway(make_gateway, signer, [])
    call(g.port, signer.token(), STREAM)
    call(g.port, signer.token(), JSON_BODY)
    req = "wasmcustom.claude_sso_gateway_requests_total.tier.standard.model.{}.status_class.2xx.provider.anthropic"
    tok = "wasmcustom.claude_sso_gateway_tokens_total.tier.standard.model.{}.kind.{}"
    # The filter hands its per-tier counts to Envoy at its next tick (every 500 ms).
    deadline = time.monotonic() + 5
    while (stats := g.stats()).get(req.format("claude-sonnet-4-6"), 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats[req.format("claude-haiku-4-5")] == 1
    assert stats[req.format("claude-sonnet-4-6")] == 1
    assert stats[tok.format("claude-sonnet-4-6", "cache_read")] == stub.usage["cache_read_input_tokens"]
    assert stats[tok.format("claude-haiku-4-5", "output")] == stub.usage["output_tokens"]


@pytest.mark.parametrize("reserve", ["estimate"])
def test_concurrent_burst_stays_within_the_stated_overshoot(make_gateway, signer, stub, reserve):
    stub.event_pause = 0.1  # every answer takes about a second: all requests are in flight together
    limit = 10_000
    workers = 2
    g = budget_gateway(make_gateway, signer, [{"limit": limit, "window_seconds": 600}], reserve=reserve)
    token = signer.token()
    # Keys loaded on both workers first: this test is about the budget, not the first key fetch.
    time.sleep(1.0)
    statuses = []
    lock = threading.Lock()

    def one():
        status = call(g.port, token, STREAM).status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert admitted == len(stub.requests)
    estimate = len(STREAM) // 4 + 4096
    assert estimate >= per_request(stub), "estimates here over-count, so the bound is one estimate per worker"
    # README: with the reserve, the overshoot is at most one estimate per worker.
    assert admitted * per_request(stub) <= limit + workers * estimate
    assert admitted <= math.ceil(limit / estimate) + workers
    assert admitted >= 1


def hold_filled_gateway(make_gateway, signer, stub, event_pause, margin):
    """A gateway whose one limit (an hour, fixed) is exactly a STREAM request's estimate, and that
    request still streaming (every event `event_pause` s apart): the budget is full with its hold
    alone. Returns the gateway, the token, the request's thread and the list its answer goes to."""
    estimate = len(STREAM) // 4 + 4096
    assert per_request(stub) < estimate
    g = budget_gateway(make_gateway, signer, [{"limit": estimate, "window_seconds": 3600, "window_type": "fixed"}],
                       reserve="estimate")
    token = signer.token()
    windows.inside_one_window(3600, margin)
    stub.event_pause = event_pause
    first = []
    running = threading.Thread(target=lambda: first.append(call(g.port, token, STREAM)))
    running.start()
    deadline = time.monotonic() + 10
    while not stub.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stub.requests, "the running request never reached the upstream"
    return g, token, running, first


def test_a_budget_full_only_with_a_running_requests_hold_says_try_again_in_seconds(make_gateway, signer, stub):
    """Claude Code sends requests side by side (subagents, the title request): one admitted
    request's hold fills the budget while it runs. That is not spend: the next is told to retry in
    seconds (Claude Code gives up at once on a Retry-After past 60 s), and passes once the first
    settles for what it used."""
    estimate = len(STREAM) // 4 + 4096
    # The first answer takes about two seconds.
    g, token, running, first = hold_filled_gateway(make_gateway, signer, stub, 0.15, 60)
    second = call(g.port, token, STREAM)
    running.join()
    assert first[0].status == 200
    assert second.status == 429, second.body
    error = json.loads(second.body)["error"]
    assert error["type"] == "rate_limit_error"
    assert "nearly spent" in error["message"] and f"of which {estimate} is held" in error["message"], error
    assert second.headers["retry-after"] == "10"
    assert "x-should-retry" not in second.headers
    assert len(stub.requests) == 1, "the refused request went nowhere"
    stub.event_pause = 0
    third = call(g.port, token, STREAM)
    assert third.status == 200, third.body


def test_claude_code_rides_out_a_budget_full_with_a_running_requests_hold(make_gateway, signer, stub, tmp_path):
    """The real client, its budget full with the hold of another request of the person's that is
    still streaming: told to retry in seconds (budget_in_flight), Claude Code retries on its own
    and answers once that request has settled for what it used. With the window's wait (as
    before) it gave up at once."""
    # The running stream goes on (an event every 3 s) until Claude Code has been refused once: in
    # CI, Claude Code once started so slowly that a stream of fixed length had ended before its
    # request came, and nothing was held.
    g, token, running, first = hold_filled_gateway(make_gateway, signer, stub, 3.0, 300)
    runs = []
    claude = threading.Thread(target=lambda: runs.append(run_claude(tmp_path, g.port, token)))
    claude.start()

    def in_flight_refusals():
        return [r for r in g.usage_records() if r.get("refusal") == "budget_in_flight"]

    deadline = time.monotonic() + 120
    while not in_flight_refusals() and claude.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    stub.event_pause = 0
    claude.join()
    running.join()
    (run,) = runs
    assert first[0].status == 200
    assert run.code == 0, (run.stdout, run.stderr)
    assert "429" not in run.stdout and "Hello from the stand-in upstream" in run.stdout, run.stdout
    deadline = time.monotonic() + 5
    while not in_flight_refusals() and time.monotonic() < deadline:
        time.sleep(0.1)
    refusals = [r.get("refusal") for r in g.usage_records()]
    assert "budget_in_flight" in refusals, refusals
    assert "budget_exhausted" not in refusals, refusals


def test_claude_code_sees_the_429_promptly(make_gateway, signer, stub, tmp_path):
    g = budget_gateway(make_gateway, signer,
                       [{"limit": per_request(stub), "window_seconds": 3600, "window_type": "fixed"}])
    token = signer.token()
    # Near the hour's end the Retry-After is under a minute, and Claude Code waits it out.
    windows.inside_one_window(3600, 120)
    assert call(g.port, token, STREAM).status == 200
    run = run_claude(tmp_path, g.port, token)
    assert run.code == 1
    assert run.seconds < 30, f"took {run.seconds:.1f} s"
    assert "429" in run.stdout and "token budget spent" in run.stdout, run.stdout
    assert len(stub.requests) == 1


@pytest.mark.envoy_only("a live listener reload (LDS) is Envoy's")
def test_counters_survive_a_config_reload_that_keeps_the_tiers(make_gateway, signer, stub):
    limits = [{"limit": 2 * per_request(stub) - 100, "window_seconds": 600}]
    config = gateway_config(signer, budgets={"reserve": "none"})
    config["tiers"][1]["limits"] = limits
    g = make_gateway(config, [signer.upstream], reloadable=True)
    token = signer.token()
    assert [call(g.port, token, STREAM).status for _ in range(3)] == [200, 200, 429]
    # A new config (another model for the power tier, a different max body) with the same tiers.
    changed = copy.deepcopy(config)
    changed["models"].append({"alias": "claude-fable-5-2", "target": "anthropic", "model_id": "claude-fable-5-2"})
    changed["tiers"][0]["models"].append("claude-fable-5-2")
    changed["max_body_bytes"] = 5 * 1024 * 1024
    g.reload(changed)
    power = call(g.port, signer.token(groups=["claude-power-users"]), with_model(STREAM, "claude-fable-5-2"))
    assert power.status == 200, "the new config is in force"
    refused = call(g.port, token, STREAM)
    assert refused.status == 429, "the spent budget was forgotten by the reload"


def test_a_provider_that_cannot_be_reached_costs_nothing(host, signer):
    """Claude Code retries a 502/503 about ten times: none of those attempts reached the provider,
    and none may spend the person's budget (it would end in "token budget spent", not the outage)."""
    from stub_upstream import StubUpstream

    from tests.conftest import UPSTREAM_KEY
    from tests.harness.hosts import gateway_class

    up = StubUpstream(api_key=UPSTREAM_KEY).start()
    port = up.port
    config = gateway_config(signer, budgets={"reserve": "estimate"})
    config["tiers"][1]["limits"] = [{"limit": 10_000_000, "window_seconds": 3600}]
    g = gateway_class(host)(config, port, [signer.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    try:
        token = signer.token()
        windows.inside_one_window(3600, 30)
        before = remaining(call(g.port, token, STREAM), 3600)
        spent = sum(up.usage.values())
        # Pooled connections drop their next request; new ones are refused.
        up.down = True
        up.stop()
        for _ in range(3):
            failed = call(g.port, token, STREAM)
            assert failed.status in (502, 503), (failed.status, failed.body)
            # Envoy's local answer and nginx's own HTML page alike, in Anthropic's shape.
            assert failed.headers["content-type"] == "application/json", failed.headers
            assert "gateway: the AI provider could not be reached" in failed.error_message, failed.body
        up = StubUpstream(port=port, api_key=UPSTREAM_KEY).start()
        after = remaining(call(g.port, token, STREAM), 3600)
        assert before - after == spent, "the attempts that never reached the provider were charged"
    finally:
        g.stop()
        up.stop()


def test_a_request_an_error_page_takes_past_the_filter_is_still_settled_and_recorded(signer):
    """Kong sends nginx's own 502 to its error handler, another location: nginx then calls none of
    the filter's last callbacks for the request. Its hold stayed on the budget and its record was
    lost; it is settled (as unknown: at least its estimate) when nginx deletes its context."""
    from stub_upstream import StubUpstream

    from tests.conftest import UPSTREAM_KEY
    from tests.harness.hosts import gateway_class

    up = StubUpstream(api_key=UPSTREAM_KEY).start()
    config = gateway_config(signer, budgets={"reserve": "estimate"})
    config["tiers"][1]["limits"] = [{"limit": 10_000_000, "window_seconds": 3600}]
    g = gateway_class("nginx")(
        config, up.port, [signer.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY},
        location_extra="            error_page 502 @kong_error_handler;\n",
        server_extra="        location @kong_error_handler { return 502 '{\"message\":\"An invalid response was received from the upstream server\"}'; }\n")
    try:
        token = signer.token()
        assert call(g.port, token, STREAM).status == 200
        up.down = True
        assert call(g.port, token, STREAM).status == 502
        deadline = time.monotonic() + 10
        while len(records := g.usage_records()) < 2:
            assert time.monotonic() < deadline, f"the second request left no record: {records}"
            time.sleep(0.2)
        assert records[1]["status"] is None and records[1]["estimated"] is True, records[1]
        assert records[1]["sub"] == "alice"
        logs = g.logs()
        assert "exited on signal" not in logs, "an nginx worker died"
        up.down = False
        assert call(g.port, token, STREAM).status == 200, "the worker serves on"
    finally:
        g.stop()
        up.stop()


def test_two_configurations_in_one_host_for_other_idps_keep_their_budgets_apart(stub):
    """Two filter configurations in one nginx (Kong: two routes), each for its own IdP and each
    with a tier `standard`: counters were keyed by the tier's name alone, so the second team's
    traffic spent the first team's budget (seen: 429 "used 15750" of 9450 after one request)."""
    from tests.conftest import UPSTREAM_KEY
    from tests.harness.envoy import free_port
    from tests.harness.nginx import FILTER, Nginx, kong_json, nginx_string

    idp_a, idp_b = Signer(), Signer()
    one = per_request(stub)
    try:
        a = gateway_config(idp_a, budgets={"reserve": "none"})
        a["tiers"][1]["limits"] = [{"limit": 3 * one, "window_seconds": 600}]
        b = gateway_config(idp_b, budgets={"reserve": "none"})
        b["tiers"][1]["limits"] = [{"limit": 1000 * one, "window_seconds": 600}]
        port_b = free_port()
        server_b = (f"    server {{\n        listen 127.0.0.1:{port_b};\n        location / {{\n"
                    f"            proxy_wasm {FILTER} {nginx_string(kong_json(b))};\n"
                    f"            proxy_pass http://anthropic;\n            proxy_set_header Authorization \"\";\n"
                    f"        }}\n    }}\n")
        g = Nginx(a, stub.port, [idp_a.upstream, idp_b.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY},
                  http_extra=server_b)
        try:
            windows.inside_one_window(600, 30)
            assert call(g.port, idp_a.token(), STREAM).status == 200
            for i in range(4):
                answer = call(port_b, idp_b.token(sub=f"bob{i}"), STREAM)
                assert answer.status == 200, answer.body
            # What an answer's headers say is before its own use is settled.
            assert int(answer.headers["x-ai-ratelimit-remaining-600-anthropic"]) == 997 * one, answer.headers
            second = call(g.port, idp_a.token(sub="alice"), STREAM)
            assert second.status == 200, second.body
            assert int(second.headers["x-ai-ratelimit-remaining-600-anthropic"]) == 2 * one, second.headers
        finally:
            g.stop()
    finally:
        idp_a.stop()
        idp_b.stop()
