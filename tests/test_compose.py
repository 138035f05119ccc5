"""docker-compose.yml, checked twice.

Statically: it (and docker-compose.local.yml) is valid against the Compose Specification's schema,
every path it mounts exists (the .wasm is the file `make build` makes), every config it mounts is one
the tests load, every Envoy config a gateway runs passes `envoy --mode validate` (for the cluster
nodes: the config their own command derives from envoy/cluster.yaml), envoy/cluster.yaml is
envoy/demo.yaml plus the budget store and nothing else, every image the stack runs here has a local
stand-in, and the Kong-runtime stand-in runs the filter with kong.yml's config.

Running: `COMPOSE_PROFILES=cluster scripts/compose.sh up` (what `make compose-up` runs: Docker where a
daemon runs, else Podman on images built here, with docker-compose.local.yml) brings the stack and
its cluster profile up once for this module; then through the Envoy gateway and through the Kong
gateway (Kong's Wasm runtime under Podman): a standard-tier request works, opus is refused as not
configured, a person with no tier gets the 400, a streamed answer is counted, and real Claude Code
completes a turn; through the Envoy gateway, the Bedrock-backed model (claude-sonnet-4-5) answers
from the stand-in's Bedrock mode, as in `make demo`; through the two cluster nodes (Redis behind Webdis): what a person spends on one
node shows in the remaining budget the other node answers with, and once the tier's budget is spent
the 429s start on both nodes. `down` leaves no container and no listening port. The stack uses the
demo's fixed ports (9100, 9200, 9901, 10000, 8000; 6390, 7379, 10001-10002, 9911-9912 for
`make demo-cluster`'s pieces): it must not run at the same time as `make demo`, `make demo-cluster`
or tests/test_samples.py (CI runs tests serially)."""
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.harness.claude import run_claude
from tests.harness.client import call, fixture, with_model
from tests.harness.envoy import ROOT, WASM, envoy_binary, validate

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
LOCAL = yaml.safe_load((ROOT / "docker-compose.local.yml").read_text())
SPEC = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
KONG_RUNTIME_CONF = ROOT / "containers" / "kong-runtime" / "nginx.conf"
SCRIPT = ["bash", str(ROOT / "scripts" / "compose.sh")]
PROJECT = "claude-sso-gateway"
GATEWAYS = {"envoy": 10000, "kong": 8000}
# The cluster profile's gateway nodes: service -> (gateway port, admin port).
NODES = {"envoy-a": (10001, 9911), "envoy-b": (10002, 9912)}
PORTS = (9100, 9200, 9901, 10000, 8000, 8001, 6390, 7379, 10001, 9911, 10002, 9912)
CLUSTER_YAML = ROOT / "envoy" / "cluster.yaml"

