"""A Bedrock target in real Envoy (issue #10): the filter translates Claude Code's Anthropic
request, signs it with SigV4 (the stand-in recomputes the signature with botocore and refuses a
wrong one, as AWS does), and turns Bedrock's event stream back into Anthropic SSE; betas are
filtered, usage counted and budgets enforced as for Anthropic. Tiers mix providers: the standard
tier's sonnet goes to Bedrock, the power tier's opus to Anthropic."""
import json
import time

import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness.client import call, fixture, with_model
from tests.harness.claude import run_claude
from tests.harness.envoy import Envoy

sys_path_added = False
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from stub_upstream import BedrockAccount, StubUpstream, sse_events  # noqa: E402

BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
STREAM = fixture("request_main_stream.json")  # sonnet, streaming, with Claude Code's betas
JSON_BODY = fixture("request_automode_classifier_nonstream.json")  # sonnet, not streaming


@pytest.fixture(scope="module")
def aws():
    account = BedrockAccount(session_token="stub-session-token")
    s = StubUpstream(api_key=UPSTREAM_KEY, bedrock=account).start()
    yield s
    s.stop()


def bedrock_config(signer, account, limits=None):
    config = gateway_config(signer, budgets={"reserve": "none"})
    config["targets"]["bedrock"] = {
        "provider": "bedrock", "region": account.region,
        "access_key_id": account.access_key_id, "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
        "session_token_env": "AWS_SESSION_TOKEN"}
    for m in config["models"]:
        if m["alias"] == "claude-sonnet-4-6":
            m.update(target="bedrock", model_id=BEDROCK_MODEL)
    if limits:
        config["tiers"][1]["limits"] = limits
    return config


@pytest.fixture
def bedrock_gateway(aws, signer):
    account = aws.bedrock
    aws.reset()
    g = Envoy(bedrock_config(signer, account), aws.port, [signer.upstream],
              env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, "AWS_SECRET_ACCESS_KEY": account.secret_access_key,
                   "AWS_SESSION_TOKEN": account.session_token})
    yield g
    g.stop()


def sse(body: bytes):
    events = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_streamed_answer_arrives_as_anthropic_sse(bedrock_gateway, aws, signer):
    # Bedrock takes parameters as headers: a client choosing a pricier service tier or a guardrail
    # is not passed on, nor a date or token of its own for the signature.
    chosen = {"X-Amzn-Bedrock-Service-Tier": "priority", "x-amzn-bedrock-guardrailidentifier": "g-1",
              "X-Amz-Date": "20000101T000000Z", "x-amz-security-token": "client-token"}
    answer = call(bedrock_gateway.port, signer.token(), STREAM, headers=chosen)
    assert answer.status == 200, answer.body[:500]
    assert answer.headers["content-type"] == "text/event-stream"
    names = [name for name, _ in sse(answer.body)]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert "content_block_delta" in names
    sent = aws.requests[-1]
    headers = {k.lower(): v for k, v in sent["headers"]}
    assert sent["path"] == "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke-with-response-stream"
    assert headers["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDSTUBEXAMPLE/")
    assert "x-api-key" not in headers and "anthropic-beta" not in headers
    assert "x-amzn-bedrock-service-tier" not in headers and "x-amzn-bedrock-guardrailidentifier" not in headers
    assert headers["x-amz-date"] != "20000101T000000Z" and headers["x-amz-security-token"] == "stub-session-token"
    body = json.loads(sent["body"])
    assert "model" not in body and "stream" not in body
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "claude-code-20250219" not in body.get("anthropic_beta", []), "betas Bedrock refuses are dropped"


