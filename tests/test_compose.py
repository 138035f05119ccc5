"""docker-compose.yml, checked twice.

Statically: it (and docker-compose.local.yml) is valid against the Compose Specification's schema,
every path it mounts exists (the .wasm is the file `make build` makes), every config it mounts is one
the tests load, its Envoy config passes `envoy --mode validate`, and the Kong-runtime stand-in runs the
filter with kong.yml's config.

Running: `scripts/compose.sh up` (what `make compose-up` runs: Docker where a daemon runs, else Podman
on images built here, with docker-compose.local.yml) brings the stack up once for this module; then
through the Envoy gateway and through the Kong gateway (Kong's Wasm runtime under Podman): a
standard-tier request works, opus is refused as not configured, a person with no tier gets the 400,
a streamed answer is counted, and real Claude Code completes a turn. `down` leaves no container and
no listening port. The stack uses the demo's fixed ports (9100, 9200, 9901, 10000, 8000): it must
not run at the same time as `make demo` or tests/test_samples.py (CI runs tests serially)."""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.harness.claude import run_claude
from tests.harness.client import call, fixture, with_model
from tests.harness.envoy import ROOT, WASM, validate

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
LOCAL = yaml.safe_load((ROOT / "docker-compose.local.yml").read_text())
SPEC = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
KONG_RUNTIME_CONF = ROOT / "containers" / "kong-runtime" / "nginx.conf"
SCRIPT = ["bash", str(ROOT / "scripts" / "compose.sh")]
PROJECT = "claude-sso-gateway"
GATEWAYS = {"envoy": 10000, "kong": 8000}
PORTS = (9100, 9200, 9901, 10000, 8000, 8001)

# Configs mounted into containers, and the tests that load the same files.
TESTED_CONFIGS = {
    "envoy/demo.yaml": "tests/test_samples.py (validate, and the make-demo stack), this file's stack",
    "kong/kong.yml": "tests/test_kong.py (schema/parser agreement), this file (the kong-runtime config)",
    "kong/kong.conf": "tests/test_kong.py (required settings)",
    "kong/claude_sso_gateway.meta.json": "tests/test_kong.py (the schema itself)",
    "tools/stub_upstream.py": "every gateway test",
    "demo": "tests/test_claude_code.py, tests/test_samples.py (demo/idp), this file's stack",
    "dashboards/prometheus.yml": "dashboards/test_check_dashboard.py",
    "dashboards/provisioning/datasources": "dashboards/test_check_dashboard.py",
    "dashboards/provisioning/dashboards": "dashboards/test_check_dashboard.py",
    "dashboards/claude-sso-gateway.json": "tests/test_usage.py (every panel's query against a real Prometheus)",
}


def mounts(compose=COMPOSE):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            yield name, source, target


# ---------------------------------------------------------------------------------------------
# Static checks


def test_valid_against_the_compose_specification():
    jsonschema.Draft201909Validator(SPEC).validate(COMPOSE)
    jsonschema.Draft201909Validator(SPEC).validate(LOCAL)


