"""The built filter in Kong's Wasm runtime (nginx + ngx_wasm_module + Wasmtime 26, `make kong-runtime`)
through tests/harness/nginx.py: it loads with the test config (the upstream key from the environment),
answers the connectivity check itself, and refuses an unauthenticated request."""
import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness.client import call, fixture
from tests.harness.hosts import HOSTS, gateway_class


@pytest.fixture
def nginx(stub, signer):
    g = gateway_class("nginx")(gateway_config(signer), stub.port, [signer.upstream],
                               env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    yield g
    g.stop()


def test_hosts_are_named():
    assert HOSTS == ["envoy", "nginx"]
    assert gateway_class("envoy").__name__ == "Envoy" and gateway_class("nginx").__name__ == "Nginx"
    with pytest.raises(ValueError):
        gateway_class("kong")


def test_filter_loads_in_every_worker(nginx):
    logs = nginx.logs()
    assert logs.count("claude-sso-gateway: configured") >= 2, logs  # 2 workers, env var found
    assert "[emerg]" not in logs and "config error" not in logs and "trap" not in logs, logs
    assert UPSTREAM_KEY not in logs


def test_hello_is_answered_by_the_filter(nginx, stub):
    answer = call(nginx.port, path="/", method="GET", timeout=10)
    assert answer.status == 200, answer
    assert not stub.requests


def test_unauthenticated_request_gets_401(nginx, stub):
    answer = call(nginx.port, body=b'{"model":"claude-sonnet-4-6","max_tokens":1,"messages":[]}', timeout=10)
    assert answer.status == 401, answer
    assert "bearer" in answer.headers.get("www-authenticate", "").lower(), answer.headers
    assert not stub.requests


def test_refused_config_is_reported_like_envoy_exiting(stub, signer):
    # No ANTHROPIC_API_KEY in the environment: the filter refuses its config in every worker.
    g = gateway_class("nginx")(gateway_config(signer), stub.port, [signer.upstream], env={}, wait=False)
    try:
        assert g.exited() not in (None, 0)
        assert "config error: targets.anthropic.api_key_env" in g.logs()
    finally:
        g.stop()


def test_client_credentials_do_not_reach_the_upstream(stub, signer):
    # One worker: the first request fetches the keys itself (the callout resumes it), the second
    # finds them cached and must not hang (ngx waits at the headers only while a callout is pending).
    g = gateway_class("nginx")(gateway_config(signer), stub.port, [signer.upstream], concurrency=1,
                               env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    try:
        token = signer.token()
        spoof = {"X-User-Tier": "power", "X-Authenticated-User": "mallory"}
        for _ in range(2):
            answer = call(g.port, token, fixture("request_title_small_fast_model.json"), headers=spoof, timeout=10)
            assert answer.status == 200, answer
        assert len(stub.requests) == 2
        for request in stub.requests:
            headers = [(k.lower(), v) for k, v in request["headers"]]
            assert not [v for k, v in headers if k == "authorization"], "the client's bearer token was forwarded"
            assert [v for k, v in headers if k == "x-api-key"] == [UPSTREAM_KEY]
            assert [v for k, v in headers if k == "x-user-tier"] == ["standard"]
            assert [v for k, v in headers if k == "x-authenticated-user"] == ["alice"]
            assert not [v for _, v in headers if token in v]
    finally:
        g.stop()