def test_non_streaming_and_errors_in_anthropic_shape(bedrock_gateway, aws, signer):
    answer = call(bedrock_gateway.port, signer.token(), JSON_BODY)
    assert answer.status == 200, answer.body[:300]
    assert answer.json()["type"] == "message"
    aws.force(429, {"message": "Too many requests, please wait before trying again."},
              {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"})
    throttled = call(bedrock_gateway.port, signer.token(), JSON_BODY)
    assert throttled.status == 429
    assert throttled.json()["type"] == "error" and "Too many requests" in throttled.error_message


def test_tiers_mix_providers(bedrock_gateway, aws, signer):
    power = signer.token(groups=["claude-power-users"])
    answer = call(bedrock_gateway.port, power, with_model(STREAM, "claude-opus-4-7"))
    assert answer.status == 200
    sent = aws.requests[-1]
    assert sent["path"].startswith("/v1/messages"), "opus goes to Anthropic"
    assert dict((k.lower(), v) for k, v in sent["headers"])["x-api-key"] == UPSTREAM_KEY


def test_usage_is_counted_and_budgets_hold_as_for_anthropic(aws, signer):
    account = aws.bedrock
    aws.reset()
    one = sum(aws.usage.values())
    g = Envoy(bedrock_config(signer, account, [{"limit": one, "window_seconds": 600}]), aws.port, [signer.upstream],
              env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, "AWS_SECRET_ACCESS_KEY": account.secret_access_key,
                   "AWS_SESSION_TOKEN": account.session_token})
    try:
        token = signer.token()
        first = call(g.port, token, STREAM)
        assert first.status == 200
        assert call(g.port, token, STREAM).status == 429, "the Bedrock answer's usage was charged"
        record = g.usage_records()[0]
        assert (record["provider"], record["provider_model"]) == ("bedrock", BEDROCK_MODEL)
        assert record["input_tokens"] == aws.usage["input_tokens"]
    finally:
        g.stop()


def test_one_hour_cache_writes_are_priced_apart_from_the_metrics_total(aws, signer):
    """Bedrock's invocation metrics (what AWS bills, and what the gateway charges) give only the
    total of the cache writes; the stream's `message_start` says how many were for an hour, and
    those are priced at `cache_write_1h`."""
    account = aws.bedrock
    aws.reset()
    config = bedrock_config(signer, account)
    price = {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3, "cache_write_1h": 6}
    for m in config["models"]:
        if m["alias"] == "claude-sonnet-4-6":
            m["price"] = price
    saved, g = aws.usage, None
    try:
        # The stand-in is shared by this module's tests: its usage is put back whatever happens.
        aws.usage = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 1000,
                     "cache_read_input_tokens": 2000,
                     "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600}}
        g = Envoy(config, aws.port, [signer.upstream],
                  env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, "AWS_SECRET_ACCESS_KEY": account.secret_access_key,
                       "AWS_SESSION_TOKEN": account.session_token})
        assert account.invocation_metrics
        assert call(g.port, signer.token(), STREAM).status == 200
        time.sleep(0.3)
        record = g.usage_records()[0]
        assert (record["provider"], record["cache_write_tokens"], record["cache_write_1h_tokens"]) == (
            "bedrock", 1000, 600)
        assert record["cost_usd"] == pytest.approx((120 * 3 + 30 * 15 + 400 * 3.75 + 600 * 6 + 2000 * 0.3) / 1e6)
    finally:
        aws.usage = saved
        if g is not None:
            g.stop()


def test_a_wrong_signature_is_refused_as_aws_does(aws, signer):
    account = aws.bedrock
    aws.reset()
    g = Envoy(bedrock_config(signer, account), aws.port, [signer.upstream],
              env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, "AWS_SECRET_ACCESS_KEY": "not-the-secret",
                   "AWS_SESSION_TOKEN": account.session_token})
    try:
        answer = call(g.port, signer.token(), JSON_BODY)
        # AWS answers 403; the person gets a 502 shown at once (a 403 would make Claude Code
        # re-run its sign-in helper for minutes over the gateway's own credentials).
        assert answer.status == 502
        assert answer.headers["x-should-retry"] == "false"
        assert answer.json()["type"] == "error"
        assert "refused the gateway's AWS credentials" in answer.error_message
        # The record says what the person got.
        deadline = time.monotonic() + 5
        while not g.usage_records() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["status"] for r in g.usage_records()] == [502]
        # The person is told AWS's error type; AWS's words (which name the account and the IAM
        # role when access is denied) go to the operator, with the type, and never the secret.
        assert "(InvalidSignatureException); retrying will not help" in answer.error_message, answer.error_message
        assert "Bedrock refused the gateway's AWS credentials (InvalidSignatureException: " in g.logs(), g.logs()[-2000:]
        assert "signature" in g.logs().split("(InvalidSignatureException: ", 1)[1][:300]
        assert "not-the-secret" not in g.logs()
    finally:
        g.stop()


def test_claude_code_completes_a_streaming_turn_through_bedrock(bedrock_gateway, aws, signer, tmp_path):
    run = run_claude(tmp_path, bedrock_gateway.port, signer.token())
    assert run.code == 0, run.stdout + run.stderr
    assert "Hello from the stand-in upstream." in run.stdout
    assert any(r["path"].startswith("/model/") for r in aws.requests)


