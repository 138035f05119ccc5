"""The holes outside attacks found, each closed and proven in real Envoy (and nginx, where the host
can do it): requests that end with HTTP/2 trailers, cancelled requests, absurd or unreadable usage
from the upstream, repeated credential headers, Retry-After agreeing with RateLimit-Reset, strict
JWT claims, header values that are not UTF-8, key callouts cut after their headers, the provider
refusing the gateway's key, and a JWKS listing a key twice."""
import json
import time
from types import SimpleNamespace

import jwt as pyjwt
import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness import windows
from tests.harness.client import call
from tests.harness.raw import h2_request, http1, send_and_hang_up
from tests.harness.signer import AUDIENCE, Signer, b64url

BODY = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 1000,
                   "messages": [{"role": "user", "content": "hello"}]}).encode()


def h2_headers(token, extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":authority", "gateway"),
            (":path", "/v1/messages?beta=true"), ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"), ("authorization", f"Bearer {token}"), ("x-api-key", token),
            *extra]


def upstream_headers(stub, i=-1):
    return {k.lower(): v for k, v in stub.requests[i]["headers"]}


@pytest.mark.envoy_only("ngx_wasm_module has no request trailers callback and the harness serves HTTP/1.1")
def test_http2_trailers_go_through_the_whole_check(gateway, signer, stub):
    token = signer.token()
    spoof = [("x-user-tier", "power"), ("x-authenticated-user", "mallory")]
    status, _, body = h2_request(gateway.port, h2_headers(token, spoof), [BODY[:20], BODY[20:]],
                                 trailers=[("x-trailer", "1")])
    assert status == 200, body
    assert len(stub.requests) == 1
    seen = upstream_headers(stub)
    assert seen["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in seen
    assert (seen["x-user-tier"], seen["x-authenticated-user"]) == ("standard", "alice")
    forwarded = stub.requests[0]["body"]
    assert json.loads(forwarded)["model"] == "claude-haiku-4-5-20251001", "model rewritten on the trailers path"
    assert forwarded == BODY.replace(b'"claude-haiku-4-5"', b'"claude-haiku-4-5-20251001"')


@pytest.mark.envoy_only("ngx_wasm_module has no request trailers callback and the harness serves HTTP/1.1")
def test_http2_trailers_with_a_refused_model_never_reach_the_upstream(gateway, signer, stub):
    body = BODY.replace(b"claude-haiku-4-5", b"claude-opus-4-7")
    status, _, answer = h2_request(gateway.port, h2_headers(signer.token()), [body[:10], body[10:]],
                                   trailers=[("x-trailer", "1")])
    assert status == 400
    assert "model not configured" in json.loads(answer)["error"]["message"]
    assert stub.requests == []


@pytest.mark.envoy_only("ngx_wasm_module has no request trailers callback and the harness serves HTTP/1.1")
def test_http2_trailers_before_keys_are_loaded_fail_closed(make_gateway, stub):
    slow = Signer()
    slow.delay = 1.5
    try:
        g = make_gateway(gateway_config(slow), [slow.upstream])
        forged = slow.forged({"alg": "RS256", "kid": slow.keys["RS256"].kid})
        status, _, _ = h2_request(g.port, h2_headers(forged), [BODY[:10], BODY[10:]], trailers=[("x-t", "1")])
        assert status == 401
        assert stub.requests == []
        status, _, _ = h2_request(g.port, h2_headers(slow.token()), [BODY], trailers=[("x-t", "1")])
        assert status == 200
        assert upstream_headers(stub)["x-api-key"] == UPSTREAM_KEY
    finally:
        slow.stop()


def test_a_cancelled_request_costs_at_least_its_estimate(make_gateway, signer, stub):
    config = gateway_config(signer, budgets={"reserve": "none"})
    config["tiers"][1]["limits"] = [{"limit": 1_000_000, "window_seconds": 600}]
    g = make_gateway(config, [signer.upstream])
    token = signer.token()
    estimate = len(BODY) // 4 + 1000  # body bytes / 4 + min(max_tokens, 4096)
    # The spend is compared across three requests: all inside one window (a sliding window's
    # previous share shrinks from its first second on).
    windows.inside_one_window(600, 10)
    before = int(call(g.port, token, BODY).headers["x-ai-ratelimit-remaining-600-anthropic"])
    spent = sum(stub.usage.values())
    stub.first_byte_delay = 2.0
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {token}\r\ncontent-length: {len(BODY)}")
    send_and_hang_up(g.port, head, BODY, after=0.5)
    time.sleep(1.0)
    stub.first_byte_delay = 0.0
    assert len(stub.requests) == 2, "the cancelled request did reach the upstream"
    after = int(call(g.port, token, BODY).headers["x-ai-ratelimit-remaining-600-anthropic"])
    assert before - after == spent + estimate, "the first answer's usage plus the cancelled request's estimate"
    assert g.wait_for_log('"estimated":true'), "the abandoned request's record is in the log"


@pytest.mark.parametrize("case", ["absurd", "2^64", "1e30", "float", "string", "no usage", "stream with 2^64"])
def test_usage_that_cannot_be_believed_costs_the_estimate_never_less(make_gateway, signer, stub, case):
    """Absurd usage (2^63, 2^64 - 1) never wraps or lowers a counter. A 200 whose usage does not
    parse as whole numbers (or that has none) used to be charged 0 as a complete answer: a budget
    bypass for whoever can shape the answer. Each now costs the estimate."""
    config = gateway_config(signer, budgets={"reserve": "none"})
    config["tiers"][1]["limits"] = [{"limit": 1_000_000, "window_seconds": 600}]
    g = make_gateway(config, [signer.upstream])
    token = signer.token()
    windows.inside_one_window(600, 10)
    before = int(call(g.port, token, BODY).headers["x-ai-ratelimit-remaining-600-anthropic"])
    spent = sum(stub.usage.values())
    body = BODY
    if case == "no usage":
        stub.force(200, {"id": "m", "type": "message", "role": "assistant", "content": []})
    else:
        value = {"absurd": 2**63, "2^64": 2**64, "1e30": 1e30, "float": 1.0, "string": "5000",
                 "stream with 2^64": 2**64}[case]
        stub.usage = {"input_tokens": value, "output_tokens": 2**64 - 1 if case == "absurd" else value,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if case.startswith("stream"):
            body = json.dumps({**json.loads(BODY), "stream": True}).encode()
    answer = call(g.port, token, body)
    assert answer.status == 200
    stub.usage = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 1000,
                  "cache_read_input_tokens": 2000}
    assert sum(stub.usage.values()) == spent, "the stub's usage is back to what the first answer had"
    after = int(call(g.port, token, BODY).headers["x-ai-ratelimit-remaining-600-anthropic"])
    assert before - after == spent + len(body) // 4 + 1000, "charged the estimate, no wrap, not 0"
    assert g.wait_for_log("implausible usage" if case == "absurd" else "could not read the answer's usage")
    deadline = time.monotonic() + 5
    while not any(r.get("estimated") for r in g.usage_records()):
        assert time.monotonic() < deadline, "the record says the usage was estimated"
        time.sleep(0.1)


def test_repeated_credential_headers_are_refused(gateway, signer, stub, host):
    token = signer.token()
    for name in ("x-api-key", "authorization", "x-user-tier", "x_user_tier", "accept-encoding"):
        value = token if name == "x-api-key" else "gzip" if name == "accept-encoding" else f"Bearer {token}"
        head = (f"POST /v1/messages HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
                f"{name}: {value}\r\n{name}: {value}\r\ncontent-length: {len(BODY)}")
        status, answer = http1(gateway.port, head, BODY)
        if host == "nginx" and name == "authorization":
            assert status == 400 and b"nginx" in answer, "nginx itself refuses a repeated Authorization"
        elif (name, host) == ("x_user_tier", "nginx"):
            # nginx drops names with underscores itself (`ignore_invalid_headers on`).
            assert status == 401, (name, answer)
        elif (name, host) == ("accept-encoding", "envoy"):
            # Envoy folds a repeated Accept-Encoding into one value, which the forward replaces.
            assert status == 401, (name, answer)
        elif name in ("x-user-tier", "x_user_tier", "accept-encoding"):
            # ngx sets or clears only a header's first copy, so each may come once.
            assert status == 400 and b"may be sent at most once" in answer, (name, answer)
        else:
            assert status == 401, (name, answer)
    assert stub.requests == []


@pytest.mark.parametrize("fillers", [95, 150])
def test_guarded_headers_hidden_past_a_hundred_headers_never_reach_the_upstream(gateway, signer, stub, host, fillers,
                                                                               monkeypatch):
    """ngx_wasm_module hands the filter the first 100 header pairs only: second copies of the
    headers the gateway sets, sent after 95 fillers, went upstream beside the gateway's own. Now a
    list at that cap is refused on nginx (431, in Anthropic's shape), as Envoy refuses it itself."""
    import http.client

    # The stand-in upstream (Python's http.server, in this process) would itself refuse more than
    # 100 headers with a 431, and record nothing: let it take whatever comes through.
    monkeypatch.setattr(http.client, "_MAXHEADERS", 1000)
    token = signer.token()
    headers = [("content-type", "application/json"), ("authorization", f"Bearer {token}"),
               ("content-length", str(len(BODY))), *((f"x-filler-{i}", str(i)) for i in range(fillers)),
               ("x-user-tier", "power"), ("x-authenticated-user", "mallory"), ("x-api-key", "sk-ant-attacker"),
               ("x-gateway-target", "evil"), ("content-encoding", "gzip")]
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=15)
    try:
        conn.putrequest("POST", "/v1/messages", skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(BODY)
        answer = conn.getresponse()
        status, text = answer.status, answer.read()
    finally:
        conn.close()
    assert status == 431, text
    assert stub.requests == []
    if host == "nginx":
        error = json.loads(text)["error"]
        assert error["type"] == "invalid_request_error" and "fewer than 100 headers" in error["message"], error
    # With the same headers up front, the request goes through as ever.
    assert call(gateway.port, token, BODY, headers={f"x-filler-{i}": str(i) for i in range(60)}).status == 200


def test_retry_after_and_ratelimit_reset_agree(make_gateway, signer, stub):
    config = gateway_config(signer, budgets={"reserve": "none"})
    config["tiers"][1]["limits"] = [{"limit": 10, "window_seconds": 40}]
    g = make_gateway(config, [signer.upstream])
    token = signer.token()
    assert call(g.port, token, BODY).status == 200
    refused = call(g.port, token, BODY)
    assert refused.status == 429
    assert refused.headers["ratelimit-reset"] == refused.headers["retry-after"]


def raw_signed(signer, header: bytes, payload: bytes) -> str:
    key = signer.keys["RS256"]
    signing_input = b64url(header) + "." + b64url(payload)
    signature = pyjwt.get_algorithm_by_name("RS256").sign(signing_input.encode(), key.private)
    return signing_input + "." + b64url(signature)


@pytest.mark.parametrize("case", ["float exp", "string nbf", "duplicate sub", "duplicate kid"])
def test_strict_claims_in_validly_signed_tokens(gateway, signer, stub, case):
    kid = signer.keys["RS256"].kid
    claims = signer.claims()
    header = json.dumps({"alg": "RS256", "kid": kid})
    if case == "float exp":
        payload = json.dumps(claims).replace(str(claims["exp"]), "1e308")
    elif case == "string nbf":
        payload = json.dumps({**claims, "nbf": "0"})
    elif case == "duplicate sub":
        payload = json.dumps(claims).replace("{", '{"sub": "root", ', 1)
    else:
        payload = json.dumps(claims)
        header = header.replace("{", '{"kid": "other", ', 1)
    token = raw_signed(signer, header.encode(), payload.encode())
    answer = call(gateway.port, token, BODY)
    # Bad time claims are the IdP's setup: a new token cannot fix them, so they fail fast (400).
    assert answer.status == (401 if case.startswith("duplicate") else 400), answer.body
    expected = "malformed" if case.startswith("duplicate") else "invalid_time_claim"
    assert f'error_description="{expected}"' in answer.headers["www-authenticate"]
    assert stub.requests == []


def test_a_token_without_kid_is_verified_by_the_one_key_of_its_alg(gateway, signer, stub):
    key = signer.keys["ES256"]
    token = pyjwt.encode(signer.claims(), key.private, algorithm="ES256")
    assert call(gateway.port, token, BODY).status == 200


def test_a_token_without_kid_beside_several_keys_of_its_alg_is_a_setup_error_shown_at_once(make_gateway, stub):
    """Which of two published ES256 keys signed a token naming none cannot be told, and a new
    sign-in brings another such token: a 400 that says so (it was a 401, which has Claude Code
    re-run its sign-in helper for minutes)."""
    from tests.harness.signer import Key

    idp = Signer()
    try:
        idp.published.append(Key("es256-second", "ES256"))
        g = make_gateway(gateway_config(idp), [idp.upstream])
        token = pyjwt.encode(idp.claims(), idp.keys["ES256"].private, algorithm="ES256")
        answer = call(g.port, token, BODY)
        assert answer.status == 400, answer.body
        assert answer.headers.get("x-should-retry") == "false"
        assert "names no signing key (kid)" in json.loads(answer.body)["error"]["message"]
        assert stub.requests == []
        assert call(g.port, idp.token(alg="ES256"), BODY).status == 200, "a token naming its key goes through"
    finally:
        idp.stop()


def test_the_connection_stays_usable_after_every_kind_of_refusal(make_gateway, signer, stub):
    """Each refusal, then a good request on the same keep-alive connection (ngx: a refusal sent
    before the body was read would make nginx parse the body as the next request)."""
    import http.client

    config = gateway_config(signer, max_body_bytes=2048, budgets={"reserve": "none"})
    config["tiers"][0]["limits"] = [{"limit": 1, "window_seconds": 3600, "window_type": "fixed"}]
    g = make_gateway(config, [signer.upstream])
    good, power = signer.token(), signer.token(groups=["claude-power-users"])
    opus = BODY.replace(b"claude-haiku-4-5", b"claude-opus-4-7")
    refusals = [
        ("no token", None, BODY, "/v1/messages", 401),
        # Who asks comes before what is asked: without a token, a 401 whatever the body.
        ("no token, no body", None, b"", "/v1/messages", 401),
        ("no token, encoded body", None, BODY, "/v1/messages", 401),
        ("no token, body too large", None, BODY + b" " * 4096, "/v1/messages", 401),
        ("expired token, no body", signer.token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), b"",
         "/v1/messages", 401),
        ("encoded body", good, BODY, "/v1/messages", 415),
        ("forged token", signer.forged({"alg": "RS256", "kid": signer.keys["RS256"].kid}), BODY, "/v1/messages", 401),
        ("no tier", signer.token(groups=["sales"]), BODY, "/v1/messages", 400),
        ("model not in tier", good, opus, "/v1/messages", 400),
        ("body too large", good, BODY + b" " * 4096, "/v1/messages", 400),
        ("unknown path", good, BODY, "/v1/other", 404),
        ("invalid JSON", good, b"{" + BODY, "/v1/messages", 400),
        ("budget spent", power, BODY, "/v1/messages", 429),
    ]
    windows.inside_one_window(3600, 120)  # the spent budget must stay spent to the last case
    assert call(g.port, power, BODY).status == 200  # spends the power tier's 1-token budget
    for name, token, body, path, status in refusals:
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=15)
        try:
            headers = {"content-type": "application/json"}
            if "encoded" in name:
                headers["content-encoding"] = "gzip"
            if token:
                headers["authorization"] = f"Bearer {token}"
            conn.request("POST", path, body=body, headers=headers)
            first = conn.getresponse()
            first.read()
            assert first.status == status, name
            headers.pop("content-encoding", None)
            conn.request("POST", "/v1/messages", body=BODY, headers={**headers, "authorization": f"Bearer {good}"})
            second = conn.getresponse()
            assert second.status == 200, (name, second.read())
            second.read()
        finally:
            conn.close()