def test_services_and_images():
    services = COMPOSE["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"idp", "upstream", "envoy", "kong"}
    # Prometheus and Grafana, Redis and Webdis join on request (public images, not run here).
    assert {name: services[name]["profiles"] for name in set(services) - default} == {
        "prometheus": ["observability"], "grafana": ["observability"], "redis": ["cluster"], "webdis": ["cluster"]}
    assert services["envoy"]["image"] == "envoyproxy/envoy:v1.40.0", "the Envoy version the tests run"
    assert services["kong"]["image"].startswith("kong:3.9"), "Kong 3.9: the last open-source release with Wasm"
    # The IdP's image is built from the repository wherever compose runs (no npm install at start).
    assert services["idp"]["build"] == "containers/idp"
    assert "oidc-provider@9.13.3" in (ROOT / "containers" / "idp" / "Dockerfile").read_text()
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/oidc-provider"]["version"] == "9.13.3"
    # The local override only swaps Kong for its Wasm runtime.
    assert set(LOCAL["services"]) == {"kong"}
    assert LOCAL["services"]["kong"]["image"] == "claude-sso-gateway/kong-runtime:local"


def test_every_service_has_an_init_and_the_hosts_network():
    for name, service in COMPOSE["services"].items():
        assert service.get("init") is True, f"{name}: a server as PID 1 ignores SIGTERM (down waits 10 s)"
        assert service.get("network_mode") == "host", name


def test_every_mounted_path_exists_and_the_wasm_is_the_build_output():
    for service, source, target in mounts():
        path = (ROOT / source).resolve()
        if source.endswith(".wasm"):
            assert path == WASM.resolve(), (service, source)
            assert WASM.exists(), "run `make build` first (make compose-up does)"
        assert path.exists(), f"{service} mounts {source}, which does not exist"


def test_every_mounted_config_is_one_the_tests_load():
    for service, source, target in mounts():
        rel = str(Path(source).relative_to("."))
        if rel.endswith(".wasm"):
            continue
        assert rel in TESTED_CONFIGS, f"{service} mounts {rel}, which no test loads"


def test_the_mounted_envoy_config_validates(monkeypatch):
    [(_, source, _)] = [m for m in mounts() if m[0] == "envoy" and m[1].endswith(".yaml")]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "unused-by-the-demo-config")
    result = validate(ROOT / source)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_envoy_command_uses_the_mounted_config_and_kong_the_filter_path():
    envoy = COMPOSE["services"]["envoy"]
    assert envoy["command"][:3] == ["envoy", "-c", "/work/envoy/demo.yaml"]
    kong_targets = {t for s, _, t in mounts() if s == "kong"}
    conf = (ROOT / "kong" / "kong.conf").read_text()
    assert "wasm_filters_path = /opt/kong/wasm" in conf
    assert "/opt/kong/wasm/claude_sso_gateway.wasm" in kong_targets
    assert "/opt/kong/wasm/claude_sso_gateway.meta.json" in kong_targets
    assert "declarative_config = /kong/kong.yml" in conf and "/kong/kong.yml" in kong_targets


def test_the_kong_runtime_runs_the_filter_as_kong_would():
    """containers/kong-runtime/nginx.conf: kong.yml's filter config, kong.conf's proxy port, the
    filter file Kong's service mounts."""
    text = KONG_RUNTIME_CONF.read_text()
    start = text.index("proxy_wasm claude_sso_gateway '") + len("proxy_wasm claude_sso_gateway '")
    nginx_config = json.loads(text[start:text.index("';", start)])
    kong = yaml.safe_load((ROOT / "kong" / "kong.yml").read_text())
    [route] = [r for r in kong["services"][0]["routes"] if r["name"] == "claude"]
    [plugin] = route["plugins"]
    assert nginx_config == plugin["config"]
    conf = (ROOT / "kong" / "kong.conf").read_text()
    assert "proxy_listen = 127.0.0.1:8000" in conf and "listen 127.0.0.1:8000;" in text
    assert "module claude_sso_gateway /opt/kong/wasm/claude_sso_gateway.wasm;" in text
    assert "server 127.0.0.1:9200;" in text and kong["services"][0]["url"] == "http://127.0.0.1:9200"
    assert LOCAL["services"]["kong"]["command"][-3:] == ["/etc/nginx/nginx.conf", "-e", "stderr"]


# ---------------------------------------------------------------------------------------------
# The stack itself


