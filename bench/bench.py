#!/usr/bin/env python3
"""`make bench`: what the filter costs in Envoy on this machine.

Envoy CPU time per request (from /proc, one worker, keep-alive client, the captured 130 KB Claude
Code body, a streamed answer) for a plain proxy hop and for the gateway with a cached token and
with a new token every request (a full RS256 verification), and the memory the Wasm VM adds.
"""
import http.client
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from stub_upstream import StubUpstream  # noqa: E402

from tests.conftest import UPSTREAM_KEY, gateway_config  # noqa: E402
from tests.harness.client import fixture  # noqa: E402
from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.signer import Signer  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(envoy, tokens, body, plain=False):
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    latencies = []

    def one(token):
        start = time.perf_counter()
        # Without the filter nothing swaps credentials, so the plain hop carries the upstream key.
        auth = {"x-api-key": UPSTREAM_KEY} if plain else {"authorization": f"Bearer {token}", "x-api-key": token}
        conn.request("POST", "/v1/messages?beta=true", body=body,
                     headers={**auth, "content-type": "application/json", "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        latencies.append(time.perf_counter() - start)

    for token in tokens[:50]:
        one(token)
    latencies.clear()
    before = cpu_seconds(envoy.process.pid)
    for token in tokens[50:]:
        one(token)
    used = cpu_seconds(envoy.process.pid) - before
    conn.close()
    return used / len(latencies) * 1e6, statistics.median(latencies) * 1e3


def main():
    stub = StubUpstream(api_key=UPSTREAM_KEY).start()
    signer = Signer()
    body = fixture("request_main_stream.json")
    env = {"ANTHROPIC_API_KEY": UPSTREAM_KEY}
    config = gateway_config(signer)
    config["tiers"][1]["limits"] = [{"limit": 10**12, "window_seconds": 60}]
    same = [signer.token()] * (REQUESTS + 50)
    print(f"minting {REQUESTS + 50} tokens ...", file=sys.stderr)
    fresh = [signer.token(sub=f"user-{i}") for i in range(REQUESTS + 50)]
    rows = []
    plain = Envoy(config, stub.port, [signer.upstream], env=env, concurrency=1, with_filter=False)
    try:
        rows.append(("plain proxy hop (no filter)", *run(plain, same, body, plain=True)))
        plain_rss = rss_mib(plain.process.pid)
    finally:
        plain.stop()
    gw = Envoy(config, stub.port, [signer.upstream], env=env, concurrency=1)
    try:
        time.sleep(1)
        rows.append(("gateway, cached token", *run(gw, same, body)))
        rows.append(("gateway, new token each request (RS256 verify)", *run(gw, fresh, body)))
        gw_rss = rss_mib(gw.process.pid)
    finally:
        gw.stop()
        stub.stop()
        signer.stop()
    base = rows[0][1]
    print(f"\nEnvoy 1.40, one worker, {REQUESTS} requests of {len(body)} bytes each, streamed answers\n")
    print(f"{'case':<50} {'Envoy CPU µs/req':>17} {'added':>8} {'median ms':>10}")
    for name, cpu, median in rows:
        print(f"{name:<50} {cpu:>17.0f} {cpu - base:>8.0f} {median:>10.2f}")
    print(f"\nEnvoy RSS: {plain_rss:.0f} MiB without the filter, {gw_rss:.0f} MiB with it "
          f"(+{gw_rss - plain_rss:.0f} MiB for the main-thread and one worker VM)")


if __name__ == "__main__":
    main()