# Configs mounted into containers, and the tests that load the same files.
TESTED_CONFIGS = {
    "envoy/demo.yaml": "tests/test_samples.py (validate, and the make-demo stack), this file's stack",
    "envoy/cluster.yaml": "this file (validate, same as demo.yaml but the store, the cluster stack), "
                          "tests/test_samples.py (make demo-cluster's filter config)",
    "kong/kong.yml": "tests/test_kong.py (schema/parser agreement), this file (the kong-runtime config)",
    "kong/kong.conf": "tests/test_kong.py (required settings)",
    "kong/claude_sso_gateway.meta.json": "tests/test_kong.py (the schema itself)",
    "tools/stub_upstream.py": "every gateway test",
    "demo": "tests/test_claude_code.py, tests/test_samples.py (demo/idp), this file's stack",
    "dashboards/prometheus.yml": "dashboards/test_check_dashboard.py, dashboards/test_alerts.py",
    "dashboards/alerts.yml": "dashboards/test_alerts.py",
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
    # Prometheus and Grafana join on request (public images, not run here); so do Redis, Webdis and
    # two more Envoy nodes sharing budgets through them (run here: this file's stack).
    assert {name: services[name]["profiles"] for name in set(services) - default} == {
        "prometheus": ["observability"], "grafana": ["observability"], "redis": ["cluster"], "webdis": ["cluster"],
        "envoy-a": ["cluster"], "envoy-b": ["cluster"]}
    for name in ("envoy", *NODES):
        assert services[name]["image"] == "envoyproxy/envoy:v1.40.0", "the Envoy version the tests run"
    assert services["redis"]["image"] == "redis:7-bookworm"
    assert services["webdis"]["image"] == "nicolas/webdis:0.1.22"
    assert services["kong"]["image"].startswith("kong:3.9"), "Kong 3.9: the last open-source release with Wasm"
    # The IdP's image is built from the repository wherever compose runs (no npm install at start).
    assert services["idp"]["build"] == "containers/idp"
    assert "oidc-provider@9.13.3" in (ROOT / "containers" / "idp" / "Dockerfile").read_text()
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/oidc-provider"]["version"] == "9.13.3"
    # So is the stand-in upstream's: Python with botocore, for its Bedrock mode.
    assert services["upstream"]["build"] == "containers/upstream"
    assert services["upstream"]["image"] == "claude-sso-gateway/upstream:botocore-1.44.8"
    # The local override only swaps Kong for its Wasm runtime.
    assert set(LOCAL["services"]) == {"kong"}
    assert LOCAL["services"]["kong"]["image"] == "claude-sso-gateway/kong-runtime:local"


def full_name(image: str) -> str:
    """An image name as Podman spells it: docker.io/library/redis:7-bookworm for redis:7-bookworm."""
    if "/" not in image:
        image = f"library/{image}"
    return image if "." in image.split("/")[0] else f"docker.io/{image}"


def test_every_image_the_stack_runs_here_has_a_local_stand_in():
    """Where no registry is reachable (here, CI) compose-images.sh builds every image the default
    services and the cluster profile use; the override's Kong runtime stands in for Kong."""
    script = (ROOT / "scripts" / "compose-images.sh").read_text()
    built = set(re.findall(r"^build (\S+) ", script, re.M))
    services = {**COMPOSE["services"]}
    for name, override in LOCAL["services"].items():
        services[name] = {**services[name], **override}
    for name, service in services.items():
        if service.get("profiles") not in (None, ["cluster"]):
            continue
        image = service["image"]
        assert full_name(image) in built or image in built, f"{name}: nothing builds {image} here"
        if service.get("build"):
            assert f"build {image} {Path(service['build']).name}" in script, name


def test_the_stand_in_upstream_serves_bedrock_as_in_make_demo():
    """envoy/demo.yaml and envoy/cluster.yaml send claude-sonnet-4-5 to a bedrock target on the stand-in's
    port: the stand-in runs with `--bedrock`, as scripts/demo.sh runs it, in an image with botocore (its
    SigV4 check) at the version and with the dependencies .venv has, where the tests run it."""
    upstream = COMPOSE["services"]["upstream"]
    assert "--bedrock" in upstream["command"]
    assert "stub_upstream.py --port 9200 --api-key demo-upstream-key --bedrock" in \
        (ROOT / "scripts" / "demo.sh").read_text()
    for config in ("demo.yaml", "cluster.yaml"):
        targets = filter_config(yaml.safe_load((ROOT / "envoy" / config).read_text()))["targets"]
        assert targets["bedrock"]["provider"] == "bedrock", config
    dockerfile = (ROOT / "containers" / "upstream" / "Dockerfile").read_text()
    pins = dict(re.findall(r"\b([A-Za-z][\w.-]*)==(\S+)", dockerfile))
    requirements = dict(re.findall(r"^([\w.-]+)==(\S+)$", (ROOT / "tests" / "requirements.txt").read_text(), re.M))
    assert pins["botocore"] == requirements["botocore"]
    assert pins == {name: importlib.metadata.version(name) for name in pins}, "the versions .venv has"
    needed = {name for name in importlib.metadata.requires("botocore") if "extra ==" not in name}
    assert {re.match(r"[\w.-]+", name).group(0) for name in needed} <= set(pins), needed


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


def node_config(name, tmp_path) -> tuple:
    """What a cluster node's own command runs Envoy with: its shell command, run here as compose runs
    it (`$$` is a `$`, the service's environment, its working directory: the repository root here),
    with `envoy` being this Envoy in --mode validate and /tmp/ being tmp_path. -> (result, config)"""
    service = COMPOSE["services"][name]
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c") and service["working_dir"] == "/work"
    assert "envoy/cluster.yaml:/work/envoy/cluster.yaml:ro" in " ".join(service["volumes"])
    script = script.replace("$$", "$").replace("/tmp/", f"{tmp_path}/")
    assert "exec envoy -c " in script
    script = script.replace("exec envoy ", f"exec {envoy_binary()} --mode validate ")
    result = subprocess.run(["sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **service["environment"]})
    [config] = tmp_path.glob("*.yaml")
    return result, yaml.safe_load(config.read_text())


def ports_of(config) -> tuple:
    [lst] = config["static_resources"]["listeners"]
    return lst["address"]["socket_address"]["port_value"], config["admin"]["address"]["socket_address"]["port_value"]


@pytest.mark.parametrize("name", NODES)
def test_each_cluster_node_runs_a_valid_config_on_its_own_ports(name, tmp_path):
    result, config = node_config(name, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert ports_of(config) == NODES[name]
    # Only the ports differ from envoy/cluster.yaml.
    written = yaml.safe_load(CLUSTER_YAML.read_text())
    assert ports_of(written) == NODES["envoy-a"]
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 10001
    config["admin"]["address"]["socket_address"]["port_value"] = 9911
    assert config == written
    command = COMPOSE["services"][name]["command"][2]
    assert "--concurrency 2" in command and "--base-id $$GATEWAY_PORT" in command, "one base id per node"


def filter_config(envoy_config) -> dict:
    [lst] = envoy_config["static_resources"]["listeners"]
    [chain] = lst["filter_chains"]
    [hcm] = chain["filters"]
    [wasm] = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    return json.loads(wasm["typed_config"]["config"]["configuration"]["value"])


def test_the_cluster_config_is_the_demo_config_plus_the_budget_store():
    """envoy/cluster.yaml differs from envoy/demo.yaml only in its ports, the filter's budget_store
    and a cluster for Webdis: the two cannot drift apart (make demo-cluster reads the same file)."""
    demo = yaml.safe_load((ROOT / "envoy" / "demo.yaml").read_text())
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    store = filter_config(cluster).pop("budget_store")
    assert {k: v for k, v in filter_config(cluster).items() if k != "budget_store"} == filter_config(demo)
    assert store == {"kind": "webdis", "upstream": "127.0.0.1:7379", "sync_ms": 500,
                     "on_failure": {"divide_by_nodes": 3}}
    # Webdis's cluster, named as the store's upstream.
    webdis = cluster["static_resources"]["clusters"].pop()
    assert webdis["name"] == store["upstream"] == "127.0.0.1:7379"
    [[endpoint]] = [e["lb_endpoints"] for e in webdis["load_assignment"]["endpoints"]]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 7379}
    # The rest is demo.yaml, on the other ports.
    assert ports_of(demo) == (10000, 9901)
    [lst] = cluster["static_resources"]["listeners"]
    lst["address"]["socket_address"]["port_value"] = 10000
    cluster["admin"]["address"]["socket_address"]["port_value"] = 9901
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    [wasm] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    [demo_wasm] = [f for f in demo["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                   ["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    wasm["typed_config"]["config"]["configuration"]["value"] = \
        demo_wasm["typed_config"]["config"]["configuration"]["value"]
    assert cluster == demo


def test_webdis_fronts_the_redis_the_nodes_sync_through():
    services = COMPOSE["services"]
    redis = services["redis"]["command"]
    assert redis[0] == "redis-server" and redis[redis.index("--port") + 1] == "6390"
    script = services["webdis"]["command"][2]
    webdis = json.loads(re.search(r"printf '([^']*)' > /tmp/webdis.json", script).group(1))
    assert (webdis["redis_host"], webdis["redis_port"]) == ("127.0.0.1", 6390)
    assert f"{webdis['http_host']}:{webdis['http_port']}" == filter_config(yaml.safe_load(CLUSTER_YAML.read_text()))[
        "budget_store"]["upstream"]
    assert webdis["daemonize"] is False and script.endswith("exec webdis /tmp/webdis.json")
    for name in NODES:
        assert services[name]["depends_on"]["webdis"] == {"condition": "service_started"}


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
    up = compose("up", timeout=1200, env={"COMPOSE_PROFILES": "cluster"})
    assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"
    yield time.monotonic() - started
    compose("down")


@pytest.fixture(scope="module")
def tokens(stack):
    def token(user):
        return subprocess.run(["bash", "scripts/demo-token.sh", user, ""], cwd=ROOT, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    return {user: token(user) for user in ("alice", "bob", "carol")}


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


def test_the_bedrock_backed_model_answers(stack, tokens):
    """claude-sonnet-4-5 goes to the `bedrock` target (envoy/demo.yaml), the stand-in's Bedrock mode: the
    filter signs the request with SigV4, the stand-in checks it with botocore and answers in Bedrock's
    event stream, which the client gets as Anthropic's SSE. (Without `--bedrock` the stand-in took
    the path for an Anthropic one, refused the missing key, and the gateway answered 502.) bob: the
    power tier, whose budget on this gateway no other test spends."""
    answer = ask(GATEWAYS["envoy"], tokens["bob"], "claude-sonnet-4-5")
    assert answer.status == 200, answer.body
    assert b"message_stop" in answer.body, answer.body
    with urllib.request.urlopen("http://127.0.0.1:9200/__stub/requests", timeout=5) as r:
        paths = [request["path"] for request in json.loads(r.read())]
    assert paths[-1].startswith("/model/us.anthropic.claude-sonnet-4-5"), paths[-3:]


# The cluster profile: two nodes sharing budgets through Redis behind Webdis.

ONE_ANSWER = 120 + 30 + 1000 + 2000  # the tokens the stand-in reports per answer, all counted


def node_stats(admin) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=budget_store", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {k.strip(): int(v) for k, _, v in (line.partition(":") for line in lines) if v.strip().isdigit()}


def small(port, token, seconds=20):
    """Claude Code's small title request (haiku); a 503 (keys still being fetched) is retried."""
    deadline = time.monotonic() + seconds
    while (answer := call(port, token, fixture("request_title_small_fast_model.json"))).status == 503 \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    return answer


@pytest.fixture(scope="module")
def synced(stack):
    """Both nodes have synced with Redis (until then they admit on a third of each limit)."""
    key = "wasmcustom.claude_sso_gateway_budget_store_health_changes_total.outcome.synced"
    deadline = time.monotonic() + 30
    for name, (_, admin) in NODES.items():
        while node_stats(admin).get(key, 0) < 1:
            assert time.monotonic() < deadline, f"{name} never synced with the budget store: {node_stats(admin)}"
            time.sleep(0.2)


def test_a_persons_spend_on_one_node_shows_on_the_other(stack, synced, tokens):
    """alice (standard tier: budgets per person) spends on envoy-a; envoy-b's answers then count it.
    The 30-day window's header: the answers' remaining budget after their own reserve."""
    header = "x-ai-ratelimit-remaining-2592000-anthropic"
    (a, _), (b, _) = NODES.values()
    first = small(a, tokens["alice"])
    assert first.status == 200, first.body
    time.sleep(1.5)  # a few sync intervals (500 ms): envoy-a's spend is in Redis
    # A node pulls a person's counters from its first admission of them on (README, Budgets: the one
    # sync interval of traffic the bound allows), so envoy-b's second answer counts everything.
    assert small(b, tokens["alice"]).status == 200
    time.sleep(1.5)
    second = small(b, tokens["alice"])
    assert second.status == 200, second.body
    # Both answers hold the same reserve (same body): between them, two answers were settled, the
    # one through envoy-a included. (Without the store envoy-b would count only its own one.)
    assert int(second.headers[header]) == int(first.headers[header]) - 2 * ONE_ANSWER, \
        (first.headers, second.headers)


def test_once_the_tiers_budget_is_spent_both_nodes_refuse(stack, synced, tokens):
    """bob (power tier: 100000 tokens a minute for the whole tier) alternates between the nodes, a
    request every 250 ms, until both refuse. Admitted: at least what one node on its own admits
    against that limit, and far fewer than two nodes that did not share would (twice as many): at
    most two more per node, what a node admits before the other's spend reaches it (the other's
    push, then its own pull: up to two sync intervals; README, Budgets, the overshoot bound)."""
    body = fixture("request_title_small_fast_model.json")
    limit, reserve = 100000, len(body) // 4 + min(json.loads(body)["max_tokens"], 4096)
    alone = (limit - reserve) // ONE_ANSWER + 1  # admitted while the settled spend plus the reserve fit
    # The minute's window is sliding: all of it within one minute (it takes about 10 s), so no
    # earlier window's share drops out midway.
    if time.time() % 60 > 45:
        time.sleep(60.5 - time.time() % 60)
    ports = [port for port, _ in NODES.values()]
    admitted, refused_on = 0, {}
    for i in range(2 * alone):
        port = ports[i % 2]
        answer = small(port, tokens["bob"])
        if answer.status == 200:
            admitted += 1
        else:
            assert answer.status == 429, answer.body
            assert int(answer.headers["retry-after"]) > 0
            refused_on[port] = refused_on.get(port, 0) + 1
            if all(refused_on.get(p, 0) >= 2 for p in ports):
                break
        time.sleep(0.25)
    assert sorted(refused_on) == ports, f"the 429s start on both nodes: {refused_on}, {admitted} admitted"
    assert alone <= admitted <= alone + 2 * len(ports), admitted


def test_down_leaves_no_container_and_no_listening_port(stack):
    """The cluster profile's containers and ports too (compose.sh `down` removes them whether or not
    COMPOSE_PROFILES names the profile)."""
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
