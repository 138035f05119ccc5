#!/usr/bin/env python3
"""Host calls per request, and the filter's own time per callback, in V8 without Envoy.

Runs the built .wasm under bench/hostcalls/run.mjs (a minimal Proxy-Wasm host in Node.js) with
`make bench`'s filter configuration and token: one request at a time through every callback
(request headers, body, response headers, body chunks, log), as Envoy calls them. Prints, per
body/answer kind, how many times each host function is called in each callback, and the
microseconds the filter's own code takes inside the VM per callback (fastest and median batch;
the stand-in host's time inside its host calls, more than half of each callback here, is timed
apart and left out).

    python3 bench/hostcalls.py            # the 1 KiB and 130 KB bodies, JSON and SSE answers, and a
                                          # long (70 KB) streamed answer
    python3 bench/hostcalls.py --json     # the raw results
    python3 bench/hostcalls.py --cold     # a MiB of other data read before each callback (outside
                                          # its time), so the filter runs with cold caches as
                                          # between Envoy's callbacks
    HOSTCALLS_NODE_FLAGS="--cpu-prof --cpu-prof-dir=DIR --cpu-prof-interval 20" python3 bench/hostcalls.py
                                          # V8's sampling profile of each run, the filter's
                                          # functions by name (the stand-in host's own JS in it
                                          # too)
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "bench")]

from bench import PATH, bodies, upstream_routes  # noqa: E402
from tests.conftest import UPSTREAM_KEY, gateway_config  # noqa: E402
from tests.harness.envoy import WASM  # noqa: E402
from tests.harness.signer import Signer  # noqa: E402

RUNNER = ROOT / "bench" / "hostcalls" / "run.mjs"
# What --cold reads between callbacks: more than a core's L2 cache here (512 KiB).
COLD_EVICT_BYTES = 1 << 20


def answers():
    """The stand-in upstream's JSON and SSE answers (what bench.py's upstream Envoy sends)."""
    routes = upstream_routes()
    sse = routes[0]["direct_response"]["body"]["inline_string"]
    message = routes[1]["direct_response"]["body"]["inline_string"]
    # SSE as a host delivers it: one chunk per event.
    events = [e + "\n\n" for e in sse.split("\n\n") if e]
    # A long answer as Envoy hands it on: 200 text deltas (about 70 KB) in 16 KiB reads.
    text = json.dumps("Here is the change, step by step, with the reasons for each part of it. " * 3)
    delta = ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             f'"delta":{{"type":"text_delta","text":{text}}}}}\n\n')
    long = events[0] + delta * 200 + "".join(events[-3:])
    sse_headers = [[":status", "200"], ["content-type", "text/event-stream"]]
    return {
        "json": {"headers": [[":status", "200"], ["content-type", "application/json"],
                             ["content-length", str(len(message))]], "chunks": [message]},
        "sse": {"headers": sse_headers, "chunks": events},
        "sse-long": {"headers": sse_headers, "chunks": [long[i:i + 16384] for i in range(0, len(long), 16384)]},
    }


def run(workdir: Path, signer: Signer, config: dict, token: str, size: str, answer: str, requests=2000,
        evict_bytes=0) -> dict:
    body_path = workdir / f"body-{size}-{answer}.json"
    body_path.write_bytes(bodies()[(size, answer.removesuffix("-long"))])
    discovery = {"issuer": signer.issuer, "jwks_uri": f"{signer.issuer}/jwks"}
    scenario = {
        "wasm": str(WASM), "config": config, "env": {"ANTHROPIC_API_KEY": UPSTREAM_KEY},
        "callouts": {"/.well-known/openid-configuration": {"status": 200, "body": discovery},
                     "/jwks": {"status": 200, "body": signer.jwks()}},
        "request": {"headers": [[":method", "POST"], [":path", PATH], [":authority", "gateway"],
                                [":scheme", "http"], ["content-type", "application/json"],
                                ["anthropic-version", "2023-06-01"], ["authorization", f"Bearer {token}"],
                                ["x-api-key", token], ["user-agent", "claude-cli/2.1.330 (external, cli)"]],
                    "body": str(body_path)},
        "response": answers()[answer],
        "requests": requests if size == "1k" else requests // 4,
        "batches": 15,
        "evict_bytes": evict_bytes,
    }
    path = workdir / f"scenario-{size}-{answer}.json"
    path.write_text(json.dumps(scenario))
    node = ["node", *os.environ.get("HOSTCALLS_NODE_FLAGS", "").split()]
    out = subprocess.run([*node, str(RUNNER), str(path)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"run.mjs failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main():
    if not WASM.exists():
        sys.exit(f"{WASM} is missing: run `make build`")
    signer = Signer()
    try:
        config = gateway_config(signer)
        config["tiers"][1]["limits"] = [{"limit": 10**15, "window_seconds": 60}]
        token = signer.token(exp=int(time.time()) + 3 * 3600)
        results = {}
        with tempfile.TemporaryDirectory(prefix="csg-hostcalls-") as workdir:
            for size, answer in (("1k", "json"), ("1k", "sse"), ("130k", "json"), ("130k", "sse"), ("1k", "sse-long")):
                results[f"{size} {answer}"] = run(Path(workdir), signer, config, token, size, answer,
                                                  evict_bytes=COLD_EVICT_BYTES if "--cold" in sys.argv else 0)
    finally:
        signer.stop()
    if "--json" in sys.argv:
        print(json.dumps(results, indent=1))
        return
    for kind, r in results.items():
        total_calls = sum(n for cb in r["host_calls"].values() for n in cb.values())
        print(f"\n## {kind}: {total_calls} host calls per request; the filter's own time in the VM "
              f"{r['us_fastest']['total']} µs (fastest batch), {r['us_median']['total']} µs (median); "
              f"this stand-in host's, in its calls, {r['us_stand_in_host_fastest']['total']} µs")
        for cb, calls in r["host_calls"].items():
            print(f"  {cb:<17} {r['us_fastest'].get(cb, 0):>7} µs  " +
                  ", ".join(f"{name.removeprefix('proxy_')}×{n}" for name, n in sorted(calls.items())))
        if r["warnings"]:
            print(f"  warnings: {r['warnings']}")


if __name__ == "__main__":
    main()