def test_a_header_value_that_is_not_utf8_is_answered_and_breaks_nothing(gateway, signer, stub):
    """HTTP allows any byte above 0x7f in a header value (obs-text); the filter must not trap on
    one (the Proxy-Wasm SDK's header reader would: it takes every value as UTF-8)."""
    token = signer.token()
    for name in ("x-note", "authorization", "anthropic-beta"):
        value = b"Bearer " + token.encode() if name == "authorization" else b"caf\xe9"
        head = (b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                + (b"" if name == "authorization" else b"authorization: Bearer " + token.encode() + b"\r\n")
                + name.encode() + b": " + value + (b"\xff" if name == "authorization" else b"") + b"\r\n"
                + b"content-length: " + str(len(BODY)).encode())
        status, answer = http1(gateway.port, head, BODY)
        if name == "authorization":
            # Not a bearer token the gateway can read: refused in Anthropic's error shape.
            assert status == 400 and b'"type":"authentication_error"' in answer, answer[:400]
        else:
            assert status == 200, (name, answer[:300])
    assert call(gateway.port, token, BODY).status == 200, "the filter still answers"


@pytest.mark.parametrize("claim, value", [("sub", "alice\r\nx-api-key: mine"), ("email", "alice@example.com\nx-a: b"),
                                          ("sub", "alice\u0000")])
