"""The gateway core in real Envoy (two workers) with the built filter: authentication, tiers,
model routing, what the upstream sees, key rotation and IdP outages."""
import json
import threading
import time

import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness.client import call, fixture, with_model
from tests.harness.signer import Signer

# Claude Code retries 401/403 for minutes; a settled "no tier" is a 400 that stops it at once.
NO_TIER_STATUS = 400

FIXTURE_BODIES = ["request_main_stream.json", "request_tool_result_followup.json",
                  "request_automode_classifier_nonstream.json", "request_title_small_fast_model.json"]


def header(request, name):
    values = [v for k, v in request["headers"] if k.lower() == name]
    return values[0] if values else None


def assert_anthropic_error(answer, status, error_type):
    assert answer.status == status, answer.body
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert answer.headers["content-type"] == "application/json"


# --- success paths -------------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURE_BODIES)
def test_captured_bodies_arrive_byte_for_byte_but_model(gateway, signer, stub, name):
    body = fixture(name)
    answer = call(gateway.port, signer.token(), body)
    assert answer.status == 200, answer.body
    [seen] = stub.requests
    expected = body if json.loads(body)["model"] != "claude-haiku-4-5" else with_model(body, "claude-haiku-4-5-20251001")
    assert seen["body"] == expected
    assert header(seen, "content-length") == str(len(expected))


@pytest.mark.parametrize("place", ["first", "middle", "last"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_rewrite_of_a_large_body_wherever_model_stands(gateway, signer, stub, place, chunked):
    # The filter replaces the body only up to the model's value (Envoy drains that prefix and
    # prepends the new one): the rest must arrive byte for byte, however the body came in.
    doc = json.loads(fixture("request_main_stream.json"))
    doc.pop("model")
    keys = list(doc)
    at = {"first": 0, "middle": keys.index("system"), "last": len(keys)}[place]

    def encode(model):
        items = [(k, doc[k]) for k in keys]
        items.insert(at, ("model", model))
        return json.dumps(dict(items), ensure_ascii=False).encode()

    body = encode("claude-haiku-4-5")
    answer = call(gateway.port, signer.token(), body, chunked=chunked)
    assert answer.status == 200, answer.body
    [seen] = stub.requests
    assert seen["body"] == encode("claude-haiku-4-5-20251001")
    assert header(seen, "content-length") in (str(len(seen["body"])), None)


@pytest.mark.parametrize("tier_group, model, sent_as", [
    pytest.param("claude-standard-users", "claude-sonnet-4-6", "claude-sonnet-4-6", id="standard-sonnet"),
    pytest.param("claude-standard-users", "claude-haiku-4-5", "claude-haiku-4-5-20251001", id="standard-haiku-rewritten"),
    pytest.param("claude-power-users", "claude-opus-4-7", "claude-opus-4-7", id="power-opus"),
    pytest.param("claude-power-users", "claude-sonnet-4-6", "claude-sonnet-4-6", id="power-sonnet"),
])
def test_each_tier_success_streaming(gateway, signer, stub, tier_group, model, sent_as):
    body = with_model(fixture("request_main_stream.json"), model)
    answer = call(gateway.port, signer.token(groups=[tier_group]), body)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream"
    assert b"event: message_stop" in answer.body
    [seen] = stub.requests
    assert json.loads(seen["body"])["model"] == sent_as
    assert seen["body"] == with_model(body, sent_as)


def test_non_streaming_and_count_tokens(gateway, signer, stub):
    token = signer.token()
    answer = call(gateway.port, token, fixture("request_automode_classifier_nonstream.json"))
    assert answer.status == 200 and answer.json()["type"] == "message"
    counted = call(gateway.port, token, fixture("request_title_small_fast_model.json"),
                   path="/v1/messages/count_tokens?beta=true")
    assert counted.status == 200 and counted.json()["input_tokens"] > 0
    assert [r["path"] for r in stub.requests] == ["/v1/messages?beta=true", "/v1/messages/count_tokens?beta=true"]
    assert json.loads(stub.requests[1]["body"])["model"] == "claude-haiku-4-5-20251001"


def test_the_advisor_tool_is_refused_before_anything_goes_upstream(gateway, signer, stub):
    """The advisor tool (beta `advisor-tool-…`) has the provider consult a model named inside
    `tools`, which the tier's model check does not see (a Sonnet-only tier could consult Opus),
    and reports its tokens apart from the answer's usage: a 400 that says how to turn it off."""
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100,
                       "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-7"}],
                       "messages": [{"role": "user", "content": "plan this"}]}).encode()
    answer = call(gateway.port, signer.token(), body,
                  headers={"anthropic-beta": "claude-code-20250219,advisor-tool-2026-03-01"})
    assert answer.status == 400, answer.body
    assert answer.headers.get("x-should-retry") == "false"
    assert "CLAUDE_CODE_DISABLE_ADVISOR_TOOL=1" in json.loads(answer.body)["error"]["message"]
    assert stub.requests == []