def test_count_tokens_for_a_bedrock_model_is_answered_with_the_estimate_and_refuses_nothing(
        bedrock_gateway, aws, signer):
    """Bedrock's CountTokens takes another body, so Claude Code's count_tokens for a Bedrock model
    is answered by the gateway with the estimate its budgets use (body bytes / 4), never sent to
    AWS; its record is a request like any other (status 200, no refusal), not a refusal the report
    would count."""
    aws.reset()
    answer = call(bedrock_gateway.port, signer.token(), STREAM, path="/v1/messages/count_tokens?beta=true")
    assert answer.status == 200, answer.body
    assert answer.json() == {"input_tokens": len(STREAM) // 4}
    assert aws.requests == [], "nothing reached AWS"
    deadline = time.monotonic() + 5
    while not (records := bedrock_gateway.usage_records()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(r["status"], r["refusal"], r["input_tokens"], r["model"]) for r in records] == [
        (200, None, 0, json.loads(STREAM)["model"])]
    # Nothing was forwarded: no request in the forwarded requests' metrics, no refusal either.
    time.sleep(1.5)  # the filter's metrics flush
    stats = bedrock_gateway.stats()
    counted = {k: v for k, v in stats.items() if v and ("requests_total" in k or "refusals_total" in k)}
    assert counted == {}, counted


def test_on_kongs_runtime_a_bedrock_target_is_refused_and_nothing_leaves(stub, signer, tmp_path):
    """nginx forwards the URI the client sent, not the `:path` the filter sets, so a request
    signed for Bedrock went to the route's upstream (the Anthropic API) with the conversation, the
    session token and, where Authorization is passed on (a Kong route), the signature. Now it is
    refused before anything is sent, shown at once, and the operator is told why."""
    from tests.harness.nginx import Nginx

    account = BedrockAccount(session_token="FQoGZXIvYXdzEXAMPLESESSIONTOKENzzzz")
    g = Nginx(bedrock_config(signer, account, limits=[{"limit": 10_000_000, "window_seconds": 3600}]),
              stub.port, [signer.upstream], location_extra="proxy_set_header Authorization $http_authorization;\n",
              env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, "AWS_SECRET_ACCESS_KEY": account.secret_access_key,
                   "AWS_SESSION_TOKEN": account.session_token})
    try:
        stub.reset()
        answer = call(g.port, signer.token(), STREAM)
        assert answer.status == 502, answer.body
        assert answer.json()["error"]["type"] == "api_error"
        assert answer.headers.get("x-should-retry") == "false"
        assert "cannot reach; retrying will not help" in answer.error_message, answer.error_message
        # It names what the person can use instead on this gateway (the tier's Anthropic-backed models).
        assert "switch with /model): claude-haiku-4-5." in answer.error_message, answer.error_message
        assert stub.requests == [], "nothing left the gateway"
        assert g.wait_for_log('"bedrock" is a Bedrock target')
        records = g.usage_records()
        assert [(r["status"], r["refusal"], r["input_tokens"]) for r in records] == [(502, "bedrock_needs_envoy", 0)]
        # Real Claude Code shows it at once and does not retry (it calls every 5xx "usually
        # temporary", which the message answers), and works with the model the message names.
        run = run_claude(tmp_path / "refused", g.port, signer.token())
        text = " ".join(run.stdout.split())
        assert run.code == 1 and run.seconds < 20, (run.code, run.seconds, text)
        assert "cannot reach; retrying will not help" in text and "claude-haiku-4-5" in text, text
        assert stub.requests == [] and len(g.usage_records()) == 2, g.usage_records()
        run = run_claude(tmp_path / "haiku", g.port, signer.token(), args=("--model", "claude-haiku-4-5"))
        assert run.code == 0, run.stdout + run.stderr
        stub.reset()
        # The Anthropic-backed model still works.
        power = signer.token(groups=["claude-power-users"])
        assert call(g.port, power, with_model(STREAM, "claude-opus-4-7")).status == 200
        assert len(stub.requests) == 1 and stub.requests[0]["path"].startswith("/v1/messages")
    finally:
        g.stop()


def test_a_target_without_a_route_of_its_own_is_refused_not_sent_to_another_provider(aws, signer):
    """A second Bedrock target (another region, another quota) whose operator forgot its route
    fell through to the catch-all Anthropic route: the request signed for Bedrock, with its
    session token, went to the Anthropic API. The samples' routes (the harness's are the same)
    match every target by name and refuse the rest."""
    account = aws.bedrock
    aws.reset()
    config = bedrock_config(signer, account)
    config["targets"]["bedrock-eu"] = config["targets"].pop("bedrock")
    for m in config["models"]:
        if m["target"] == "bedrock":
            m["target"] = "bedrock-eu"
    g = Envoy(config, aws.port, [signer.upstream],
              env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, "AWS_SECRET_ACCESS_KEY": account.secret_access_key,
                   "AWS_SESSION_TOKEN": account.session_token})
    try:
        answer = call(g.port, signer.token(), STREAM)
        assert answer.status == 502, answer.body
        assert answer.headers.get("x-should-retry") == "false"
        assert "no route to the provider" in answer.error_message, answer.error_message
        assert aws.requests == [], "nothing left the gateway"
        assert "x-gateway-no-route" not in answer.headers, answer.headers
        # The operator reads what happened, in the log and in the usage record.
        assert g.wait_for_log("the proxy has no route for the target of model \"claude-sonnet-4-6\"")
        deadline = time.monotonic() + 5
        while not g.usage_records() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(r["status"], r["refusal"]) for r in g.usage_records()] == [(502, "no_route")]
        stats = g.stats("cluster.")
        assert stats.get("cluster.anthropic.upstream_rq_total", 0) == 0 and \
            stats.get("cluster.bedrock.upstream_rq_total", 0) == 0, stats
        # The Anthropic target's route still serves its models.
        power = signer.token(groups=["claude-power-users"])
        assert call(g.port, power, with_model(STREAM, "claude-opus-4-7")).status == 200
        assert len(aws.requests) == 1 and "x-gateway-target" not in dict(aws.requests[0]["headers"])
    finally:
        g.stop()