def test_a_signed_identity_that_would_write_headers_upstream_is_refused(gateway, signer, stub, claim, value):
    """`sub` and `email` go upstream as header values: a line break there would let the token's
    holder add headers of their own (or, on some hosts, abort the VM). Refused as the IdP's
    problem (400, not retried), nothing forwarded."""
    answer = call(gateway.port, signer.token(**{claim: value}), BODY)
    assert answer.status == 400, answer.body
    assert 'error_description="unsafe_identity"' in answer.headers["www-authenticate"]
    assert answer.json()["error"]["type"] == "authentication_error"
    assert stub.requests == []
    assert call(gateway.port, signer.token(), BODY).status == 200


@pytest.mark.parametrize("cut", ["reset", "slow"])
def test_a_key_fetch_cut_after_its_headers_is_a_503_and_the_vm_lives_on(make_gateway, stub, cut):
    """The JWKS answer stops after its headers: a reset, or a body slower than the callout timeout.
    Envoy then has no callout headers to give, and ngx_wasm_module no body: reading either used to
    abort the VM (Envoy) or the nginx worker, and the waiting request hung."""
    idp = Signer()
    idp.jwks_cut = cut
    try:
        config = gateway_config(idp)
        config["oidc"]["callout_timeout_ms"] = 1000
        g = make_gateway(config, [idp.upstream])
        started = time.monotonic()
        answer = call(g.port, idp.token(), BODY, timeout=15)
        assert answer.status == 503, answer.body
        assert answer.json()["error"]["type"] == "api_error"
        assert time.monotonic() - started < 5, "answered, not left to hang"
        assert idp.fetches["jwks"] >= 1, "the JWKS was asked for and cut"
        idp.jwks_cut = None
        deadline = time.monotonic() + 15
        while (status := call(g.port, idp.token(), BODY, timeout=15).status) != 200:
            assert status == 503, status
            assert time.monotonic() < deadline, "the same VM (and nginx worker) did not recover"
            time.sleep(0.5)
        logs = g.logs()
        assert "panicked at" not in logs and "Uncaught RuntimeError" not in logs, logs[-2000:]
        assert "exited on signal" not in logs, "the nginx worker died"
    finally:
        idp.stop()