def test_upstream_sees_our_key_no_jwt_and_unspoofable_identity(gateway, signer, stub, host):
    token = signer.token(sub="alice", email="alice@example.com", groups=["claude-standard-users"])
    spoofed = {"x-authenticated-user": "mallory", "x-user-email": "mallory@evil.test",
               "x-user-tier": "power", "x-gateway-target": "elsewhere", "accept-encoding": "gzip, br",
               # The same names to a CGI-style reader behind the provider side (HTTP_X_USER_TIER).
               "x_authenticated_user": "mallory", "X_User_Tier": "power", "x_api_key": "sk-ant-mine"}
    answer = call(gateway.port, token, fixture("request_main_stream.json"), headers=spoofed)
    assert answer.status == 200
    [seen] = stub.requests
    assert header(seen, "x-api-key") == UPSTREAM_KEY
    assert header(seen, "authorization") is None
    assert all(token not in v for _, v in seen["headers"]), "the JWT reached the provider"
    assert token.encode() not in seen["body"]
    assert header(seen, "x-authenticated-user") == "alice"
    assert header(seen, "x-user-email") == "alice@example.com"
    assert header(seen, "x-user-tier") == "standard"
    # The client's is replaced by the filter's; Envoy's route, picked by it, takes it away.
    assert header(seen, "x-gateway-target") == {"envoy": None, "nginx": "anthropic"}[host]
    assert header(seen, "accept-encoding") == "identity"
    assert header(seen, "anthropic-version") == "2023-06-01"
    assert header(seen, "anthropic-beta") == "claude-code-20250219,interleaved-thinking-2025-05-14"
    names = [k.lower() for k, _ in seen["headers"]]
    assert names.count("x-authenticated-user") == 1 and names.count("x-api-key") == 1
    assert not [(k, v) for k, v in seen["headers"] if "_" in k and v], "an underscore spelling went upstream"


def test_no_header_carrying_the_jwt_nor_the_clients_cookies_reaches_the_provider(gateway, signer, stub, host):
    """A proxy in front may copy the token into a header of its own, and a gateway under the
    company's domain gets that domain's cookies: none of it goes upstream, other headers do."""
    token = signer.token()
    signature = token.rsplit(".", 1)[1]
    carriers = {"x-forwarded-access-token": token, "x-original-authorization": f"Bearer {token}",
                "x-auth-request-access-token": f"v1;{signature};",
                "cookie": "intranet_session=3f9a1c; theme=dark",
                "proxy-authorization": "Basic YWxpY2U6cHJveHktcGFzc3dvcmQ="}
    kept = {"x-request-note": "hello", "x-token-prefix": token[: -len(signature) - 1]}
    answer = call(gateway.port, token, fixture("request_title_small_fast_model.json"), headers={**carriers, **kept})
    assert answer.status == 200, answer.body
    [seen] = stub.requests
    assert all(signature not in v for _, v in seen["headers"]), "the JWT reached the provider"
    for name in carriers:
        # nginx forwards a header the filter emptied, unless the config drops it (the sample's
        # `proxy_set_header Cookie ""`, as for Authorization).
        dropped = host == "envoy" or name in ("cookie", "proxy-authorization")
        assert header(seen, name) == (None if dropped else ""), (name, seen["headers"])
    for name, value in kept.items():
        assert header(seen, name) == value


