"""What a person sees in Claude Code (issue #14), at the gateway's edge: answers Envoy (or nginx)
makes itself come in Anthropic's error shape, and missing keys fail fast after a while."""
import json
import time

import pytest

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.harness.client import call, fixture
from tests.harness.envoy import free_port
from tests.harness.hosts import gateway_class
from tests.harness.signer import Signer

BODY = fixture("request_title_small_fast_model.json")


def test_an_unreachable_provider_is_explained_in_anthropic_shape(host, signer):
    dead = free_port()  # nothing listens there
    g = gateway_class(host)(gateway_config(signer), dead, [signer.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    try:
        answer = call(g.port, signer.token(), BODY)
        assert answer.status in (502, 503), answer
        assert answer.headers["content-type"].startswith("application/json"), answer.headers
        body = json.loads(answer.body)
        assert body["type"] == "error" and body["error"]["type"] == "api_error", body
        assert "could not be reached" in body["error"]["message"], body
        # The filter's own answers are not rewritten.
        refused = call(g.port, None, BODY)
        assert refused.status == 401 and "no access token" in refused.error_message
    finally:
        g.stop()


def test_missing_keys_fail_fast_once_they_have_been_missing_a_while(make_gateway, stub):
    down = Signer()
    down.down = True
    try:
        config = gateway_config(down)
        config["oidc"]["keys_fail_fast_seconds"] = 2
        g = make_gateway(config, [down.upstream])
        first = call(g.port, down.token(), BODY)
        assert first.status == 503 and first.headers.get("retry-after") == "5"
        assert "x-should-retry" not in first.headers, "early on, Claude Code's retries may ride it out"
        time.sleep(3.5)
        later = call(g.port, down.token(), BODY)
        assert later.status == 503
        assert later.headers.get("x-should-retry") == "false", later.headers
        assert "identity provider has been unreachable" in later.error_message
        down.down = False
        deadline = time.monotonic() + 10
        while call(g.port, down.token(), BODY).status != 200:
            assert time.monotonic() < deadline, "keys never came back"
            time.sleep(0.5)
    finally:
        down.stop()