def test_the_upstreams_budget_headers_and_echoed_credentials_do_not_reach_the_client(make_gateway, signer, stub):
    """An upstream (a buggy proxy, a hostile one) that sends headers named like the gateway's
    budget headers, some twice, and echoes the key it got. The client got them all (and on
    nginx a repeated one cancelled the gateway's own value: no `remaining` at all)."""
    config = gateway_config(signer)
    for tier in config["tiers"]:
        tier["limits"] = [{"limit": 10_000_000, "window_seconds": 3600}]
    g = make_gateway(config, [signer.upstream])
    answer = {"id": "m", "type": "message", "role": "assistant", "content": [],
              "usage": {"input_tokens": 10, "output_tokens": 5}}
    stub.force(200, answer, [
        ("x-ai-ratelimit-remaining-3600-anthropic", "999999"), ("x-ai-ratelimit-remaining-3600-anthropic", "888888"),
        ("RateLimit-Reset", "777777"), ("ratelimit-reset", "666666"), ("x-ai-ratelimit-warning", "none"),
        ("x-ai-ratelimit-remaining-60-anthropic", "5"), ("x-echo", f"you sent {UPSTREAM_KEY}"),
        ("anthropic-ratelimit-unified-status", "allowed"), ("request-id", "req_stub")])
    got = call(g.port, signer.token(), BODY)
    assert got.status == 200, got.body
    assert got.all("x-ai-ratelimit-limit-3600-anthropic") == ["10000000"], got.header_list
    remaining = got.all("x-ai-ratelimit-remaining-3600-anthropic")
    assert len(remaining) == 1 and 9_000_000 < int(remaining[0]) < 10_000_000, got.header_list
    reset = got.all("ratelimit-reset")
    assert len(reset) == 1 and int(reset[0]) <= 3600, got.header_list  # the gateway's, within its window
    for name in ("x-ai-ratelimit-warning", "x-ai-ratelimit-remaining-60-anthropic", "x-echo"):
        assert got.all(name) == [], (name, got.header_list)
    assert UPSTREAM_KEY not in repr(got.header_list)
    # The provider's own headers pass.
    assert got.all("anthropic-ratelimit-unified-status") == ["allowed"] and got.all("request-id") == ["req_stub"]


