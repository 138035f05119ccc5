"""Usage, cost and audit in real Envoy (issue #11): after a scripted mix of traffic (two tiers,
success, refusals, a 429, streamed and JSON answers) the Prometheus output has exactly the
expected counts and labels, every request left one usage record with the right fields, no record
or log line carries a token or the key, a real Prometheus scraping Envoy answers every dashboard
query with data that agrees with the records, and the report's totals equal the records' sums."""
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness.client import call, cut_after, fixture, with_model
from tests.harness import windows
from tests.harness.envoy import ROOT, free_port

sys.path.insert(0, str(ROOT / "dashboards"))
from check_dashboard import queries  # noqa: E402

STREAM = fixture("request_title_small_fast_model.json")  # haiku, streaming
JSON_BODY = fixture("request_automode_classifier_nonstream.json")  # sonnet, JSON
PRICES = {"claude-sonnet-4-6": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3},
          "claude-opus-4-7": {"input": 5, "output": 25, "cache_write": 6.25, "cache_read": 0.5}}


@pytest.fixture(scope="module")
def traffic(stub, signer):
    """Envoy after the scripted traffic, and what each request got."""
    from tests.harness.envoy import Envoy

    config = gateway_config(signer, budgets={"reserve": "none"})
    for m in config["models"]:
        if m["alias"] in PRICES:
            m["price"] = PRICES[m["alias"]]
    one = sum(stub.usage.values())
    config["tiers"][1]["limits"] = [{"limit": 3 * one, "window_seconds": 3600, "window_type": "fixed"}]
    g = Envoy(config, stub.port, [signer.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    alice, bob = signer.token(sub="alice"), signer.token(sub="bob", email="bob@example.com",
                                                         groups=["claude-power-users"])
    expired = signer.token(exp=int(time.time()) - 3600)
    session = {"x-claude-code-session-id": "5f1c0a52-7d7e-4c1e-9d55-2f7a1c9b3e10"}
    windows.inside_one_window(3600, 60)  # alice's third answer spends the hour's budget
    sent = [
        ("alice haiku stream", call(g.port, alice, STREAM, headers=session).status, 200),
        ("alice sonnet json", call(g.port, alice, JSON_BODY).status, 200),
        ("alice haiku stream 2", call(g.port, alice, STREAM).status, 200),
        ("alice over budget", call(g.port, alice, STREAM).status, 429),
        ("alice opus", call(g.port, alice, with_model(STREAM, "claude-opus-4-7")).status, 400),
        ("bob opus stream", call(g.port, bob, with_model(STREAM, "claude-opus-4-7")).status, 200),
        ("expired token", call(g.port, expired, STREAM).status, 401),
        ("token for another audience", call(g.port, signer.token(aud="other-app"), STREAM).status, 400),
    ]
    for name, got, want in sent:
        assert got == want, name
    time.sleep(0.5)
    yield g, {"alice": alice, "bob": bob, "expired": expired}
    g.stop()


def series(text: str) -> dict:
    """Prometheus text output as {'name{labels}': value} for the filter's series."""
    out = {}
    for line in text.splitlines():
        if line.startswith("claude_sso_gateway_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_prometheus_has_the_expected_counts_and_labels(traffic, stub):
    g, _ = traffic
    time.sleep(1.5)  # a stats flush, for the histograms
    s = series(g.prometheus())
    req = 'claude_sso_gateway_requests_total{{tier="{}",model="{}",status_class="2xx",provider="anthropic"}}'
    assert s[req.format("standard", "claude-haiku-4-5")] == 2
    assert s[req.format("standard", "claude-sonnet-4-6")] == 1
    assert s[req.format("power", "claude-opus-4-7")] == 1
    assert sum(v for k, v in s.items() if k.startswith("claude_sso_gateway_requests_total{")) == 4, \
        "refused requests are not counted as requests"
    tokens = 'claude_sso_gateway_tokens_total{{tier="standard",model="claude-haiku-4-5",kind="{}"}}'
    assert s[tokens.format("input")] == 2 * stub.usage["input_tokens"]
    assert s[tokens.format("cache_read")] == 2 * stub.usage["cache_read_input_tokens"]
    assert s['claude_sso_gateway_refusals_total{reason="model_not_allowed"}'] == 1
    assert s['claude_sso_gateway_refusals_total{reason="budget_exhausted"}'] == 1
    assert s['claude_sso_gateway_refusals_total{reason="expired"}'] == 1
    assert s['claude_sso_gateway_auth_failures_total{reason="expired"}'] == 1
    # A 400 a new sign-in cannot fix is a failed token check too.
    assert s['claude_sso_gateway_auth_failures_total{reason="wrong_audience"}'] == 1
    assert 'claude_sso_gateway_auth_failures_total{reason="model_not_allowed"}' not in s
    assert s['claude_sso_gateway_budget_refusals_total{tier="standard"}'] == 1
    assert s['claude_sso_gateway_budget_refusals_total{tier="power"}'] == 0
    assert s['claude_sso_gateway_jwks_fetches_total{outcome="ok"}'] >= 2  # discovery, then the JWKS
    assert s['claude_sso_gateway_latency_ms_count{tier="standard",model="claude-haiku-4-5"}'] == 2
    assert s['claude_sso_gateway_ttft_ms_count{tier="power",model="claude-opus-4-7"}'] == 1
    priced = s['claude_sso_gateway_cost_usd_micros_total{tier="power",model="claude-opus-4-7"}']
    u, p = stub.usage, PRICES["claude-opus-4-7"]
    assert priced == round(u["input_tokens"] * p["input"] + u["output_tokens"] * p["output"]
                           + u["cache_creation_input_tokens"] * p["cache_write"]
                           + u["cache_read_input_tokens"] * p["cache_read"])
    assert not [k for k in s if "alice" in k or "bob" in k], "no per-person label"


def test_one_usage_record_per_request_with_the_right_fields(traffic, stub):
    g, tokens = traffic
    records = g.usage_records()
    assert len(records) == 8, records
    by = {(r["sub"], r["model"], r["status"]): r for r in records}
    first = records[0]
    assert (first["sub"], first["email"], first["tier"], first["model"], first["provider_model"],
            first["provider"], first["status"]) == ("alice", "alice@example.com", "standard", "claude-haiku-4-5",
                                                    "claude-haiku-4-5-20251001", "anthropic", 200)
    assert first["session"] == "5f1c0a52-7d7e-4c1e-9d55-2f7a1c9b3e10"
    assert (first["input_tokens"], first["output_tokens"], first["cache_write_tokens"],
            first["cache_read_tokens"]) == (120, 30, 1000, 2000)
    assert first["cost_usd"] is None, "haiku has no price"
    assert first["latency_ms"] >= first["ttft_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    opus = by[("bob", "claude-opus-4-7", 200)]
    assert opus["cost_usd"] == pytest.approx((120 * 5 + 30 * 25 + 1000 * 6.25 + 2000 * 0.5) / 1e6)
    refusals = sorted((r["status"], r["refusal"], r["sub"], r["tier"]) for r in records if r["refusal"])
    assert refusals == [(400, "model_not_allowed", "alice", "standard"),
                        (400, "wrong_audience", None, None),
                        (401, "expired", None, None),
                        (429, "budget_exhausted", "alice", "standard")]
    for r in records:
        if r["refusal"]:
            assert r["input_tokens"] == r["output_tokens"] == 0
    # A refused model is recorded as asked for, so a report by refusal and model shows it.
    refused = next(r for r in records if r["refusal"] == "model_not_allowed")
    assert (refused["model"], refused["provider_model"], refused["provider"]) == ("claude-opus-4-7", None, None)


def test_no_record_or_log_line_carries_a_token_or_the_key(traffic):
    g, tokens = traffic
    text = g.access_log_path.read_text() + g.logs()
    for secret in [UPSTREAM_KEY, *tokens.values()]:
        assert secret not in text
    # On Envoy the records go to the access log; the log line is kept for a record made after it
    # (a stream the client abandoned), so there are no duplicates here.
    assert g.logs().count("claude-sso-gateway: usage {") == 0


def test_the_report_totals_equal_the_sum_of_the_records(traffic, tmp_path):
    g, _ = traffic
    records = g.usage_records()
    out = subprocess.run(["cargo", "run", "-q", "-p", "claude-sso-report", "--", str(g.access_log_path),
                          "--by", "person", "--format", "json", "--chart", str(tmp_path / "usage.svg")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    total = report["total"]
    for field in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens"):
        assert total[field] == sum(r[field] for r in records), field
        assert sum(row[field] for row in report["rows"]) == total[field], field
    assert total["requests"] == len(records)
    assert total["refused"] == len([r for r in records if r["refusal"]])
    assert total["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in records))
    assert {row["person"] for row in report["rows"]} >= {"alice@example.com", "bob@example.com"}
    assert "<svg" in (tmp_path / "usage.svg").read_text()


def prometheus_binary():
    return shutil.which("prometheus")


def test_dashboard_queries_answer_from_a_real_prometheus(traffic):
    g, _ = traffic
    binary = prometheus_binary()
    assert binary, "prometheus is missing: make installs it (apt-get install prometheus)"
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "prometheus.yml"
        cfg.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [{
            "job_name": "envoy", "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": [f"127.0.0.1:{g.admin_port}"]}]}]}))
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={d}/data",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def query(expr):
                url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                with urllib.request.urlopen(url, timeout=5) as r:
                    answer = json.loads(r.read())
                assert answer["status"] == "success", answer
                return answer["data"]["result"]

            deadline = time.monotonic() + 30
            while True:
                try:
                    if query("claude_sso_gateway_tokens_total"):
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "Prometheus never scraped Envoy"
                time.sleep(0.5)
            # More traffic between scrapes, so rate() and increase() have a change to see.
            from tests.harness.client import call as again
            time.sleep(2)
            again(g.port, traffic[1]["bob"], with_model(STREAM, "claude-opus-4-7"))
            time.sleep(3)
            empty = [title for title, expr in queries(ROOT / "dashboards" / "claude-sso-gateway.json")
                     if not query(expr)]
            assert not empty, f"panels without data: {empty}"
            records = g.usage_records()
            tokens = sum(r["input_tokens"] + r["output_tokens"] + r["cache_write_tokens"] + r["cache_read_tokens"]
                         for r in records)
            assert float(query("sum(claude_sso_gateway_tokens_total)")[0]["value"][1]) == tokens
            forwarded = len([r for r in records if not r["refusal"]])
            assert float(query("sum(claude_sso_gateway_requests_total)")[0]["value"][1]) == forwarded
        finally:
            proc.terminate()
            proc.wait(10)


HOURLY = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 1000,
          "cache_read_input_tokens": 2000,
          "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600}}


def hourly_cost(price, one_hour_price):
    u = HOURLY
    return (u["input_tokens"] * price["input"] + u["output_tokens"] * price["output"]
            + 400 * price["cache_write"] + 600 * one_hour_price + u["cache_read_input_tokens"] * price["cache_read"]) / 1e6


def test_one_hour_cache_writes_are_priced_apart(make_gateway, host, stub, signer):
    """Claude Code may write the prompt cache for an hour (`cache_control.ttl: "1h"`), which costs
    twice the input price where a five-minute write costs 1.25 times. The answer says how many of
    its writes were for an hour (`usage.cache_creation`); the record (and, in Envoy, the cost
    metric) prices them as such: at the configured `cache_write_1h`, or twice `input` when none
    is set. On both hosts."""
    config = gateway_config(signer, budgets={"reserve": "none"})
    sonnet, opus = PRICES["claude-sonnet-4-6"], dict(PRICES["claude-opus-4-7"], cache_write_1h=11)
    for m in config["models"]:
        if m["alias"] == "claude-sonnet-4-6":
            m["price"] = sonnet
        if m["alias"] == "claude-opus-4-7":
            m["price"] = opus
    saved, stub.usage = stub.usage, dict(HOURLY)
    try:
        check_one_hour_pricing(make_gateway(config, [signer.upstream]), host, signer, sonnet, opus)
    finally:
        # The module's `traffic` fixture may be set up next, before the per-test reset.
        stub.usage = saved


def check_one_hour_pricing(g, host, signer, sonnet, opus):
    alice = signer.token(sub="alice")
    bob = signer.token(sub="bob", groups=["claude-power-users"])
    assert call(g.port, alice, with_model(STREAM, "claude-sonnet-4-6")).status == 200
    assert call(g.port, alice, JSON_BODY).status == 200
    assert call(g.port, bob, with_model(STREAM, "claude-opus-4-7")).status == 200
    deadline = time.monotonic() + 5
    while len(records := g.usage_records()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    records.sort(key=lambda r: (r["model"], r["time"]))
    assert [(r["model"], r["cache_write_tokens"], r["cache_write_1h_tokens"]) for r in records] == [
        ("claude-opus-4-7", 1000, 600), ("claude-sonnet-4-6", 1000, 600), ("claude-sonnet-4-6", 1000, 600)]
    want = [hourly_cost(opus, 11)] + [hourly_cost(sonnet, 2 * sonnet["input"])] * 2
    assert [r["cost_usd"] for r in records] == pytest.approx(want)
    if host == "envoy":
        time.sleep(1.5)  # a stats flush
        s = series(g.prometheus())
        metric = 'claude_sso_gateway_cost_usd_micros_total{{tier="{}",model="{}"}}'
        assert s[metric.format("standard", "claude-sonnet-4-6")] == round(2 * want[1] * 1e6)
        assert s[metric.format("power", "claude-opus-4-7")] == round(want[0] * 1e6)


def test_web_searches_are_recorded_and_priced_on_top_of_the_tokens(make_gateway, host, stub, signer):
    """Claude Code's WebSearch tool has the API run searches (`server_tool_use.web_search_requests`
    in the answer's last usage), billed per search on top of the tokens: $10 per 1,000 unless the
    price says `web_search_per_1k`. The record counts them and its cost (and a cost budget) includes
    them (a cost budget too: metering.rs), with a streamed and a JSON answer, on both hosts."""
    config = gateway_config(signer, budgets={"reserve": "none"})
    sonnet, haiku = PRICES["claude-sonnet-4-6"], None
    for m in config["models"]:
        if m["alias"] == "claude-sonnet-4-6":
            m["price"] = sonnet
        if m["alias"] == "claude-haiku-4-5":
            haiku = m["price"] = dict(PRICES["claude-sonnet-4-6"], web_search_per_1k=25)
    saved = stub.usage
    stub.usage = dict(saved, server_tool_use={"web_search_requests": 3})
    try:
        g = make_gateway(config, [signer.upstream])
        token = signer.token(sub="erin")
        assert call(g.port, token, STREAM).status == 200  # haiku, streamed
        assert call(g.port, token, JSON_BODY).status == 200  # sonnet, JSON
    finally:
        stub.usage = saved
    deadline = time.monotonic() + 5
    while len(records := g.usage_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    records.sort(key=lambda r: r["model"])
    assert [(r["model"], r.get("web_search_requests")) for r in records] == [
        ("claude-haiku-4-5", 3), ("claude-sonnet-4-6", 3)]
    u = saved

    def tokens(price):
        return (u["input_tokens"] * price["input"] + u["output_tokens"] * price["output"]
                + u["cache_creation_input_tokens"] * price["cache_write"]
                + u["cache_read_input_tokens"] * price["cache_read"]) / 1e6

    assert [r["cost_usd"] for r in records] == pytest.approx([tokens(haiku) + 3 * 25 / 1000,
                                                              tokens(sonnet) + 3 * 10 / 1000])
    # The report counts them per person, with their cost in the cost.
    log = g.access_log_path if host == "envoy" else g.log_path
    out = subprocess.run(["cargo", "run", "-q", "-p", "claude-sso-report", "--", str(log), "--format", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    total = json.loads(out.stdout)["total"]
    assert (total["web_searches"], total["requests"]) == (6, 2), total
    assert total["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))


def test_a_long_prompt_is_priced_at_the_long_context_rates(make_gateway, host, stub, signer):
    """A model priced higher for long prompts (`price.long_context`, as Sonnet with the 1M-token
    window above 200K) has every token of a request whose prompt (cache reads and writes included)
    is above the threshold priced at those rates, its output too; a shorter prompt at the base
    rates. On both hosts."""
    config = gateway_config(signer, budgets={"reserve": "none"})
    base = PRICES["claude-sonnet-4-6"]
    long = {"input": 6, "output": 22.5, "cache_write": 7.5, "cache_read": 0.6}
    u = stub.usage
    prompt = u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"]
    for m in config["models"]:
        if m["alias"] == "claude-sonnet-4-6":  # this answer's prompt is above its threshold
            m["price"] = dict(base, long_context=dict(long, above_prompt_tokens=prompt - 1))
        if m["alias"] == "claude-haiku-4-5":  # and exactly at this one's
            m["price"] = dict(base, long_context=dict(long, above_prompt_tokens=prompt))
    g = make_gateway(config, [signer.upstream])
    token = signer.token(sub="fred")
    assert call(g.port, token, STREAM).status == 200  # haiku, streamed
    assert call(g.port, token, JSON_BODY).status == 200  # sonnet, JSON
    deadline = time.monotonic() + 5
    while len(records := g.usage_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    records.sort(key=lambda r: r["model"])

    def cost(p):
        return (u["input_tokens"] * p["input"] + u["output_tokens"] * p["output"]
                + u["cache_creation_input_tokens"] * p["cache_write"] + u["cache_read_input_tokens"] * p["cache_read"]) / 1e6

    assert [(r["model"], r["cost_usd"]) for r in records] == [
        ("claude-haiku-4-5", pytest.approx(cost(base))), ("claude-sonnet-4-6", pytest.approx(cost(long)))]


def test_fast_mode_is_priced_at_its_rates_and_refused_where_it_has_none(make_gateway, host, stub, signer):
    """Fast mode (`/fast` in Claude Code: the `fast-mode-…` beta, and `usage.speed: "fast"` in the
    answer) costs several times the standard rates. A model priced with `price.fast` has a fast
    answer priced at those rates, streamed or not, and the record says `speed: fast`; a priced
    model without them refuses fast mode with a 400 that says to turn it off, before anything
    goes upstream. On both hosts."""
    config = gateway_config(signer, budgets={"reserve": "none"})
    base = PRICES["claude-sonnet-4-6"]
    fast = {"input": 30, "output": 150, "cache_write": 37.5, "cache_read": 3}
    for m in config["models"]:
        m["price"] = dict(base, fast=fast) if m["alias"] == "claude-haiku-4-5" else base
    g = make_gateway(config, [signer.upstream])
    token = signer.token(sub="flash")
    betas = {"anthropic-beta": "claude-code-20250219,fast-mode-2026-02-01"}
    refused = call(g.port, token, JSON_BODY, headers=betas)  # sonnet: no fast-mode price
    assert refused.status == 400, refused.body
    assert "/fast" in json.loads(refused.body)["error"]["message"]
    assert stub.requests == []
    stub.usage = dict(stub.usage, speed="fast")
    assert call(g.port, token, STREAM, headers=betas).status == 200  # haiku, streamed
    assert call(g.port, token, JSON_BODY.replace(b"claude-sonnet-4-6", b"claude-haiku-4-5"), headers=betas).status == 200
    deadline = time.monotonic() + 5
    while len(records := g.usage_records()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    u = stub.usage

    def cost(p):
        return (u["input_tokens"] * p["input"] + u["output_tokens"] * p["output"]
                + u["cache_creation_input_tokens"] * p["cache_write"] + u["cache_read_input_tokens"] * p["cache_read"]) / 1e6

    assert [(r["refusal"], r.get("speed")) for r in records] == [("fast_mode_not_priced", None), (None, "fast"),
                                                                 (None, "fast")], records
    assert [r["cost_usd"] for r in records[1:]] == pytest.approx([cost(fast)] * 2)


def test_every_sampling_step_of_a_compacting_request_is_counted(make_gateway, host, stub, signer):
    """Threshold compaction (`compact_20260112`) summarises the conversation in a sampling step of
    its own, which Anthropic bills and the top-level usage leaves out; `usage.iterations` lists
    every step. The record, the cost and the budget count them all (they counted the top level
    only: an eighth of a 180K-token conversation resent with a 50K trigger). On both hosts."""
    config = gateway_config(signer, budgets={"reserve": "none"})
    for m in config["models"]:
        m["price"] = PRICES["claude-sonnet-4-6"]
    g = make_gateway(config, [signer.upstream])
    stub.usage = {"input_tokens": 23000, "output_tokens": 1000, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0,
                  "iterations": [{"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
                                 {"type": "message", "input_tokens": 23000, "output_tokens": 1000}]}
    token = signer.token(sub="compacting")
    assert call(g.port, token, STREAM).status == 200
    assert call(g.port, token, JSON_BODY).status == 200
    deadline = time.monotonic() + 5
    while len(records := g.usage_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    price = PRICES["claude-sonnet-4-6"]
    assert [(r["input_tokens"], r["output_tokens"]) for r in records] == [(203_000, 4500)] * 2, records
    assert [r["cost_usd"] for r in records] == pytest.approx([(203_000 * price["input"] + 4500 * price["output"]) / 1e6] * 2)


def test_records_in_the_hosts_log_survive_its_default_level_and_the_report_reads_them(
        make_gateway, host, signer, stub, tmp_path):
    """Kong logs at `notice` by default and Istio's Envoy at `warning`. The records that go to the
    host's own log (every one on nginx, which has no access log of filter state; on Envoy the one
    made after its access log was written: a stream the client cut) are still there at that level,
    and the report reads them in that log's line format (nginx writes the request's context, `,
    client: …, request: "…"`, after the message). On Envoy the cut stream's record may be in the
    access log as well (Envoy does not always write it before the filter's last callback): the
    report counts it once."""
    level = {"envoy": "warning", "nginx": "notice"}[host]
    g = make_gateway(gateway_config(signer), [signer.upstream], log_level=level)
    token = signer.token(sub="dora", email="dora@example.com")
    assert call(g.port, token, JSON_BODY).status == 200
    stub.event_pause = 0.3
    try:
        cut_after(g.port, token, STREAM)
    finally:
        stub.event_pause = 0.0
    marker = "claude-sso-gateway: usage {"
    in_log = 2 if host == "nginx" else 1
    assert g.wait_for_log(marker, 10), g.logs()[-3000:]
    deadline = time.monotonic() + 10
    while g.logs().count(marker) < in_log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert g.logs().count(marker) == in_log, g.logs()[-3000:]
    files = [str(g.log_path)] + ([str(g.access_log_path)] if host == "envoy" else [])
    out = subprocess.run(["cargo", "run", "-q", "-p", "claude-sso-report", "--", *files,
                          "--by", "person", "--format", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["total"]["requests"] == 2, (out.stderr, report)
    assert [row["person"] for row in report["rows"]] == ["dora@example.com"]
    # The cut stream is charged what `message_start` reported (input and cache), not nothing.
    assert report["total"]["input_tokens"] == 2 * stub.usage["input_tokens"], report


def test_a_record_survives_whatever_identity_the_idp_issues(make_gateway, host, signer, stub):
    """nginx (Kong) cuts a log line at 2,048 bytes and every record there is a log line: a 3 KB
    `email` lost the record. Long identities are cut in the record (to stay one string per
    person), and U+2028, which JSON allows raw but many line readers split at, is escaped."""
    g = make_gateway(gateway_config(signer), [signer.upstream])
    email = "d" * 3000 + "@example.com"
    assert call(g.port, signer.token(sub="dora\u2028x", email=email), JSON_BODY).status == 200
    assert call(g.port, signer.token(sub="erin", email=email + "x"), JSON_BODY).status == 200
    deadline = time.monotonic() + 10
    while len(records := g.usage_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(records) == 2, g.logs()[-3000:]
    assert records[0]["sub"] == "dora\u2028x" and records[1]["sub"] == "erin"
    emails = [r["email"] for r in records]
    assert all(e.startswith("d" * 200) and "…#" in e and len(e) < 240 for e in emails), emails
    assert emails[0] != emails[1], "two people stay two"
    assert all(r["input_tokens"] == stub.usage["input_tokens"] for r in records)
