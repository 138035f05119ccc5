"""Real Claude Code through real Envoy with the filter, signed in at a real OpenID Provider."""
import json
import time
import stat

import pytest

from tests.harness.claude import ROOT

from tests.conftest import gateway_config
from tests.harness.claude import run_claude
from tests.harness.idp import OpenIdProvider


@pytest.fixture(scope="module")
def idp():
    p = OpenIdProvider()
    yield p
    p.stop()


@pytest.fixture
def real_gateway(make_gateway, idp):
    config = gateway_config(idp)  # the OP's issuer; its upstream is "127.0.0.1:<port>"
    config["tiers"][1]["limits"] = [{"limit": 1_000_000, "window_seconds": 60}]
    return make_gateway(config, [idp.upstream])


def refusals(gateway, status):
    """Local answers with `status` the gateway logged (both hosts log each refusal once)."""
    time.sleep(0.3)
    return gateway.logs().count(f"claude-sso-gateway: refused {status}:")


def test_standard_user_with_sonnet_works(real_gateway, idp, stub, tmp_path):
    token = idp.token("alice")
    run = run_claude(tmp_path, real_gateway.port, token)
    assert run.code == 0, run.stdout + run.stderr
    assert "Hello from the stand-in upstream." in run.stdout
    models = [json.loads(r["body"])["model"] for r in stub.requests]
    assert models and set(models) == {"claude-sonnet-4-6"}
    for r in stub.requests:
        assert all(token not in v for _, v in r["headers"]), "the JWT reached the provider"


def test_opus_refused_for_standard_user_without_retries(real_gateway, idp, stub, tmp_path):
    run = run_claude(tmp_path, real_gateway.port, idp.token("alice"), args=["--model", "opus"])
    assert run.code == 1
    assert ("model not configured: claude-opus-4-7 is not available to tier standard; "
            "allowed: claude-sonnet-4-6, claude-haiku-4-5") in run.stdout
    assert refusals(real_gateway, 400) == 1, "Claude Code retried a settled refusal"
    assert stub.requests == []


def test_person_without_tier_fails_fast(real_gateway, idp, stub, tmp_path):
    run = run_claude(tmp_path, real_gateway.port, idp.token("carol"))
    assert run.code == 1
    assert run.seconds < 30, f"took {run.seconds:.1f} s"
    assert "access denied: you are signed in, but your account is in no group that may use Claude" in run.stdout
    assert refusals(real_gateway, 400) == 1
    assert stub.requests == []


def test_sign_in_helper_as_api_key_helper(real_gateway, idp, stub, tmp_path):
    """Claude Code runs claude-sso-signin, which signs in at the real IdP (a scripted browser)."""
    helper = ROOT / "target" / "debug" / "claude-sso-signin"
    assert helper.exists(), "build it first: cargo build -p claude-sso-signin (make does)"
    browser = tmp_path / "browser.sh"
    browser.write_text(f"#!/bin/sh\nexec node '{ROOT / 'demo/idp/login.mjs'}' --browse \"$1\" --user bob\n")
    browser.chmod(browser.stat().st_mode | stat.S_IEXEC)
    env = {"CLAUDE_SSO_ISSUER": idp.issuer, "CLAUDE_SSO_BROWSER": str(browser),
           "CLAUDE_SSO_CACHE_DIR": str(tmp_path / "cache"), "CLAUDE_SSO_REDIRECT_PORT": "0"}
    logins = idp.logins()
    run = run_claude(tmp_path, real_gateway.port, helper=str(helper), settings_env=env, args=["--model", "opus"])
    assert run.code == 0, run.stdout + run.stderr
    assert idp.logins() == logins + 1
    [seen] = stub.requests
    assert json.loads(seen["body"])["model"] == "claude-opus-4-7"
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-authenticated-user"] == "bob"