@pytest.mark.parametrize("answer", ["key as the error's type", "key split by control characters", "gzip"])
def test_a_refusal_quoting_the_gateways_key_never_shows_it(make_gateway, signer, stub, answer):
    """The 502 that replaces a provider's 401 quotes what it said, but never the key the gateway
    sent, however the upstream dressed it up; and a refusal that came compressed is sent plain
    (it kept `content-encoding: gzip` on a plain JSON body Claude Code could not decode)."""
    import gzip

    g = make_gateway(gateway_config(signer), [signer.upstream])
    split = "\u0001".join(UPSTREAM_KEY[i:i + 6] for i in range(0, len(UPSTREAM_KEY), 6))
    if answer == "key as the error's type":
        stub.force(401, {"type": "error", "error": {"type": UPSTREAM_KEY, "message": "nope"}})
    elif answer == "key split by control characters":
        # json.dumps writes the control characters as `\u0001`: valid JSON.
        stub.force(401, {"type": "error", "error": {"type": "authentication_error", "message": f"invalid key {split}"}})
    else:
        body = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": "key revoked"}})
        stub.force(401, gzip.compress(body.encode()), {"content-type": "application/json", "content-encoding": "gzip"})
    got = call(g.port, signer.token(), BODY)
    assert got.status == 502, got.body
    assert "content-encoding" not in got.headers, got.headers
    message = got.error_message  # plain JSON
    squeezed = "".join(c for c in message if c.isalnum())
    assert "upstreamkey7f3a9c" not in squeezed, message
    assert "credentials (401" in message and "tell your administrator" in message, message
    assert g.wait_for_log("the provider refused the gateway's API key")
    logs = "".join(c for c in g.logs() if c.isalnum())
    assert "upstreamkey7f3a9c" not in logs