@pytest.mark.parametrize("where", ["authorization-only", "x-api-key-only", "both"])
def test_token_accepted_from_either_header(gateway, signer, where):
    token = signer.token()
    body = fixture("request_title_small_fast_model.json")
    if where == "authorization-only":
        answer = call(gateway.port, token, body, api_key=None)
    elif where == "x-api-key-only":
        answer = call(gateway.port, None, body, api_key=token)
    else:
        answer = call(gateway.port, token, body)
    assert answer.status == 200


@pytest.mark.parametrize("alg", Signer.ALGS)
def test_every_accepted_algorithm(gateway, signer, alg):
    assert call(gateway.port, signer.token(alg), fixture("request_title_small_fast_model.json")).status == 200


def test_streaming_passes_chunk_by_chunk(gateway, signer, stub):
    stub.event_pause = 0.3
    answer = call(gateway.port, signer.token(), fixture("request_main_stream.json"))
    assert answer.status == 200
    first = next(t for t, c in answer.chunks if b"message_start" in c)
    last = next(t for t, c in answer.chunks if b"message_stop" in c)
    # Nine events 0.3 s apart: a buffered answer would arrive all at once.
    assert last - first > 1.5, [round(t - first, 2) for t, _ in answer.chunks]


# --- authentication failures ---------------------------------------------------------------

def auth_cases(signer: Signer):
    now = int(time.time())
    rs = signer.keys["RS256"]
    hs_secret = json.dumps(rs.jwk).encode()
    import hmac, hashlib, base64
    def hs256(claims):
        head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": rs.kid}).encode()).rstrip(b"=")
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        sig = hmac.new(hs_secret, head + b"." + payload, hashlib.sha256).digest()
        return b".".join([head, payload, base64.urlsafe_b64encode(sig).rstrip(b"=")]).decode()
    tampered = signer.token()
    tampered = tampered[:-4] + ("AAAA" if not tampered.endswith("AAAA") else "BBBB")
    # (name, token, phrase, status): 401 where a new token from the sign-in helper can fix it
    # (Claude Code re-runs its helper and retries), 400 where it cannot (shown at once).
    return [
        ("malformed", "not.a.jwt", "not a valid JWT", 401),
        # An IdP asked for no audience hands out opaque tokens; no new sign-in changes that.
        ("opaque", "2YotnFZFEjr1zCsicMWpAA", "opaque, not a JWT", 400),
        ("oversized", signer.token(pad="x" * 17000), "too large", 400),
        ("bad-signature", tampered, "signature is invalid", 401),
        ("unknown-kid", signer.forged({"alg": "RS256", "kid": "nobody"}), "unknown key", 401),
        ("expired", signer.token(exp=now - 120), "expired", 401),
        ("not-yet-valid", signer.token(nbf=now + 180), "not yet valid", 401),
        # Further ahead than Claude Code's four minutes of retries: the clocks, shown at once.
        ("clocks-apart", signer.token(nbf=now + 3600), "the identity provider's clock or the gateway's is off", 400),
        ("wrong-issuer", signer.token(iss="https://evil.example.com"), "issuer not accepted", 400),
        ("wrong-audience", signer.token(aud="someone-else"), "audience not accepted", 400),
        ("audience-array-without-ours", signer.token(aud=["a", "b"]), "audience not accepted", 400),
        ("alg-none", signer.forged({"alg": "none", "kid": rs.kid}, signature=b""), "algorithm not accepted", 400),
        ("hs256-with-public-key", hs256(signer.claims()), "algorithm not accepted", 400),
        ("no-exp", signer.token(exp=None), "no expiry", 400),
    ]


