#!/usr/bin/env python3
"""`make demo-cluster`: the demo with budgets shared by 3 gateway nodes through Redis.

Starts redis-server (127.0.0.1:6390), Webdis (127.0.0.1:7379), the demo IdP (9100), the stand-in
API (9200) and three Envoy nodes (127.0.0.1:10001-10003, admin 9911-9913), each with two workers
and the filter config of envoy/cluster.yaml (the demo's plus a `budget_store`, as the compose stack's
cluster profile runs it). Ctrl-C stops everything."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.harness.envoy import WASM, bootstrap, envoy_binary, listener  # noqa: E402

REDIS, WEBDIS = 6390, 7379
NODES = [(10001, 9911), (10002, 9912), (10003, 9913)]


def demo_filter_config() -> dict:
    """The filter config of envoy/cluster.yaml (the compose stack's cluster nodes): envoy/demo.yaml's
    with the shared budget store on Webdis."""
    text = (ROOT / "envoy" / "cluster.yaml").read_text()
    start = text.index("value: |") + len("value: |")
    block = text[start:text.index("- name: envoy.filters.http.router", start)]
    config = json.loads(block)
    assert config["budget_store"]["upstream"] == f"127.0.0.1:{WEBDIS}"
    assert config["budget_store"]["on_failure"] == {"divide_by_nodes": len(NODES)}
    return config


def main():
    work = Path(tempfile.mkdtemp(prefix="csg-cluster-"))
    procs = []

    def start(args, **kw):
        procs.append(subprocess.Popen(args, **kw))

    def stop(*_):
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    start(["redis-server", "--port", str(REDIS), "--save", "", "--appendonly", "no", "--dir", str(work)],
          stdout=subprocess.DEVNULL)
    (work / "webdis.json").write_text(json.dumps({
        "redis_host": "127.0.0.1", "redis_port": REDIS, "http_host": "127.0.0.1", "http_port": WEBDIS,
        "threads": 2, "daemonize": False, "database": 0, "logfile": str(work / "webdis.log")}))
    start(["webdis", str(work / "webdis.json")], stdout=subprocess.DEVNULL)
    start(["node", "demo/idp/server.mjs", "--port", "9100"], cwd=ROOT, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL)
    start([str(ROOT / ".venv" / "bin" / "python"), "tools/stub_upstream.py", "--port", "9200", "--api-key",
           "demo-upstream-key", "--bedrock"], cwd=ROOT, stdout=subprocess.DEVNULL)
    time.sleep(1.5)
    config = demo_filter_config()
    for port, admin in NODES:
        lst = listener(config, port)
        boot = bootstrap(lst, admin, 9200, ["127.0.0.1:9100", f"127.0.0.1:{WEBDIS}"])
        path = work / f"envoy-{port}.json"
        path.write_text(json.dumps(boot))
        start([envoy_binary(), "-c", str(path), "--concurrency", "2", "--base-id", str(port), "--log-level", "warn",
               "--component-log-level", "wasm:info"], cwd=ROOT)
    print(f"""
claude-sso-gateway demo cluster (budgets shared through Redis)
  gateways  http://127.0.0.1:10001 10002 10003   (admin 9911 9912 9913)
  Redis     127.0.0.1:{REDIS} behind Webdis http://127.0.0.1:{WEBDIS}
  IdP       http://127.0.0.1:9100 (as in make demo)
Get a token: make demo-token USER=alice; a request to any node spends the same budget.
Ctrl-C stops everything.""", flush=True)
    assert WASM.exists()
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