@pytest.mark.parametrize("answer", ["401 revoked key", "403 permission", "403 without a body"])
def test_the_provider_refusing_the_gateways_key_is_a_502_shown_at_once(make_gateway, signer, stub, answer):
    """Claude Code answers a 401 or 403 by re-running its sign-in helper and retrying for minutes,
    but only the administrator can fix the gateway's own key. A refusal without a body (Envoy sees
    its end at the headers, where no body can be added) became a 502 with no body at all."""
    config = gateway_config(signer)
    for tier in config["tiers"]:
        tier["limits"] = [{"limit": 10_000_000, "window_seconds": 3600}]
    if answer.startswith("401"):
        g = make_gateway(config, [signer.upstream], env={"ANTHROPIC_API_KEY": "sk-revoked"})
    elif answer == "403 permission":
        g = make_gateway(config, [signer.upstream])
        stub.force(403, {"type": "error", "error": {"type": "permission_error",
                                                    "message": "Your organization has been disabled."}})
    else:
        g = make_gateway(config, [signer.upstream])
        stub.force(403, None)
    token = signer.token()
    for body in (BODY, json.dumps({**json.loads(BODY), "stream": True}).encode()):
        got = call(g.port, token, body)
        assert got.status == 502, (got.status, got.body)
        assert got.headers.get("x-should-retry") == "false"
        assert got.headers.get("content-type") == "application/json"
        assert got.json()["error"]["type"] == "api_error"
        # Claude Code shows any message naming x-api-key as "Invalid API key · Fix external API key".
        assert "x-api-key" not in got.error_message.lower()
        said = {"401 revoked key": "401 authentication_error: stub: invalid API key",
                "403 permission": "403 permission_error: Your organization has been disabled.",
                "403 without a body": "credentials (403)"}[answer]
        assert said in got.error_message, got.error_message
        assert "tell your administrator" in got.error_message
        assert b"sk-revoked" not in got.body and token.encode() not in got.body
        # The answer still carries the person's budget, as every forwarded request's does.
        assert got.headers.get("x-ai-ratelimit-limit-3600-anthropic") == "10000000", got.headers
        if answer.startswith("403"):
            break
    assert g.wait_for_log("the provider refused the gateway's API key")
    assert "sk-revoked" not in g.logs()
    # Envoy writes its access log on its own flush interval (a second by default).
    deadline = time.monotonic() + 10
    while not any(r.get("status") == 502 for r in g.usage_records()):
        assert time.monotonic() < deadline, "the replaced answer left its usage record"
        time.sleep(0.2)