def test_each_auth_failure_names_itself_and_is_401_only_when_a_new_token_helps(gateway, signer, stub):
    for name, token, phrase, status in auth_cases(signer):
        answer = call(gateway.port, token, fixture("request_main_stream.json"))
        assert_anthropic_error(answer, status, "authentication_error")
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), name
        if status == 400:
            assert answer.headers["x-should-retry"] == "false", name
            assert "Signing in again will not change this" in answer.error_message, name
        assert phrase in answer.error_message, (name, answer.error_message)
        assert token not in answer.body.decode(), name
    assert stub.requests == [], "a refused request reached the upstream"


@pytest.mark.parametrize("case", ["no-token", "failing-helper", "different-tokens", "basic-auth"])
def test_credential_header_problems(gateway, signer, stub, case):
    body = fixture("request_main_stream.json")
    if case == "no-token":
        answer = call(gateway.port, None, body)
    elif case == "failing-helper":
        # What Claude Code sends when its apiKeyHelper printed nothing: a 401 has it run the
        # helper again (and say so), a 400 would tell the person signing in cannot help.
        answer = call(gateway.port, None, body, api_key="", headers={"authorization": "Bearer"})
    elif case == "different-tokens":
        answer = call(gateway.port, signer.token(), body, api_key=signer.token(sub="bob"))
    else:
        answer = call(gateway.port, None, body, api_key=None, headers={"authorization": "Basic YWxpY2U6eA=="})
    assert_anthropic_error(answer, 401 if case in ("no-token", "failing-helper") else 400, "authentication_error")
    assert "www-authenticate" in answer.headers
    assert stub.requests == []


def test_a_token_as_large_as_entra_ids_with_200_groups_is_taken(gateway, signer, stub):
    # ~12 KB in each of Authorization and x-api-key: within oidc.max_token_bytes (16 KiB) and the
    # host's header-line limit (nginx: large_client_header_buffers 32k, as in the samples).
    token = signer.token(pad="x" * 11500)
    assert 11500 < len(token) < 16384
    answer = call(gateway.port, token, fixture("request_title_small_fast_model.json"))
    assert answer.status == 200, answer.body
    assert len(stub.requests) == 1


def test_leeway_is_honoured(gateway, signer):
    body = fixture("request_title_small_fast_model.json")
    assert call(gateway.port, signer.token(exp=int(time.time()) - 30), body).status == 200
    assert call(gateway.port, signer.token(nbf=int(time.time()) + 30), body).status == 200


def test_audience_as_array(gateway, signer):
    token = signer.token(aud=["other-api", "claude-sso-gateway"])
    assert call(gateway.port, token, fixture("request_title_small_fast_model.json")).status == 200


# --- tiers and models ----------------------------------------------------------------------

def test_no_tier_refused_before_any_upstream_call(gateway, signer, stub):
    answer = call(gateway.port, signer.token(groups=["sales"]), fixture("request_main_stream.json"))
    assert_anthropic_error(answer, NO_TIER_STATUS, "permission_error")
    assert "in no group that may use Claude. To get access, ask your administrator" in answer.error_message
    assert "claude-power-users" not in answer.error_message, "the company's group names are not shown by default"
    assert answer.headers.get("x-should-retry") == "false"
    assert stub.requests == []


def test_model_not_in_tier_is_refused_with_the_allowed_list(gateway, signer, stub):
    body = with_model(fixture("request_main_stream.json"), "claude-opus-4-7")
    answer = call(gateway.port, signer.token(groups=["claude-standard-users"]), body)
    assert_anthropic_error(answer, 400, "invalid_request_error")
    assert answer.error_message == ("model not configured: claude-opus-4-7 is not available to tier standard; "
                                    "allowed: claude-sonnet-4-6, claude-haiku-4-5")
    assert stub.requests == []


def test_first_matching_tier_wins(gateway, signer, stub):
    token = signer.token(groups=["claude-standard-users", "claude-power-users"])
    body = with_model(fixture("request_title_small_fast_model.json"), "claude-opus-4-7")
    assert call(gateway.port, token, body).status == 200
    assert header(stub.requests[0], "x-user-tier") == "power"


