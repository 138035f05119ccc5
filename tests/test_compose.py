"""docker-compose.yml, checked without a Docker engine: it is valid against the Compose
Specification's schema, every path it mounts exists (the .wasm is the file `make build` makes),
every config it mounts is one the tests load, and its Envoy config passes `envoy --mode validate`."""
import json
from pathlib import Path

import jsonschema
import yaml

from tests.harness.envoy import ROOT, WASM, validate

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SPEC = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())

# Configs mounted into containers, and the tests that load the same files.
TESTED_CONFIGS = {
    "envoy/demo.yaml": "tests/test_samples.py (validate, and the make-demo stack)",
    "kong/kong.yml": "tests/test_kong.py (schema/parser agreement)",
    "kong/kong.conf": "tests/test_kong.py (required settings)",
    "kong/claude_sso_gateway.meta.json": "tests/test_kong.py (the schema itself)",
    "tools/stub_upstream.py": "every gateway test",
    "demo": "tests/test_claude_code.py, tests/test_samples.py (demo/idp)",
}


def mounts():
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            yield name, source, target


def test_valid_against_the_compose_specification():
    jsonschema.Draft201909Validator(SPEC).validate(COMPOSE)


def test_services_and_images():
    services = COMPOSE["services"]
    assert set(services) == {"idp", "upstream", "envoy", "kong"}
    assert services["envoy"]["image"] == "envoyproxy/envoy:v1.40.0", "the Envoy version the tests run"
    assert services["kong"]["image"].startswith("kong:3.9"), "Kong 3.9: the last open-source release with Wasm"


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
        if rel.endswith((".wasm", "package.json", "package-lock.json")):
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