def test_a_jwks_listing_a_key_twice_still_verifies_its_tokens(make_gateway, stub):
    """Some IdPs list a key twice under one kid (once with `alg`, once without): every token of that
    kid used to be refused as signed by an unknown key, and no refetch could fix it."""
    idp = Signer()
    key = idp.keys["RS256"]
    idp.published.append(SimpleNamespace(jwk={k: v for k, v in key.jwk.items() if k != "alg"}))
    try:
        g = make_gateway(gateway_config(idp), [idp.upstream])
        assert call(g.port, idp.token(), BODY).status == 200
        forged = idp.forged({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, idp.claims(), signature=b"x" * 256)
        answer = call(g.port, forged, BODY)
        assert answer.status == 401, answer.body
        assert "signature" in answer.error_message, answer.error_message
    finally:
        idp.stop()


def test_an_idp_that_signs_with_a_key_outside_the_policy_is_a_setup_error_not_a_sign_in_loop(make_gateway, stub):
    """An IdP whose signing key is outside the key policy (here RSA-1024) gets no token verified.
    Each was refused with a 401, and Claude Code answers a 401 by running its sign-in helper again,
    for a fault no sign-in can mend: it is a 400 that says so, shown at once, nothing goes upstream,
    and the IdP is asked again at most once per cool-down."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    idp = Signer()
    key = idp.keys["RS256"]
    key.private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    n = key.private.public_key().public_numbers().n
    key.jwk["n"] = b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))
    idp.published = [key]
    try:
        g = make_gateway(gateway_config(idp), [idp.upstream])
        answer = call(g.port, idp.token(), BODY)
        assert answer.status == 400, answer.body
        error = json.loads(answer.body)["error"]
        assert error["type"] == "authentication_error"
        assert "signed with a key this gateway does not take" in error["message"], error
        assert answer.headers.get("x-should-retry") == "false"
        # A refetch at most once per cool-down (the IdP may have just replaced the key), not one
        # per token. Counted once the node has settled: a worker with no keys yet may still fetch
        # its first ones (its tick takes the other workers' from shared data within 500 ms). CI
        # once counted one fetch more than the refetch, most likely such a first fetch.
        time.sleep(1.5)
        fetches = idp.fetches["jwks"]
        assert [call(g.port, idp.token(), BODY).status for _ in range(5)] == [400] * 5
        assert idp.fetches["jwks"] <= fetches + 1, (fetches, idp.fetches["jwks"])
        assert stub.requests == []
    finally:
        idp.stop()


@pytest.mark.envoy_only("allow_on_headers_stop_iteration is Envoy's setting; nginx reads the body before the filter")
def test_envoy_that_does_not_hold_headers_gets_a_clear_refusal_not_a_hang(make_gateway, signer, stub):
    # Without the setting (Istio's WasmPlugin cannot set it) Envoy never hands the body of a held
    # request to the filter: the request went nowhere and hung until a timeout, with no log line.
    g = make_gateway(gateway_config(signer), [signer.upstream], hold_headers=False)
    started = time.monotonic()
    r = call(g.port, signer.token(), BODY, timeout=30)
    waited = time.monotonic() - started
    assert r.status == 500, r.body
    error = json.loads(r.body)["error"]
    assert error["type"] == "api_error"
    assert "allow_on_headers_stop_iteration: true" in error["message"]
    assert r.headers.get("x-should-retry") == "false", "a retry would wait as long again"
    assert 4.5 <= waited < 12, waited
    assert stub.requests == [], "nothing went upstream"
    assert g.wait_for_log("set `allow_on_headers_stop_iteration: true` in the Wasm filter's config")
    assert g.wait_for_log('"refusal":"body_not_seen"'), "the request leaves a usage record"
    assert UPSTREAM_KEY not in g.logs() and signer.token() not in g.logs()
    time.sleep(1.5)
    assert 'claude_sso_gateway_refusals_total{reason="body_not_seen"} 1' in g.prometheus()


def test_a_held_request_whose_body_starts_late_still_goes_through(gateway, signer, stub):
    # Once one request proved that Envoy holds headers (each worker learns it from the others at
    # its next 500 ms tick), a client whose body starts late is never cut short.
    assert call(gateway.port, signer.token(), BODY).status == 200
    time.sleep(1.2)
    import socket
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as s:
        token = signer.token()
        head = (f"POST /v1/messages?beta=true HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                f"anthropic-version: 2023-06-01\r\nauthorization: Bearer {token}\r\nx-api-key: {token}\r\n"
                f"content-length: {len(BODY)}\r\n\r\n").encode()
        s.sendall(head)
        time.sleep(6.5)
        s.sendall(BODY)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_an_anthropic_api_key_in_place_of_the_sign_in_is_told_apart_and_never_echoed(gateway, stub):
    """ANTHROPIC_API_KEY set without (or beside) the sign-in helper: Claude Code sends the key as
    `x-api-key`. A 400 shown at once that says to unset it, the key in no answer and no log line."""
    key = "sk-ant-api03-" + "Zq7" * 30 + "-AA"
    answer = call(gateway.port, None, BODY, api_key=key)
    assert answer.status == 400, answer.body
    assert answer.headers.get("x-should-retry") == "false"
    error = json.loads(answer.body)["error"]
    assert "unset ANTHROPIC_API_KEY" in error["message"], error
    assert "Zq7Zq7" not in answer.body.decode()
    assert stub.requests == []
    time.sleep(0.3)
    assert "Zq7Zq7" not in gateway.log_path.read_text()