@pytest.mark.parametrize("claim_path, claims", [
    pytest.param("realm_access.roles", {"realm_access": {"roles": ["offline", "claude-power-users"]}}, id="keycloak-dotted"),
    pytest.param("groups", {"groups": "claude-power-users"}, id="plain-string"),
    pytest.param("roles", {"roles": ["claude-power-users"]}, id="other-claim"),
])
def test_groups_claim_shapes(make_gateway, signer, stub, claim_path, claims):
    g = make_gateway(gateway_config(signer, oidc__groups_claim=claim_path), [signer.upstream])
    token = signer.token(**{"groups": None, **claims})
    body = with_model(fixture("request_title_small_fast_model.json"), "claude-opus-4-7")
    answer = call(g.port, token, body)
    assert answer.status == 200, answer.body
    assert header(stub.requests[0], "x-user-tier") == "power"


# --- bodies and paths ----------------------------------------------------------------------

@pytest.mark.parametrize("body, status, error_type", [
    pytest.param(b"model=claude", 400, "invalid_request_error", id="not-json"),
    pytest.param(b'{"messages":[]}', 400, "invalid_request_error", id="no-model"),
    pytest.param(b'{"model":"claude-sonnet-4-6","model":"claude-opus-4-7"}', 400, "invalid_request_error", id="model-twice"),
])
def test_bad_bodies(gateway, signer, stub, body, status, error_type):
    assert_anthropic_error(call(gateway.port, signer.token(), body), status, error_type)
    assert stub.requests == []


def test_bodies_that_repeat_validated_elements_are_still_judged_whole(gateway, signer, stub):
    # Claude Code resends `tools`, the system prompt and earlier messages byte for byte every
    # turn, and each worker compares elements it validated before instead of validating them
    # again. Every turn must still be judged whole: after the repeated elements a fault is
    # refused as before, and what passes arrives byte for byte. Each body goes three times, so
    # that every worker has seen its elements before.
    doc = json.loads(fixture("request_main_stream.json"))
    doc["model"] = "claude-sonnet-4-6"
    token = signer.token()
    good = json.dumps(doc, ensure_ascii=False).encode()
    end_of_tools = b'}], "metadata"'
    assert good.count(end_of_tools) == 1

    def after_the_tools(element: bytes) -> bytes:
        """`good` with one more element at the end of `tools`, after the repeated ones."""
        return good.replace(end_of_tools, b"}, " + element + b'], "metadata"')

    def sent(body):
        return [call(gateway.port, token, body) for _ in range(3)]

    for answer in sent(good):
        assert answer.status == 200, answer.body
    assert [r["body"] for r in stub.requests] == [good] * 3
    padding = b"y" * 2000  # an element big enough to be remembered itself
    faults = {
        "a trailing comma": good.replace(end_of_tools, b'},], "metadata"'),
        "a lone surrogate escape": after_the_tools(b'{"name": "\\udce9", "d": "' + padding + b'"}'),
        "a byte that is not UTF-8": after_the_tools(b'{"name": "\xff\xfe", "d": "' + padding + b'"}'),
        "a control character": after_the_tools(b'{"name": "a\x01b", "d": "' + padding + b'"}'),
        "nesting too deep": after_the_tools(b"[" * 200 + b"]" * 200),
        "the model again": good[:-1] + b', "model": "claude-opus-4-7"}',
    }
    for name, bad in faults.items():
        for answer in sent(bad):
            assert answer.status == 400, (name, answer.body)
            assert_anthropic_error(answer, 400, "invalid_request_error")
    assert len(stub.requests) == 3, "nothing refused reached the upstream"
    # The next turn: the same elements and a new one, whole and unchanged.
    later = after_the_tools(b'{"name": "late", "d": "' + padding + b'"}')
    for answer in sent(later):
        assert answer.status == 200, answer.body
    assert [r["body"] for r in stub.requests[3:]] == [later] * 3


