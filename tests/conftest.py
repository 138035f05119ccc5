"""Shared fixtures: the stand-in upstream, the test IdP, and real Envoy with the built filter."""
import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from stub_upstream import StubUpstream  # noqa: E402

from tests.harness.hosts import HOSTS, gateway_class  # noqa: E402
from tests.harness.signer import AUDIENCE, Signer  # noqa: E402

UPSTREAM_KEY = "sk-ant-test-upstream-key-7f3a9c"


def gateway_config(signer: Signer, **overrides) -> dict:
    """The contract's sample configuration, pointed at `signer`."""
    config = {
        "oidc": {"issuer": signer.issuer, "audiences": [AUDIENCE], "upstream": signer.upstream},
        "targets": {"anthropic": {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}},
        "models": [
            {"alias": "claude-sonnet-4-6", "target": "anthropic", "model_id": "claude-sonnet-4-6"},
            {"alias": "claude-opus-4-7", "target": "anthropic", "model_id": "claude-opus-4-7"},
            {"alias": "claude-haiku-4-5", "target": "anthropic", "model_id": "claude-haiku-4-5-20251001"},
        ],
        "tiers": [
            {"name": "power", "groups": ["claude-power-users"],
             "models": ["claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"]},
            {"name": "standard", "groups": ["claude-standard-users"],
             "models": ["claude-sonnet-4-6", "claude-haiku-4-5"]},
        ],
    }
    for path, value in overrides.items():
        *parents, last = path.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[last] = copy.deepcopy(value)
    return config


@pytest.fixture(scope="session")
def stub():
    s = StubUpstream(api_key=UPSTREAM_KEY).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def fresh_stub(request):
    if "stub" in request.fixturenames:
        s = request.getfixturevalue("stub")
        s.reset()
        s.event_pause = 0.0
        s.first_byte_delay = 0.0
        s.usage = {"input_tokens": 120, "output_tokens": 30,
                   "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000}
    yield


@pytest.fixture(scope="session")
def signer():
    s = Signer()
    yield s
    s.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "envoy_only(why): runs on Envoy only; `why` says what ngx lacks")


@pytest.fixture(scope="session", params=HOSTS)
def host(request):
    """The Proxy-Wasm host a gateway test runs on: every such test runs on each."""
    return request.param


@pytest.fixture(autouse=True)
def _host_support(request):
    marker = request.node.get_closest_marker("envoy_only")
    callspec = getattr(request.node, "callspec", None)
    if marker and callspec and callspec.params.get("host", "envoy") != "envoy":
        pytest.skip(f"Envoy only: {marker.args[0] if marker.args else ''}")


@pytest.fixture(scope="session")
def gateway(stub, signer, host):
    """One gateway per host for the tests that leave the IdP as it is."""
    g = gateway_class(host)(gateway_config(signer), stub.port, [signer.upstream],
                            env={"ANTHROPIC_API_KEY": UPSTREAM_KEY})
    yield g
    g.stop()


@pytest.fixture
def make_gateway(stub, host):
    """Starts gateways (on the test's host) with their own config; all are stopped after the test."""
    started = []

    def start(config, idp_upstreams, env=None, **kwargs):
        env = {"ANTHROPIC_API_KEY": UPSTREAM_KEY} if env is None else env
        g = gateway_class(host)(config, stub.port, idp_upstreams, env=env, **kwargs)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()
