"""The sample Envoy configs validate, and `make demo`'s stack answers as the README says."""
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.harness.client import call, fixture, with_model
from tests.harness.envoy import ROOT, validate


@pytest.mark.parametrize("name", ["envoy.yaml", "bedrock.yaml", "demo.yaml", "demo-anthropic.yaml"])
def test_sample_envoy_configs_validate(name, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-validate-only")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDVALIDATEONLY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "validate-only")
    result = validate(ROOT / "envoy" / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_production_sample_refuses_to_load_without_the_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = validate(ROOT / "envoy" / "envoy.yaml")
    assert result.returncode != 0
    logs = result.stdout + result.stderr
    assert "config error: targets.anthropic.api_key_env: environment variable ANTHROPIC_API_KEY is not set" in logs


def test_the_production_samples_tls_block_loads_as_its_comment_writes_it(tmp_path, monkeypatch):
    """envoy/envoy.yaml listens in plain text for a TLS-terminating load balancer in front; the
    commented `transport_socket` it shows for TLS on the listener itself loads as written, with a
    certificate in place of /etc/envoy/tls/."""
    sample = (ROOT / "envoy" / "envoy.yaml").read_text()
    lines = sample.splitlines()
    start = lines.index("      #   transport_socket:")
    block = []
    for line in lines[start:]:
        if not line.startswith("      #   "):
            break
        block.append("          " + line[len("      #   "):])
    assert block[-1].strip().startswith("private_key:"), block
    key, cert = tmp_path / "gateway.key", tmp_path / "gateway.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=gw",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = "\n".join(block).replace("/etc/envoy/tls/gateway.crt", str(cert)).replace("/etc/envoy/tls/gateway.key", str(key))
    assert sample.count("      filter_chains:\n        - filters:\n") == 1
    with_tls = tmp_path / "envoy-tls.yaml"
    with_tls.write_text(sample.replace("      filter_chains:\n        - filters:\n",
                                       "      filter_chains:\n        - " + tls.lstrip() + "\n          filters:\n"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-validate-only")
    result = validate(with_tls)
    assert result.returncode == 0, result.stdout + result.stderr + with_tls.read_text()[:3000]
    key.unlink()
    assert validate(with_tls).returncode != 0, "the certificate is loaded, not only parsed"


def test_bedrock_sample_takes_long_lived_keys_and_a_session_token_as_its_comment_says(tmp_path, monkeypatch):
    """envoy/bedrock.yaml loads with long-lived keys and no AWS_SESSION_TOKEN; with the two additions its
    header comment names for temporary credentials it loads when the token is set and refuses (naming the
    variable) when it is not."""
    sample = (ROOT / "envoy" / "bedrock.yaml").read_text()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-validate-only")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDVALIDATEONLY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "validate-only")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    comment = " ".join(line.lstrip("# ") for line in sample.splitlines() if line.startswith("#"))
    assert "add AWS_SESSION_TOKEN to `host_env_keys` below and " \
           '`"session_token_env": "AWS_SESSION_TOKEN"` to the bedrock target' in comment
    keys = "host_env_keys: [ANTHROPIC_API_KEY, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]"
    field = '"secret_access_key_env": "AWS_SECRET_ACCESS_KEY"}'
    assert sample.count(keys) == 1 and sample.count(field) == 1
    result = validate(ROOT / "envoy" / "bedrock.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    temporary = tmp_path / "bedrock-temporary.yaml"
    temporary.write_text(sample.replace(keys, keys[:-1] + ", AWS_SESSION_TOKEN]")
                         .replace(field, field[:-1] + ', "session_token_env": "AWS_SESSION_TOKEN"}'))
    refused = validate(temporary)
    assert refused.returncode != 0
    assert "config error: targets.bedrock.session_token_env: environment variable AWS_SESSION_TOKEN is not set" \
        in refused.stdout + refused.stderr
    monkeypatch.setenv("AWS_SESSION_TOKEN", "IQoJvalidateonly")
    result = validate(temporary)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_sample_routes_each_target_by_name_and_refuses_the_rest():
    """Each Envoy sample sends a request only to the cluster of the target the filter named
    (x-gateway-target, matched exactly), one route per target in its filter config, and
    refuses a target without a route (a 502 in Anthropic's shape that Claude Code does not
    retry). The catch-all used to go to the Anthropic API: a second Bedrock target without a
    route of its own sent its signed request and session token there."""
    import yaml

    def routes_and_targets(node, found):
        if isinstance(node, dict):
            for vh in node.get("virtual_hosts", []):
                found["routes"].append(vh["routes"])
            conf = node.get("configuration")
            if isinstance(conf, dict) and "value" in conf:
                found["targets"].update(json.loads(conf["value"])["targets"])
            for value in node.values():
                routes_and_targets(value, found)
        elif isinstance(node, list):
            for value in node:
                routes_and_targets(value, found)
        return found

    samples = sorted((ROOT / "envoy").glob("*.yaml"))
    assert len(samples) >= 5
    for sample in samples:
        found = routes_and_targets(yaml.safe_load(sample.read_text()), {"routes": [], "targets": {}})
        assert found["targets"] and found["routes"], sample.name
        for routes in found["routes"]:
            *named, last = routes
            by_name = {}
            for route in named:
                (header,) = route["match"]["headers"]
                assert header["name"] == "x-gateway-target" and "exact" in header["string_match"], (sample.name, route)
                assert route["request_headers_to_remove"] == ["x-gateway-target"], (sample.name, route)
                by_name[header["string_match"]["exact"]] = route["route"]["cluster"]
            assert set(by_name) == set(found["targets"]), (sample.name, by_name)
            assert "headers" not in last["match"] and last["direct_response"]["status"] == 502, (sample.name, last)
            body = json.loads(last["direct_response"]["body"]["inline_string"])
            assert body["type"] == "error" and body["error"]["type"] == "api_error", sample.name
            added = {h["header"]["key"]: h["header"]["value"] for h in last["response_headers_to_add"]}
            assert added == {"content-type": "application/json", "x-should-retry": "false",
                             "x-gateway-no-route": "1"}, sample.name


def wait_for(url, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.read()
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


def test_make_demo_stack_serves_claude_code_traffic():
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    demo = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("http://127.0.0.1:9901/ready")
        wait_for("http://127.0.0.1:9100/.well-known/openid-configuration")
        token = subprocess.run(["bash", "scripts/demo-token.sh", "bob", ""], cwd=ROOT, capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip()
        deadline = time.monotonic() + 20
        while (answer := call(10000, token, with_model(fixture("request_main_stream.json"), "claude-opus-4-7"))).status == 503:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert answer.status == 200, answer.body
        assert b"message_stop" in answer.body
        assert int(answer.headers["x-ai-ratelimit-remaining-60-anthropic"]) < 100000
        bedrock = call(10000, token, with_model(fixture("request_main_stream.json"), "claude-sonnet-4-5"))
        assert bedrock.status == 200, bedrock.body
        assert b"message_stop" in bedrock.body, "the Bedrock-backed model answers as Anthropic SSE"
        refused = call(10000, "not.a.token", fixture("request_main_stream.json"))
        assert refused.status == 401
        assert call(10000, None, path="/api/hello", method="HEAD").status == 200
        # A second `make demo` meanwhile starts nothing: it names the ports in use and stops.
        second = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "demo: error: ports in use: 9100 (the demo IdP), 9200 (the stand-in Anthropic API), " \
               "9901 (Envoy's admin), 10000 (the gateway)" in second.stderr
        assert "[idp]" not in second.stdout + second.stderr and "Ctrl-C" not in second.stdout
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(15)


def test_make_demo_cluster_shares_one_budget_across_its_nodes():
    cluster = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "scripts/demo_cluster.py"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for admin in (9911, 9912, 9913):
            wait_for(f"http://127.0.0.1:{admin}/ready")
        wait_for("http://127.0.0.1:9100/.well-known/openid-configuration")
        token = subprocess.run(["bash", "scripts/demo-token.sh", "alice", ""], cwd=ROOT, capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip()
        body = fixture("request_title_small_fast_model.json")
        header = "x-ai-ratelimit-remaining-2592000-anthropic"
        time.sleep(2.0)  # each node's first sync loads the windows (until then limits are divided by 3)
        deadline = time.monotonic() + 20
        while (first := call(10001, token, body)).status != 200:
            assert time.monotonic() < deadline, first.body
            time.sleep(0.5)
        time.sleep(2.0)  # a few sync intervals: node 1's spend reaches Redis
        # A node pulls a person's counters from its first admission of them on (the stated
        # overshoot: up to two sync intervals of traffic per node), so node 2's second answer shows both.
        assert call(10002, token, body).status == 200
        time.sleep(2.0)
        second = call(10002, token, body)
        assert second.status == 200, second.body
        spent = 120 + 30 + 1000 + 2000  # what the stand-in reports per answer
        assert int(second.headers[header]) <= int(first.headers[header]) - 2 * spent, \
            "node 2 admits against what node 1 spent"
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        cluster.wait(20)


def test_every_sample_answers_a_provider_it_cannot_reach_within_seconds():
    """Claude Code retries a 502 ten times: nginx's and Kong's default of 60 s to connect made a
    blackholed provider about eleven silent minutes (Envoy's samples connect within 5 s)."""
    import re

    root = ROOT
    for conf in ("nginx/nginx.conf", "containers/kong-runtime/nginx.conf"):
        text = (root / conf).read_text()
        assert re.findall(r"proxy_connect_timeout (\d+)s;", text) == ["5"], conf
    for conf in ("kong/kong.yml", "kong/kong-3.8.yml"):
        assert re.findall(r"connect_timeout: (\d+)", (root / conf).read_text()) == ["5000"], conf
    for conf in sorted((root / "envoy").glob("*.yaml")):
        timeouts = re.findall(r"connect_timeout: (\d+)s", conf.read_text())
        assert timeouts and all(int(t) <= 5 for t in timeouts), conf.name