def test_body_over_the_maximum_is_refused_naming_the_gateways_limit(make_gateway, signer, stub):
    # A 400, not a 413: Claude Code replaces the text of any 413 with "Request too large (max
    # 32MB)", the API's limit, not this gateway's.
    g = make_gateway(gateway_config(signer, max_body_bytes=100_000), [signer.upstream])
    body = fixture("request_main_stream.json")
    assert len(body) > 100_000
    answer = call(g.port, signer.token(), body)
    assert_anthropic_error(answer, 400, "invalid_request_error")
    assert "limit of 100000 bytes" in answer.error_message and "/compact" in answer.error_message
    chunked = call(g.port, signer.token(), body, chunked=True)
    assert chunked.status == 400
    assert stub.requests == []


def test_ten_mib_body_passes(gateway, signer, stub):
    base = json.loads(fixture("request_title_small_fast_model.json"))
    base["metadata"] = {"user_id": "x" * (10 * 1024 * 1024 - 10_000)}
    body = json.dumps(base).encode()
    answer = call(gateway.port, signer.token(), body, timeout=60)
    assert answer.status == 200, answer.body[:200]
    assert len(stub.requests[0]["body"]) == len(body) + len("-20251001")


@pytest.mark.parametrize("method, path", [("HEAD", "/api/hello"), ("HEAD", "/"), ("GET", "/api/hello")])
def test_connectivity_check_is_answered_locally(gateway, stub, method, path):
    answer = call(gateway.port, None, path=path, method=method)
    assert answer.status == 200
    assert stub.requests == []


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/complete"), ("GET", "/v1/messages"),
                                          ("POST", "/admin"), ("POST", "/v1/v1/messages")])
def test_other_paths_are_404_and_never_forwarded(gateway, signer, stub, method, path):
    answer = call(gateway.port, signer.token(), b"{}", path=path + "?key=secret", method=method)
    assert_anthropic_error(answer, 404, "not_found_error")
    # What was asked and what is served; never the query, which may hold what the client keeps to itself.
    assert f"{method} {path} is not served here" in answer.error_message, answer.body
    assert "POST /v1/messages" in answer.error_message and "secret" not in answer.body.decode()
    assert stub.requests == []


# --- keys: rotation, outages, first load ---------------------------------------------------

def test_key_rotation_and_unknown_kid_refetch_is_throttled(make_gateway, stub):
    idp = Signer()
    try:
        g = make_gateway(gateway_config(idp), [idp.upstream])
        body = fixture("request_title_small_fast_model.json")
        assert call(g.port, idp.token(), body).status == 200
        old = idp.keys["RS256"]
        new = idp.rotate()
        assert call(g.port, idp.token(key=new), body).status == 200, "new kid fetched on demand"
        time.sleep(1.0)  # the other worker adopts the shared keys on its next tick (every 0.5 s)
        for i in range(4):  # both workers
            assert call(g.port, idp.token(key=old, sub=f"u{i}"), body).status == 401, "withdrawn key no longer accepted"
        # One such token again and again (a helper serving its cache): the fourth refusal stops
        # Claude Code's 401 loop, whichever worker each retry reaches.
        again = idp.token(key=old, sub="again")
        assert [call(g.port, again, body).status for _ in range(4)] == [401, 401, 401, 400]
        before = idp.fetches["jwks"]
        flood = [idp.forged({"alg": "RS256", "kid": f"bogus-{i}"}) for i in range(50)]
        statuses = [call(g.port, t, body).status for t in flood]
        assert set(statuses) == {401}
        assert idp.fetches["jwks"] - before <= 2, "one refetch per worker per interval at most"
    finally:
        idp.stop()


def test_idp_down_with_cached_keys_keeps_working(make_gateway, stub):
    idp = Signer()
    try:
        g = make_gateway(gateway_config(idp, oidc__jwks_refresh_seconds=1), [idp.upstream])
        body = fixture("request_title_small_fast_model.json")
        assert call(g.port, idp.token(), body).status == 200
        idp.down = True
        time.sleep(2.5)  # refreshes fail in the background
        assert call(g.port, idp.token(sub="bob"), body).status == 200
        assert "key fetch failed" in g.logs()
    finally:
        idp.stop()