def compose(*args, timeout=120, env=None):
    return subprocess.run([*SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def project_containers() -> list:
    engine = compose("engine").stdout.split()[0]
    env = {**os.environ}
    env.setdefault("CONTAINERS_CONF", str(ROOT / "containers" / "containers.conf"))
    out = subprocess.run([engine, "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    return out.stdout.split()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack():
    assert WASM.exists(), "run `make build` first"
    # Cold (Podman, debootstrap and every image to build): a few minutes; warm: seconds.
    started = time.monotonic()
    up = compose("up", timeout=1200)
    assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"
    yield time.monotonic() - started
    compose("down")


@pytest.fixture(scope="module")
def tokens(stack):
    def token(user):
        return subprocess.run(["bash", "scripts/demo-token.sh", user, ""], cwd=ROOT, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    return {user: token(user) for user in ("alice", "carol")}


def ask(port, token, model, stream=True, seconds=20):
    """One Claude Code request; a 503 (the gateway still fetching the IdP's keys) is retried."""
    body = fixture("request_main_stream.json")
    if not stream:
        body = json.dumps({**json.loads(body), "stream": False}).encode()
    deadline = time.monotonic() + seconds
    while (answer := call(port, token, with_model(body, model))).status == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    return answer


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_standard_tier_request_works(stack, tokens, gateway):
    answer = ask(GATEWAYS[gateway], tokens["alice"], "claude-sonnet-4-6", stream=False)
    assert answer.status == 200, answer.body
    assert answer.json()["content"][0]["text"] == "Hello from the stand-in upstream."


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_opus_is_refused_for_the_standard_tier(stack, tokens, gateway):
    answer = ask(GATEWAYS[gateway], tokens["alice"], "claude-opus-4-7")
    assert answer.status == 400, answer.body
    assert answer.error_message.startswith("model not configured: claude-opus-4-7 is not available to tier standard")


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_a_person_with_no_tier_gets_the_400(stack, tokens, gateway):
    answer = ask(GATEWAYS[gateway], tokens["carol"], "claude-sonnet-4-6")
    assert answer.status == 400, answer.body
    assert "access denied: you are signed in, but your account is in no group that may use Claude" in answer.error_message


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_a_streamed_answer_is_counted(stack, tokens, gateway):
    """The remaining budget the second answer reports is lower than the first's: the first stream's
    usage was counted. (The 30-day budget: a request from Claude Code holds more than the demo's
    standard tier allows a minute, so the 60-second header says 0 both times.)"""
    header = "x-ai-ratelimit-remaining-2592000-anthropic"
    first = ask(GATEWAYS[gateway], tokens["alice"], "claude-sonnet-4-6")
    assert first.status == 200 and b"message_stop" in first.body, first.body
    second = ask(GATEWAYS[gateway], tokens["alice"], "claude-sonnet-4-6")
    assert second.status == 200, second.body
    assert int(second.headers[header]) < int(first.headers[header]), (first.headers, second.headers)


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_claude_code_completes_a_turn(stack, tokens, gateway, tmp_path):
    run = run_claude(tmp_path, GATEWAYS[gateway], tokens["alice"])
    assert run.code == 0, run.stdout + run.stderr
    assert "Hello from the stand-in upstream." in run.stdout


def test_down_leaves_no_container_and_no_listening_port(stack):
    down = compose("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert project_containers() == []
    assert [p for p in PORTS if listening(p)] == []


def test_a_service_that_fails_to_start_fails_up_with_its_log(stack, tmp_path):
    """Runs after `down`: Envoy on a config that does not exist stops at once; `up` says so with
    Envoy's own log, long before its wait would time out, and leaves nothing behind."""
    override = tmp_path / "broken.yml"
    override.write_text(yaml.safe_dump({"services": {"envoy": {"command": ["envoy", "-c", "/work/no-such.yaml"]}}}))
    started = time.monotonic()
    up = compose("up", env={"COMPOSE_OVERRIDE": str(override), "COMPOSE_WAIT": "120"})
    assert up.returncode != 0
    assert time.monotonic() - started < 60, up.stderr
    assert "service envoy is exited" in up.stderr, up.stderr
    assert "[envoy]" in up.stderr and "no-such.yaml" in up.stderr, up.stderr
    assert project_containers() == []
    assert [p for p in PORTS if listening(p)] == []