def test_idp_down_from_start_is_503_then_recovers(make_gateway, stub):
    idp = Signer()
    idp.down = True
    try:
        g = make_gateway(gateway_config(idp), [idp.upstream])
        body = fixture("request_title_small_fast_model.json")
        answer = call(g.port, idp.token(), body)
        assert_anthropic_error(answer, 503, "api_error")
        assert "retry-after" in answer.headers
        assert stub.requests == []
        idp.down = False
        deadline = time.monotonic() + 10
        while call(g.port, idp.token(), body).status != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.5)
    finally:
        idp.stop()


def test_keys_older_than_max_age_are_not_used(make_gateway, stub):
    idp = Signer()
    try:
        config = gateway_config(idp, oidc__jwks_refresh_seconds=1, oidc__jwks_max_age_seconds=2)
        g = make_gateway(config, [idp.upstream])
        body = fixture("request_title_small_fast_model.json")
        assert call(g.port, idp.token(), body).status == 200
        idp.down = True
        time.sleep(3.5)
        assert call(g.port, idp.token(), body).status == 503
    finally:
        idp.stop()


def test_requests_before_keys_wait_for_the_first_fetch(make_gateway, stub):
    idp = Signer()
    try:
        g = make_gateway(gateway_config(idp), [idp.upstream], wait=False)
        g.wait_ready()
        body = fixture("request_title_small_fast_model.json")
        results = []
        threads = [threading.Thread(target=lambda: results.append(call(g.port, idp.token(), body).status))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 6
        # The bodies held while the keys were fetched are rewritten from the callout's answer.
        expected = with_model(body, "claude-haiku-4-5-20251001")
        assert [r["body"] == expected for r in stub.requests] == [True] * 6
    finally:
        idp.stop()


# --- configuration and secrets -------------------------------------------------------------

@pytest.mark.parametrize("edit, field, env", [
    pytest.param(lambda c: c["oidc"].update(isuer="x"), "oidc.isuer", None, id="unknown-field"),
    pytest.param(lambda c: c["tiers"][1].update(models=["claude-opus-9"]), "tiers[1].models[0]", None, id="unknown-alias"),
    pytest.param(lambda c: c["targets"]["anthropic"].update(api_key_env="NO_SUCH_VAR"),
                 "targets.anthropic.api_key_env", None, id="missing-env-var"),
    # Told apart from a variable that is not set, so the operator looks in the right place.
    pytest.param(lambda c: None, "targets.anthropic.api_key_env: environment variable ANTHROPIC_API_KEY is set but empty",
                 {"ANTHROPIC_API_KEY": ""}, id="empty-env-var"),
])
def test_bad_config_refuses_to_load_and_names_the_field(make_gateway, signer, edit, field, env):
    config = gateway_config(signer)
    edit(config)
    g = make_gateway(config, [signer.upstream], env=env, wait=False)
    code = g.exited()
    assert code not in (None, 0), "Envoy accepted a bad config"
    assert f"config error: {field}" in g.logs()


def test_no_key_or_token_in_envoy_logs(gateway, signer):
    token = signer.token()
    call(gateway.port, token, fixture("request_title_small_fast_model.json"))
    call(gateway.port, token[:-3] + "xyz", fixture("request_title_small_fast_model.json"))
    logs = gateway.logs()
    assert "claude-sso-gateway: configured" in logs
    assert UPSTREAM_KEY not in logs
    assert token.split(".")[2] not in logs and token not in logs


def test_explicit_jwks_uri_skips_discovery(make_gateway, stub):
    idp = Signer()
    try:
        config = gateway_config(idp, oidc__jwks_uri=f"{idp.issuer}/jwks")
        g = make_gateway(config, [idp.upstream])
        assert call(g.port, idp.token(), fixture("request_title_small_fast_model.json")).status == 200
        assert idp.fetches["discovery"] == 0 and idp.fetches["jwks"] >= 1
    finally:
        idp.stop()


def test_empty_body_is_refused_without_waiting(gateway, signer, stub):
    answer = call(gateway.port, signer.token(), b"", timeout=5)
    assert_anthropic_error(answer, 400, "invalid_request_error")
    assert stub.requests == []
