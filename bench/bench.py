#!/usr/bin/env python3
"""`make bench`: what the filter costs in Envoy, beside a plain hop and Envoy's native filters.

Envoy 1.40 runs pinned to one core with one worker; `wrk` (closed loop, keep-alive) runs pinned to
the other core with the upstream. For each Envoy configuration and each body/answer kind, several
rounds (interleaved, so that noise from other work on the machine spreads over every
configuration; each round on new Envoy processes, with the configurations in a shuffled order, so
that neither a process's place in memory nor a configuration's place in the round biases it) give
Envoy CPU µs per request (/proc utime+stime over the requests completed), requests/s and wrk's p50/p99 latency, as medians with their spread. A raw-socket probe measures
the time to the first byte of a streamed answer over sequential requests. Envoy's RSS and the
`.wasm` sizes complete the table, which goes to stdout and into README.md (between the
`bench:begin` and `bench:end` markers).

Configurations: (1) passthrough (router only); (2) native: `jwt_authn` RS256 with a local JWKS and
no cache, `local_ratelimit` per user (descriptor from a header set from the `sub` claim), and a
header mutation (drop `authorization`, set the provider key); (3) native plus a Lua filter
rewriting `model` in the body; (4) an empty Rust Wasm filter (bench/empty-filter); (5) the Wasm
floor of the job: the same filter holding the headers, buffering the body, rewriting `model` by a
byte search and setting the body; (6) this filter, one token (verified once, then cached); (7) the
same with a `budget_store` (a real redis-server behind a real Webdis, synced every 500 ms); (8)
this filter, a new RS256 token every request.

Then the budget store's own traffic: one Envoy with the filter, 10 tiers and 1,000 people sending
requests, and what it sends to Webdis per second (from Envoy's cluster statistics); the
instructions Envoy executes per request in each configuration, under Valgrind's callgrind
(bench/instructions.py: counts the machine's load does not move); and the targets of issues 12
and 13 checked against the numbers of this run.

The upstream is a second Envoy answering from memory what tools/stub_upstream.py answers (same SSE
events and JSON; 401 without the provider key) after reading the whole request body: the Python
stub would be the bottleneck and make requests/s and latency measure itself.

Environment: BENCH_QUICK=1 (about two minutes: 1 round of 1 s after 1 s of warm-up, few probes; README not written
unless BENCH_README=1), BENCH_DURATION (s per run), BENCH_ROUNDS, BENCH_CONNECTIONS, BENCH_TTFB_REQUESTS,
BENCH_ENVOY_CPU / BENCH_LOAD_CPU (core numbers), BENCH_README=0/1, BENCH_ONLY (comma-separated
configuration names: a partial run, never written to the README), BENCH_SEED (the rounds' order).
"""
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "bench")]

from stub_upstream import sse_events  # noqa: E402

from tests.conftest import UPSTREAM_KEY, gateway_config  # noqa: E402
from tests.harness.client import fixture  # noqa: E402
from tests.harness.envoy import BUFFER_LIMIT, WASM, envoy_binary, free_port, static_cluster, wasm_filter  # noqa: E402
from tests.harness.signer import AUDIENCE, Signer  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
# wrk takes whole seconds.
DURATION = max(1, int(os.environ.get("BENCH_DURATION", "1" if QUICK else "4")))
WARMUP = 1  # seconds of load before a process's first cell of each body size (pools fill)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))
TTFB_REQUESTS = int(os.environ.get("BENCH_TTFB_REQUESTS", "20" if QUICK else "200"))
TOKENS = 300 if QUICK else 2000
# Config (6) keeps fewer verified tokens than it is sent, so every token is verified afresh (the
# cache empties when full, and a token comes back only after TOKENS others).
ROTATING_CACHE_ENTRIES = 64
# The 130 KB load's distinct turns (bodies() checks that their new parts outgrow the filter's
# default validation cache, VALIDATION_CACHE_BYTES, so none is ever found there).
TURNS = 512
assert TURNS > ROTATING_CACHE_ENTRIES, "with rotating tokens each turn has its own token: they must not fit the cache"
VALIDATION_CACHE_BYTES = 4 << 20  # src/config: the default `validation_cache_bytes`
ONLY = [c for c in os.environ.get("BENCH_ONLY", "").split(",") if c]
WRITE_README = os.environ.get("BENCH_README", "0" if QUICK or ONLY else "1") == "1"
# The budget store's traffic: people, tiers, seconds of load.
SYNC_PEOPLE, SYNC_TIERS = 1000, 10
SYNC_SECONDS = 3 if QUICK else 10
SYNC_MS = 500
TWO_CORES = (os.cpu_count() or 1) >= 2
ENVOY_CPU = os.environ.get("BENCH_ENVOY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1" if TWO_CORES else "0")
EMPTY_WASM = ROOT / "target" / "empty-filter" / "wasm32-wasip1" / "release" / "bench_empty_filter.wasm"
PATH = "/v1/messages?beta=true"
TICK = os.sysconf("SC_CLK_TCK")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

ALL_CONFIGS = [
    ("passthrough", "(1) passthrough (router only)"),
    ("native", "(2) native: jwt_authn RS256 + local_ratelimit per user + header mutation"),
    ("native_lua", "(3) native + Lua `model` rewrite"),
    ("empty_wasm", "(4) empty Rust Wasm filter"),
    ("wasm_rewrite", "(5) Wasm floor: hold headers, buffer body, rewrite `model`, set body"),
    ("wasm_calls", "(5a) the floor + every host call (6) makes, with fixed values and no decisions"),
    ("filter_cached", "(6) this filter, cached token"),
    ("filter_cold", "(6a) this filter, cached token, `validation_cache_bytes: 0` (every body validated whole)"),
    ("filter_store", "(7) this filter, cached token, budget store (Redis via Webdis)"),
    ("filter_rotating", "(8) this filter, new RS256 token each request"),
]
CONFIGS = list(ALL_CONFIGS)
if ONLY:
    unknown = set(ONLY) - {c for c, _ in CONFIGS}
    if unknown:
        sys.exit(f"BENCH_ONLY: no configuration named {', '.join(sorted(unknown))}")
    CONFIGS = [(c, label) for c, label in CONFIGS if c in ONLY or c == "passthrough"]
# Configurations that do not swap the key: the client sends the provider's.
PLAIN = ("passthrough", "empty_wasm", "wasm_rewrite", "wasm_calls", "wasm_calls_read")
KINDS = [("1k", "json"), ("1k", "sse"), ("130k", "json"), ("130k", "sse")]
BODY_NAMES = {"1k": "1 KiB body", "130k": "Claude Code body (130 KB)"}


class Processes:
    """Every process the benchmark starts, each in its own process group, stopped by `stop_all`."""

    def __init__(self):
        self.running = []

    def start(self, args, **kwargs):
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self):
        for proc in list(reversed(self.running)):
            self.stop(proc)


def pinned(cpu, args):
    return ["taskset", "-c", cpu, *args]


_HANDED_OUT: set[int] = set()


def unique_port() -> int:
    """A free port no other process of this run was given: a port is free when picked, but each
    process binds its own only once started, so `free_port` alone can hand one out twice."""
    while (port := free_port()) in _HANDED_OUT:
        pass
    _HANDED_OUT.add(port)
    return port


class EnvoyProcess:
    """One Envoy with one listener (`http_filters`, optional route rate limits), pinned to `cpu`; `wrap`:
    a command it runs under (bench/instructions.py: Valgrind)."""

    def __init__(self, procs, workdir, name, http_filters, clusters, cpu, env=None, routes=None, concurrency=1,
                 wrap=()):
        self.name, self.port, self.admin_port = name, unique_port(), unique_port()
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"max_direct_response_body_size_bytes": 1 << 20, "virtual_hosts": [{
                "name": name, "domains": ["*"], "routes": routes or [
                    {"match": {"prefix": "/"}, "route": {"cluster": "anthropic", "timeout": "300s"}}]}]},
            "http_filters": [*http_filters, {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }
        config = {
            "node": {"id": f"bench-{name}", "cluster": "bench"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {"clusters": clusters, "listeners": [{
                "name": name, "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}]},
        }
        path = Path(workdir) / f"{name}.json"
        path.write_text(json.dumps(config, indent=1))
        self.log = Path(workdir) / f"{name}.log"
        self.process = procs.start(
            pinned(cpu, [*wrap, envoy_binary(), "-c", str(path), "--concurrency", str(concurrency), "--log-level", "warn",
                         "--base-id", str(self.port)]),
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env={**os.environ, **(env or {})})

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited:\n{self.log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.read().strip() == b"LIVE":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"envoy {self.name} not ready:\n{self.log.read_text(errors='replace')}")

    def cpu_split(self):
        """CPU seconds used so far, in user space (Envoy, V8, the filter) and in the kernel."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / TICK, int(fields[12]) / TICK

    def rss_mib(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def upstream_routes():
    """What the stub answers, from memory: SSE or JSON (by `x-bench-answer`), 401 without the key."""
    usage = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 1000,
             "cache_read_input_tokens": 2000}
    sse = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in sse_events("claude-sonnet-4-6", usage))
    message = json.dumps({
        "id": "msg_stub", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "Hello from the stand-in upstream."}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": usage})
    key = {"name": "x-api-key", "string_match": {"exact": UPSTREAM_KEY}}

    def answer(status, body, content_type):
        return {"direct_response": {"status": status, "body": {"inline_string": body}},
                "response_headers_to_add": [{"header": {"key": "content-type", "value": content_type},
                                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}

    denied = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    return [
        {"match": {"prefix": "/", "headers": [key, {"name": "x-bench-answer", "string_match": {"exact": "sse"}}]},
         **answer(200, sse, "text/event-stream")},
        {"match": {"prefix": "/", "headers": [key]}, **answer(200, message, "application/json")},
        {"match": {"prefix": "/"}, **answer(401, denied, "application/json")},
    ]


def native_filters(signer, lua):
    """jwt_authn (RS256, local JWKS, no cache), local_ratelimit per `sub`, header mutation[, Lua]."""
    jwks = {"keys": [signer.keys["RS256"].jwk]}
    filters = [
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": signer.issuer, "audiences": [AUDIENCE],
                "local_jwks": {"inline_string": json.dumps(jwks)},
                "claim_to_headers": [{"header_name": "x-bench-user", "claim_name": "sub"}]}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": "bench_rl_enabled",
                               "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": "bench_rl_enforced",
                                "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            # One bucket per person: an entry without a value matches any value of `user`.
            "descriptors": [{"entries": [{"key": "user"}],
                             "token_bucket": {"max_tokens": 100000000, "tokens_per_fill": 100000000,
                                              "fill_interval": "60s"}}],
            "max_dynamic_descriptors": 100000,
            "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-bench-user",
                                                              "descriptor_key": "user"}}]}]}},
        {"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [
                {"remove": "authorization"},
                {"append": {"header": {"key": "x-api-key", "value": UPSTREAM_KEY},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}}},
    ]
    if lua:
        filters.append({"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_MODEL_REWRITE}}})
    return filters


# The first `"model": "<alias>"` in the body gets the provider's model id (a byte-level rewrite, as
# a Lua filter would do it; it does not validate the JSON).
LUA_MODEL_REWRITE = r"""
function envoy_on_request(handle)
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  local out, n = string.gsub(text, '"model"%s*:%s*"claude%-sonnet%-4%-6"', '"model":"claude-sonnet-4-6-20250929"', 1)
  if n > 0 then
    body:setBytes(out)
    handle:headers():replace("content-length", tostring(#out))
  end
end
"""


def bodies():
    """Body files by (size, answer): the 130 KB fixture as captured, with turn marks (from which
    the load script builds its turns), and a 1 KiB request."""
    big = fixture("request_main_stream.json")
    assert big.count(b'"stream": true') == 1, "the fixture's stream flag moved"
    for mark in (b"cc_version=2.1.330.440;", b'"say hi"'):
        assert big.count(mark) == 1, f"the fixture's {mark!r} moved"
    # The prompt (in `messages`) comes before the billing suffix (in `system`).
    big = big.replace(b'"say hi"', b'"say hi @@@@@@@@"').replace(b"cc_version=2.1.330.440;", b"cc_version=2.1.330.~~~;")
    assert 0 < big.find(b"@@@@@@@@") < big.find(b"~~~"), "the load script fills the prompt's mark first"
    # Each turn's new message must push the oldest one out of the cache before it comes round again.
    prompt = len(json.dumps(json.loads(big)["messages"][0]))
    assert TURNS * prompt > 1.25 * VALIDATION_CACHE_BYTES, f"{TURNS} turns of a {prompt}-byte message fit in the cache"
    out = {("130k", "sse"): big, ("130k", "json"): big.replace(b'"stream": true', b'"stream": false')}
    for answer in ("json", "sse"):
        head = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "stream": answer == "sse",
                "messages": [{"role": "user", "content": ""}]}
        pad = 1024 - len(json.dumps(head, separators=(",", ":")))
        head["messages"][0]["content"] = "x" * pad
        out[("1k", answer)] = json.dumps(head, separators=(",", ":")).encode()
    return out


LUA_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open("{body}", "rb"))
local body = f:read("*a")
f:close()
-- A body with turn marks is the next turn of a session: each request gets its own billing
-- suffix and prompt, as Claude Code's consecutive requests do; the rest repeats byte for byte.
-- The turns are built here, once: building 130 KB per request in Lua made wrk, not Envoy, the
-- bottleneck, and an idle Envoy spends more CPU per request. There are more of them than the
-- filter's validation cache holds (bench.py checks), so no turn's new part is ever found in it.
-- Their prompts differ in length too, as real ones do.
local a, a_end = body:find("@@@@@@@@", 1, true)
local b, b_end = body:find("~~~", 1, true)
local turns = {{}}
if a ~= nil and b ~= nil and a < b then
  local head, middle, tail = body:sub(1, a - 1), body:sub(a_end + 1, b - 1), body:sub(b_end + 1)
  for t = 1, {turns} do
    local prompt = string.rep("0", t % 61) .. string.format("%08d", t)
    turns[t] = table.concat({{head, prompt, middle, string.format("%03x", t % 4096), tail}})
  end
end
wrk.body = body
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-bench-answer"] = "{answer}"
local tokens = {{}}
for line in io.lines("{tokens}") do tokens[#tokens + 1] = line end
local api_key = "{api_key}"
local function use(token)
  wrk.headers["authorization"] = "Bearer " .. token
  wrk.headers["x-api-key"] = (api_key ~= "") and api_key or token
end
use(tokens[1])
local rotate = {rotate}
local requests = {{}}
function init(args)
  -- Whole requests, ready to send (here, once wrk has set the Host header); with rotating
  -- tokens, each turn has its own.
  for t = 1, #turns do
    if rotate then use(tokens[(t - 1) % #tokens + 1]) end
    requests[t] = wrk.format(nil, nil, nil, turns[t])
  end
  turns = {{}}
end
if rotate or #turns > 0 then
  local i, t = math.random(#tokens), 0
  request = function()
    t = t + 1
    if #requests > 0 then
      return requests[(t - 1) % #requests + 1]
    end
    i = i % #tokens + 1
    use(tokens[i])
    return wrk.format()
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


class Store:
    """A redis-server behind a Webdis, on free ports, for the `budget_store` configurations."""

    def __init__(self, procs, workdir):
        for tool in ("redis-server", "webdis"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} is missing: `make tools` installs it")
        self.redis_port, self.webdis_port = unique_port(), unique_port()
        work = Path(workdir) / "store"
        work.mkdir()
        procs.start(pinned(LOAD_CPU, ["redis-server", "--port", str(self.redis_port), "--save", "",
                                      "--appendonly", "no", "--dir", str(work)]), stdout=subprocess.DEVNULL)
        (work / "webdis.json").write_text(json.dumps({
            "redis_host": "127.0.0.1", "redis_port": self.redis_port, "http_host": "127.0.0.1",
            "http_port": self.webdis_port, "threads": 1, "daemonize": False, "database": 0,
            "logfile": str(work / "webdis.log")}))
        procs.start(pinned(LOAD_CPU, ["webdis", str(work / "webdis.json")]), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.webdis_port}/PING", timeout=1) as r:
                    if b"PONG" in r.read():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server or webdis did not start")
            time.sleep(0.1)

    def config(self):
        """The `budget_store` block, and the Envoy cluster it names."""
        return ({"kind": "webdis", "upstream": "webdis", "sync_ms": SYNC_MS,
                 "on_failure": {"divide_by_nodes": 3}}, static_cluster("webdis", self.webdis_port))


class Bench:
    def __init__(self, procs, workdir):
        self.procs, self.workdir = procs, Path(workdir)
        self.signer = Signer()
        print(f"minting {TOKENS} RS256 tokens ...", file=sys.stderr, flush=True)
        exp = int(time.time()) + 3 * 3600  # longer than any run
        self.same = self.signer.token(exp=exp)
        (self.workdir / "same.txt").write_text(self.same + "\n")
        self.rotating = [self.signer.token(sub=f"user-{i}", exp=exp) for i in range(TOKENS)]
        (self.workdir / "rotating.txt").write_text("\n".join(self.rotating) + "\n")
        self.bodies = bodies()
        for (size, answer), body in self.bodies.items():
            (self.workdir / f"body-{size}-{answer}.json").write_bytes(body)
        self.envoys = {}
        self.seed = None

    def start(self):
        upstream = EnvoyProcess(self.procs, self.workdir, "upstream",
                                [{"name": "envoy.filters.http.buffer", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                                    "max_request_bytes": BUFFER_LIMIT}}],
                                [], LOAD_CPU, routes=upstream_routes())
        upstream.wait_ready()
        self.upstream = upstream
        self.store = Store(self.procs, self.workdir)
        store_config, store_cluster = self.store.config()
        clusters = [static_cluster("anthropic", upstream.port), static_cluster(self.signer.upstream, self.signer.port)]
        filter_config = gateway_config(self.signer)
        filter_config["tiers"][1]["limits"] = [{"limit": 10**15, "window_seconds": 60}]
        cold_config = {**json.loads(json.dumps(filter_config)), "validation_cache_bytes": 0}
        rotating_config = json.loads(json.dumps(filter_config))
        rotating_config["oidc"]["token_cache_entries"] = ROTATING_CACHE_ENTRIES
        store_filter_config = {**json.loads(json.dumps(filter_config)), "budget_store": store_config}
        env = {"ANTHROPIC_API_KEY": UPSTREAM_KEY}
        gateway = {"env": env}
        filters = {
            "passthrough": ([], {}),
            "native": (native_filters(self.signer, lua=False), {}),
            "native_lua": (native_filters(self.signer, lua=True), {}),
            "empty_wasm": ([wasm_filter("", wasm_path=EMPTY_WASM)], {}),
            "wasm_rewrite": ([wasm_filter("rewrite", wasm_path=EMPTY_WASM)], {}),
            "wasm_calls": ([wasm_filter("calls", wasm_path=EMPTY_WASM)], {}),
            # Counted by bench/instructions.py only: the calls and one header read more.
            "wasm_calls_read": ([wasm_filter("calls+read", wasm_path=EMPTY_WASM)], {}),
            "filter_cached": ([wasm_filter(filter_config, env_keys=sorted(env))], gateway),
            "filter_cold": ([wasm_filter(cold_config, env_keys=sorted(env))], gateway),
            "filter_store": ([wasm_filter(store_filter_config, env_keys=sorted(env))], gateway),
            "filter_rotating": ([wasm_filter(rotating_config, env_keys=sorted(env))], gateway),
        }
        self.filters = filters
        self.clusters_of = {name: clusters + ([store_cluster] if name == "filter_store" else [])
                            for name in filters}
        self.start_envoys()

    def start_envoys(self):
        """A new Envoy for every configuration (the ones running, if any, are stopped first)."""
        for name, _ in CONFIGS:
            if name in self.envoys:
                self.procs.stop(self.envoys[name].process)
            http_filters, extra = self.filters[name]
            self.envoys[name] = EnvoyProcess(self.procs, self.workdir, name, http_filters, self.clusters_of[name],
                                             ENVOY_CPU, **extra)
        for name, _ in CONFIGS:
            for attempt in range(3):
                try:
                    self.envoys[name].wait_ready()
                    break
                except RuntimeError as e:
                    # A port picked free can be taken before Envoy binds it (an outgoing
                    # connection's, say): another pair of ports, at most twice.
                    if "Address already in use" not in str(e) or attempt == 2:
                        raise
                    http_filters, extra = self.filters[name]
                    self.envoys[name] = EnvoyProcess(self.procs, self.workdir, name, http_filters,
                                                     self.clusters_of[name], ENVOY_CPU, **extra)
        time.sleep(1.0)  # the filter fetches the JWKS on its first ticks

    def script(self, config, size, answer):
        path = self.workdir / f"{config}-{size}-{answer}.lua"
        if not path.exists():
            plain = config in PLAIN
            path.write_text(LUA_SCRIPT.format(
                body=self.workdir / f"body-{size}-{answer}.json", answer=answer,
                tokens=self.workdir / ("rotating.txt" if config == "filter_rotating" else "same.txt"),
                api_key=UPSTREAM_KEY if plain else "", rotate="true" if config == "filter_rotating" else "false",
                turns=TURNS if size == "130k" else 0))
        return path

    def headers(self, config, token):
        key = UPSTREAM_KEY if config in PLAIN else token
        return {"content-type": "application/json", "anthropic-version": "2023-06-01",
                "authorization": f"Bearer {token}", "x-api-key": key}

    def check(self, config, size, answer):
        """One request through `config`: it must reach the upstream with the provider key."""
        import http.client

        envoy = self.envoys[config]
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
        try:
            token = self.rotating[0] if config == "filter_rotating" else self.same
            conn.request("POST", PATH, body=self.bodies[(size, answer)],
                         headers={**self.headers(config, token), "x-bench-answer": answer})
            resp = conn.getresponse()
            data = resp.read()
            kind = resp.getheader("content-type", "")
            want = "text/event-stream" if answer == "sse" else "application/json"
            if resp.status != 200 or not kind.startswith(want) or b"msg_stub" not in data:
                raise RuntimeError(f"{config} {size} {answer}: {resp.status} {kind} {data[:300]!r}")
        finally:
            conn.close()

    def wrk(self, config, size, answer, duration):
        envoy = self.envoys[config]
        script = self.script(config, size, answer)
        before = envoy.cpu_split()
        proc = self.procs.start(
            pinned(LOAD_CPU, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--timeout", "30s",
                              "-s", str(script), f"http://127.0.0.1:{envoy.port}{PATH}"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=duration + 60)
        finally:
            self.procs.stop(proc)
        user, kernel = (after - start for after, start in zip(envoy.cpu_split(), before))
        used = user + kernel
        match = re.search(r"BENCH_RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out or "")
        if not match:
            raise RuntimeError(f"wrk gave no result for {config}:\n{out}")
        requests, micros, sock_errors, status_errors, p50, p99 = map(int, match.groups())
        if requests == 0 or sock_errors or status_errors:
            raise RuntimeError(f"{config} {size} {answer}: {requests} requests, {sock_errors} socket errors, "
                               f"{status_errors} non-2xx answers")
        return {"cpu_us": used / requests * 1e6, "user_us": user / requests * 1e6, "rps": requests / (micros / 1e6), "p50_ms": p50 / 1e3,
                "p99_ms": p99 / 1e3, "requests": requests}

    def sync_traffic(self):
        """What one node sends to the budget store while SYNC_PEOPLE people in SYNC_TIERS tiers
        use it: Webdis requests per second and bytes per request (Envoy's cluster statistics)."""
        store_config, store_cluster = self.store.config()
        config = gateway_config(self.signer)
        models = [m["alias"] for m in config["models"]]
        config["tiers"] = [{"name": f"tier-{t}", "groups": [f"bench-tier-{t}"], "models": models,
                            "limits": [{"limit": 10**15, "window_seconds": 3600, "per": "person"},
                                       {"limit": 10**15, "window_seconds": 86400, "per": "tier"}]}
                           for t in range(SYNC_TIERS)]
        config["oidc"]["token_cache_entries"] = 2 * SYNC_PEOPLE
        config["budget_store"] = store_config
        env = {"ANTHROPIC_API_KEY": UPSTREAM_KEY}
        clusters = [static_cluster("anthropic", self.upstream.port),
                    static_cluster(self.signer.upstream, self.signer.port), store_cluster]
        envoy = EnvoyProcess(self.procs, self.workdir, "sync", [wasm_filter(config, env_keys=sorted(env))],
                             clusters, ENVOY_CPU, env=env)
        exp = int(time.time()) + 3 * 3600
        tokens = [self.signer.token(sub=f"person-{i}", email=None, groups=[f"bench-tier-{i % SYNC_TIERS}"], exp=exp)
                  for i in range(SYNC_PEOPLE)]
        (self.workdir / "sync-tokens.txt").write_text("\n".join(tokens) + "\n")
        script = self.workdir / "sync.lua"
        script.write_text(LUA_SCRIPT.format(body=self.workdir / "body-1k-json.json", answer="json",
                                            tokens=self.workdir / "sync-tokens.txt", api_key="", rotate="true", turns=0))
        envoy.wait_ready()
        time.sleep(1.0)

        def load(seconds):
            proc = self.procs.start(
                pinned(LOAD_CPU, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "30s", "-s",
                                  str(script), f"http://127.0.0.1:{envoy.port}{PATH}"]),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out, _ = proc.communicate(timeout=seconds + 60)
            self.procs.stop(proc)
            match = re.search(r"BENCH_RESULT (\d+) (\d+) (\d+) (\d+)", out or "")
            if not match or int(match.group(1)) == 0 or int(match.group(3)) or int(match.group(4)):
                raise RuntimeError(f"sync traffic load failed:\n{out}")
            return int(match.group(1))

        def stats():
            with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats?format=json", timeout=5) as r:
                return {s["name"]: s.get("value", 0) for s in json.load(r)["stats"] if "value" in s}

        load(max(2, SYNC_SECONDS // 2))  # every person admitted once: all are synced from now on
        before, started = stats(), time.monotonic()
        requests = load(SYNC_SECONDS)
        after, seconds = stats(), time.monotonic() - started
        self.procs.stop(envoy.process)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        syncs = delta.get("cluster.webdis.upstream_rq_total", 0)
        ok = sum(v for k, v in delta.items() if k.startswith("wasmcustom.claude_sso_gateway_budget_store_syncs_total")
                 and k.endswith(".ok"))
        return {"people": SYNC_PEOPLE, "tiers": SYNC_TIERS, "seconds": seconds, "requests": requests,
                "syncs": syncs, "syncs_per_s": syncs / seconds, "ok": ok,
                "tx_per_sync": delta.get("cluster.webdis.upstream_cx_tx_bytes_total", 0) / max(1, syncs),
                "rx_per_sync": delta.get("cluster.webdis.upstream_cx_rx_bytes_total", 0) / max(1, syncs)}

    def memory_per_worker(self, rss_one):
        """RSS of `passthrough`, `empty_wasm` and `filter_cached` with 2 workers (each worker holds a
        VM beside the main thread's), after load on both: the growth from 1 to 2 workers is what
        one more worker costs."""
        out = {}
        for config in ("passthrough", "empty_wasm", "filter_cached"):
            if config not in self.envoys:
                continue
            one = self.envoys[config]
            two = EnvoyProcess(self.procs, self.workdir, f"{config}-2w", self.filters[config][0], self.clusters_of[config],
                               ENVOY_CPU, concurrency=2, **self.filters[config][1])
            two.wait_ready()
            time.sleep(1.0)
            self.envoys[f"{config}-2w"] = two
            # Many connections, so that both workers take some (one listening socket per worker).
            for size, answer in KINDS:
                proc = self.procs.start(
                    pinned(LOAD_CPU, ["wrk", "-t1", "-c16", "-d1s", "-s", str(self.script(config, size, answer)),
                                      f"http://127.0.0.1:{two.port}{PATH}"]), stdout=subprocess.DEVNULL)
                proc.wait(60)
                self.procs.stop(proc)
            with urllib.request.urlopen(f"http://127.0.0.1:{two.admin_port}/stats?filter=worker_", timeout=5) as r:
                per_worker = re.findall(r"worker_(\d+)\.downstream_cx_total: (\d+)", r.read().decode())
            if len(per_worker) != 2 or any(int(n) == 0 for _, n in per_worker):
                raise RuntimeError(f"{config}: not every worker took connections: {per_worker}")
            out[config] = (rss_one[config], two.rss_mib())
            self.procs.stop(two.process)
            del self.envoys[f"{config}-2w"]
        return out

    def ttfb(self, config, size, n):
        """Seconds from the request's last byte sent to the answer's first body byte, `n` times."""
        token_at = iter(self.rotating * (n // len(self.rotating) + 1))
        body = self.bodies[(size, "sse")]
        times = []
        with socket.create_connection(("127.0.0.1", self.envoys[config].port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = sock.makefile("rb")
            for _ in range(n + 3):
                token = next(token_at) if config == "filter_rotating" else self.same
                head = {**self.headers(config, token), "x-bench-answer": "sse", "host": "bench",
                        "content-length": str(len(body))}
                request = (f"POST {PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
                           + "\r\n").encode() + body
                sock.sendall(request)
                sent = time.perf_counter()
                status = reader.readline()
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if b" 200 " not in status:
                    raise RuntimeError(f"TTFB probe {config}: {status!r}")
                if headers.get("transfer-encoding") == "chunked":
                    first = True
                    while True:
                        length = int(reader.readline().split(b";")[0], 16)
                        if first:
                            times.append(time.perf_counter() - sent)
                            first = False
                        reader.read(length + 2)
                        if length == 0:
                            break
                else:
                    reader.read(1)
                    times.append(time.perf_counter() - sent)
                    reader.read(int(headers["content-length"]) - 1)
        return times[3:]  # the first requests warm the connection up


def median_spread(values):
    return statistics.median(values), (max(values) - min(values)) / 2


def fmt_ratio(value, base):
    return f"{value / base:.2f}×" if base else "–"


def targets(results, ttfb_p99, rss, memory, sync, verify):
    """The issues' targets, each with this run's numbers and whether it is met."""
    def cpu(config, size, answer="json"):
        rounds = results.get((config, size, answer))
        return statistics.median(r["cpu_us"] for r in rounds) if rounds else None

    def both(config, size):
        """CPU per request with a JSON and with a streamed answer (Claude Code streams)."""
        pair = (cpu(config, size, "json"), cpu(config, size, "sse"))
        return pair if None not in pair else None

    rows = []

    def row(target, measured, met):
        rows.append(f"| {target} | {measured} | {'met' if met else '**not met**'} |")

    def paired(config, base, size, answer):
        """Median and range over rounds of `config` − `base` measured in the same round (a round runs
        every configuration of one body and answer back to back, so the machine's drift between
        rounds cancels out), or None."""
        a, b = results.get((config, size, answer)), results.get((base, size, answer))
        if not a or not b or len(a) != len(b):
            return None
        diffs = [x["cpu_us"] - y["cpu_us"] for x, y in zip(a, b)]
        return statistics.median(diffs), min(diffs), max(diffs)

    def paired_text(d, bound):
        return f"paired {d[0]:+.0f} µs (rounds {d[1]:+.0f} to {d[2]:+.0f}) vs ≤ {bound:+.0f}"

    # The #13 targets hold for both kinds of answer, each against the same kind. Each is judged
    # twice: by the medians of the cells (the table above) and by the median of the differences
    # within a round; it is met only when both say so.
    if both("native", "1k") and both("filter_cached", "1k") and both("passthrough", "1k"):
        added = [(n - b, o - b) for n, o, b in zip(both("native", "1k"), both("filter_cached", "1k"),
                                                    both("passthrough", "1k"))]
        pairs = [paired("filter_cached", "native", "1k", answer) for answer in ("json", "sse")]
        row("#13: 1 KiB, cached token: added CPU ≤ native `jwt_authn` + rate limit + header's added CPU "
            "(JSON answer; streamed; paired: this filter − native within a round, ≤ 0)",
            "; ".join(f"+{o:.1f} µs vs native +{n:.1f} µs" + (f", {paired_text(d, 0)}" if d else "")
                      for (n, o), d in zip(added, pairs)),
            all(o <= n for n, o in added) and all(d is None or d[0] <= 0 for d in pairs))
    for config, label in (("filter_cached", "#13: 130 KB, cached token: CPU ≤ the Wasm body-rewrite floor + 30 µs "
                                             "(a session's next turn: `tools` and the system prompt repeat, the "
                                             "prompt is new; JSON answer; streamed; paired: this filter − the floor "
                                             "within a round, ≤ 30)"),
                          ("filter_cold", "#13: the same, every body validated whole (`validation_cache_bytes: 0`)")):
        if both("wasm_rewrite", "130k") and both(config, "130k"):
            pairs = list(zip(both("wasm_rewrite", "130k"), both(config, "130k")))
            diffs = [paired(config, "wasm_rewrite", "130k", answer) for answer in ("json", "sse")]
            row(label, "; ".join(f"{o:.0f} µs vs floor {f:.0f} + 30 µs" + (f", {paired_text(d, 30)}" if d else "")
                                 for (f, o), d in zip(pairs, diffs)),
                all(o <= f + 30 for f, o in pairs) and all(d is None or d[0] <= 30 for d in diffs))
    if cpu("filter_store", "1k") and cpu("filter_cached", "1k"):
        with_store = results[("filter_store", "1k", "json")]
        without = results[("filter_cached", "1k", "json")]
        spread = max(r["cpu_us"] for r in with_store + without) - min(r["cpu_us"] for r in with_store + without)
        diff = cpu("filter_store", "1k") - cpu("filter_cached", "1k")
        row("#12: 1 KiB, cached token: the request path costs no more with the budget store (within noise: the "
            "spread of both cells' rounds)", f"{diff:+.0f} µs (spread {spread:.0f} µs)", diff <= max(spread, 3))
    if sync:
        row(f"#12: budget-store traffic with {sync['people']:,} people in {sync['tiers']} tiers: one request "
            f"per interval ({SYNC_MS} ms)", f"{sync['syncs_per_s']:.2f} requests/s ({1000 / SYNC_MS:.0f} expected)",
            abs(sync["syncs_per_s"] - 1000 / SYNC_MS) <= 0.5)
    if ("filter_cached", "130k") in ttfb_p99:
        gap = ttfb_p99[("filter_cached", "130k")] - ttfb_p99[("passthrough", "130k")]
        row("#13: streamed answers: time to first byte within 1 ms of passthrough at p99 (130 KB)",
            f"{gap:+.2f} ms", gap <= 1.0)
    if "filter_cached" in memory and "passthrough" in memory:
        (f1, f2), (p1, p2) = memory["filter_cached"], memory["passthrough"]
        per_worker = (f2 - f1) - (p2 - p1)
        row("#13: memory: Envoy with the filter ≤ +30 MiB per worker over Envoy without",
            f"{per_worker:+.1f} MiB per worker (+{f1 - p1:.1f} MiB with 1 worker: its VM and the main thread's)",
            per_worker <= 30)
    if verify:
        best = {alg: us for alg, key, us, _ in verify["verify"] if key in ("rsa2048", "#0")}
        for alg in ("RS256", "ES256", "EdDSA"):
            if alg in best:
                row(f"#13: a new token every request: {alg} verification ≤ 150 µs in Wasm", f"{best[alg]:.0f} µs",
                    best[alg] <= 150)
    size = WASM.stat().st_size
    row("#13: `.wasm` ≤ 1.5 MB", f"{size / 1e6:.2f} MB", size <= 1_500_000)
    return rows


def split_over_floor(results):
    """What (6) adds to the floor (5), split by (5a): Envoy's side of the host calls (5a - 5) and the
    filter's own code with what it does to Envoy's work around the calls (6 - 5a); and (6) - (5)
    split into user space (Envoy, V8, the filter) and the kernel (sockets, wake-ups), which the
    filter cannot reach: it makes no system calls, and (6) makes as many per request as (5)."""
    configs = ("wasm_rewrite", "wasm_calls", "filter_cached")
    if any((c, size, answer) not in results for c in configs for size, answer in KINDS):
        return []
    lines = ["", "**Where (6)'s CPU over the floor goes** (medians of the rows above, µs per request)", "",
             "| body, answer | (5) floor | host calls: (5a) − (5) | the filter's own code: (6) − (5a) | (6) − (5) "
             "| of which user space | of which kernel |",
             "|---|---|---|---|---|---|---|"]
    for size, answer in KINDS:
        floor, calls, cached = (statistics.median(r["cpu_us"] for r in results[(c, size, answer)]) for c in configs)
        user_floor, user_cached = (statistics.median(r["user_us"] for r in results[(c, size, answer)])
                                   for c in ("wasm_rewrite", "filter_cached"))
        user = user_cached - user_floor
        lines.append(f"| {BODY_NAMES[size]}, {'SSE' if answer == 'sse' else 'JSON'} | {floor:.0f} | "
                     f"{calls - floor:+.0f} | {cached - calls:+.0f} | {cached - floor:+.0f} | {user:+.0f} | "
                     f"{cached - floor - user:+.0f} |")
    return lines


def report(bench, results, ttfb, rss, memory, sync, hostcalls, verify, started, instructions=None):
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown")
    envoy_version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
    envoy_version = (re.search(r"version: [0-9a-f]+/([^/]+)/", envoy_version) or re.search(r"(\d+\.\d+\.\d+)", envoy_version))
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1:2]
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC on `nproc` = {os.cpu_count()}, {cpu_model}; Envoy "
        f"{envoy_version.group(1) if envoy_version else '?'} (`--concurrency 1`, `taskset -c {ENVOY_CPU}`), "
        f"wrk {''.join(wrk_version)} (`-t1 -c{CONNECTIONS}`, `taskset -c {LOAD_CPU}`, closed loop) with the "
        f"upstream on the same core as wrk; {ROUNDS} round(s) of {DURATION} s per cell, each round on new Envoy "
        f"processes (a {WARMUP} s warm-up before their first cell of each body size) with the configurations in an "
        f"order of its own (seed {bench.seed}), median ± half the range over rounds." + (" **BENCH_QUICK smoke run: not for comparison.**" if QUICK else ""),
        "",
        "Ratios are to (1) passthrough / to (2) native. CPU is Envoy's (all threads) per completed request.",
    ]
    for size, answer in KINDS:
        lines += ["", f"**{BODY_NAMES[size]}, {'streamed (SSE)' if answer == 'sse' else 'JSON'} answer**", "",
                  "| configuration | Envoy CPU µs/req | ratio | req/s | ratio | p50 ms | p99 ms | p99 ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        cell = {c: results[(c, size, answer)] for c, _ in CONFIGS}
        med = {c: {k: statistics.median(r[k] for r in rounds) for k in ("cpu_us", "rps", "p50_ms", "p99_ms")}
               for c, rounds in cell.items()}
        base = med["passthrough"]
        native = med.get("native", {"cpu_us": 0, "rps": 0, "p99_ms": 0})
        for config, label in CONFIGS:
            m = med[config]
            _, cpu_spread = median_spread([r["cpu_us"] for r in cell[config]])
            _, rps_spread = median_spread([r["rps"] for r in cell[config]])
            lines.append(
                f"| {label} | {m['cpu_us']:.0f} ± {cpu_spread:.0f} | {fmt_ratio(m['cpu_us'], base['cpu_us'])} / "
                f"{fmt_ratio(m['cpu_us'], native['cpu_us'])} | {m['rps']:.0f} ± {rps_spread:.0f} | "
                f"{fmt_ratio(m['rps'], base['rps'])} / {fmt_ratio(m['rps'], native['rps'])} | {m['p50_ms']:.2f} | "
                f"{m['p99_ms']:.2f} | {fmt_ratio(m['p99_ms'], base['p99_ms'])} / "
                f"{fmt_ratio(m['p99_ms'], native['p99_ms'])} |")
    lines += split_over_floor(results)
    lines += ["", f"**Time to first byte of a streamed answer** ({TTFB_REQUESTS} sequential requests on one "
                  f"connection in each round, {TTFB_REQUESTS * ROUNDS} in all, from the request's last byte sent to "
                  "the answer's first body byte)", "",
              "| configuration | 1 KiB p50 ms | 1 KiB p99 ms | 130 KB p50 ms | 130 KB p99 ms | 130 KB p99 ratio |",
              "|---|---|---|---|---|---|"]
    p99 = {key: sorted(v)[min(len(v) - 1, int(len(v) * 0.99))] * 1e3 for key, v in ttfb.items()}
    p50 = {key: statistics.median(v) * 1e3 for key, v in ttfb.items()}
    for config, label in CONFIGS:
        lines.append(f"| {label} | {p50[(config, '1k')]:.2f} | {p99[(config, '1k')]:.2f} | "
                     f"{p50[(config, '130k')]:.2f} | {p99[(config, '130k')]:.2f} | "
                     f"{fmt_ratio(p99[(config, '130k')], p99[('passthrough', '130k')])} / "
                     f"{fmt_ratio(p99[(config, '130k')], p99.get(('native', '130k'), 0))} |")
    lines += ["", "**Memory and size** (Envoy RSS after the load, one worker: the main thread and the worker "
                  "each hold a Wasm VM)", "", "| configuration | Envoy RSS MiB | ratio | `.wasm` bytes |", "|---|---|---|---|"]
    sizes = {"empty_wasm": EMPTY_WASM.stat().st_size, "wasm_rewrite": EMPTY_WASM.stat().st_size,
             "wasm_calls": EMPTY_WASM.stat().st_size,
             "filter_cached": WASM.stat().st_size, "filter_cold": WASM.stat().st_size,
             "filter_store": WASM.stat().st_size,
             "filter_rotating": WASM.stat().st_size}
    for config, label in CONFIGS:
        lines.append(f"| {label} | {rss[config]:.1f} | {fmt_ratio(rss[config], rss['passthrough'])} / "
                     f"{fmt_ratio(rss[config], rss.get('native', 0))} | {sizes.get(config, '')} |")
    if memory:
        base = memory.get("passthrough")
        lines += ["", "**Memory per worker** (Envoy RSS with 1 and with 2 workers, after load on every worker; one more "
                      "worker adds one VM)", "",
                  "| configuration | RSS, 1 worker MiB | RSS, 2 workers MiB | one more worker MiB | over passthrough's MiB |",
                  "|---|---|---|---|---|"]
        for config, label in CONFIGS:
            if config in memory:
                one, two = memory[config]
                extra = (two - one) - (base[1] - base[0]) if base else float("nan")
                lines.append(f"| {label} | {one:.1f} | {two:.1f} | {two - one:+.1f} | {extra:+.1f} |")
    if sync:
        lines += ["", f"**Budget store traffic** (one node, {sync['people']:,} people in {sync['tiers']} tiers sending "
                      f"requests for {sync['seconds']:.0f} s, each person's counters and the tiers' synced; from Envoy's "
                      "statistics for the Webdis cluster)", "",
                  "| requests served | requests/s to Webdis | syncs answered ok | bytes sent per sync | bytes received per sync |",
                  "|---|---|---|---|---|",
                  f"| {sync['requests']:,} | {sync['syncs_per_s']:.2f} | {sync['ok']:.0f} of {sync['syncs']:.0f} | "
                  f"{sync['tx_per_sync']:,.0f} | {sync['rx_per_sync']:,.0f} |"]
    if instructions:
        import instructions as counted

        lines += counted.report_lines(instructions)
    if hostcalls:
        lines += ["", "**Host calls per request** (bench/hostcalls.py: the `.wasm` under a minimal Proxy-Wasm host in "
                      "Node's V8, one request through every callback; µs in the VM are the filter's own time, fastest "
                      "batch; the stand-in host's time inside its calls is timed apart and shown beside it, and is "
                      "no measure of what the calls cost in Envoy)", "",
                  "| body, answer | request headers | request body | response headers | response body | log | "
                  "host calls | µs in the VM | µs in the stand-in host |", "|---|---|---|---|---|---|---|---|---|"]
        for kind, r in hostcalls.items():
            calls = {cb: sum(n.values()) for cb, n in r["host_calls"].items()}
            def cell(cb):
                names = sorted(r["host_calls"].get(cb, {}).items())
                listed = ", ".join(f"{name.removeprefix('proxy_')}×{n}" for name, n in names)
                return f"{calls.get(cb, 0)}: {listed}" if listed else "0"

            cells = " | ".join(cell(cb) for cb in
                               ("request_headers", "request_body", "response_headers", "response_body", "log_done"))
            lines.append(f"| {kind} | {cells} | {sum(calls.values())} | {r['us_fastest']['total']} | "
                         f"{r['us_stand_in_host_fastest']['total']} |")
    if verify:
        lines += ["", "**Signature verification in V8** (bench/verify-wasm in Node's V8, the engine Envoy embeds: "
                      "µs per verification, fastest batch and median; every known-answer vector checked first)", "",
                  "| algorithm, key | µs | median µs |", "|---|---|---|"]
        lines += [f"| {alg} {key} | {best:.1f} | {median:.1f} |" for alg, key, best, median in verify["verify"]]
        lines += [f"| refused before any signature work: {what} | {us:.2f} | |" for what, us in verify["refused"]]
        if verify["parse"]:
            n, us = verify["parse"]
            lines.append(f"| parsing a {n}-key JWKS (EC keys build their verification tables) | {us:.0f} | |")
    if verify and verify["scan"]:
        names = {"captured": "the Claude Code body as captured (1-space indent)",
                 "compact": "the same document, compact",
                 "captured repeated": "the captured body again, its elements remembered (`scan_with` and the "
                                      "validation cache, as for Claude Code's next turn)",
                 "compact repeated": "the compact document again, its elements remembered"}
        lines += ["", "**Request body validation in V8** (bench/verify-wasm: `scan::scan`, the one-pass JSON check "
                  "every request body gets, in Node's V8; fastest batch and median)", "",
                  "| body | bytes | µs | median µs | GB/s |", "|---|---|---|---|---|"]
        lines += [f"| {names.get(name, name)} | {n} | {best:.1f} | {median:.1f} | {n / best / 1e3:.1f} |"
                  for name, n, best, median in verify["scan"]]
    lines += ["", "**Targets** (issues 12 and 13, with this run's numbers)", "", "| target | measured | |", "|---|---|---|",
              *targets(results, p99, rss, memory, sync, verify)]
    return "\n".join(lines)


def host_calls(bench):
    """bench/hostcalls.py's counts and times for the 1 KiB and 130 KB bodies, JSON and SSE, and a long stream."""
    import hostcalls

    config = gateway_config(bench.signer)
    config["tiers"][1]["limits"] = [{"limit": 10**15, "window_seconds": 60}]
    out = {f"{BODY_NAMES[size]}, {answer.upper()}": hostcalls.run(bench.workdir, bench.signer, config, bench.same,
                                                                    size, answer)
           for size, answer in KINDS}
    # Real answers are longer than the stub's: what metering a 70 KB stream costs.
    out[f"{BODY_NAMES['1k']}, SSE of 70 KB in 16 KiB chunks"] = hostcalls.run(
        bench.workdir, bench.signer, config, bench.same, "1k", "sse-long")
    return out


def instruction_counts(bench):
    """bench/instructions.py's counts (Envoy under callgrind), when Valgrind is there."""
    import instructions

    if not instructions.valgrind():
        print("valgrind is missing: no instruction counts", file=sys.stderr)
        return None
    return instructions.measure(bench)


VERIFY = ROOT / "bench" / "verify-wasm"


def verify_times():
    """bench/verify-wasm in Node's V8: µs per verification by algorithm, and per cheap refusal."""
    wasm = VERIFY / "target" / "wasm32-wasip1" / "release" / "verify-wasm.wasm"
    if not wasm.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="csg-scan-") as tmp:
        # The captured body as sent, and the same document compact (as a client may send it).
        captured = fixture("request_main_stream.json")
        compact = Path(tmp) / "compact.json"
        compact.write_text(json.dumps(json.loads(captured), separators=(",", ":"), ensure_ascii=False))
        captured_path = Path(tmp) / "captured.json"
        captured_path.write_bytes(captured)
        out = subprocess.run(["node", "--no-warnings", str(VERIFY / "run.mjs"), "50" if QUICK else "200",
                              str(captured_path), str(compact)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or "0 wrong" not in out.stdout:
        raise RuntimeError(f"bench/verify-wasm failed:\n{out.stdout}\n{out.stderr}")
    verifies = re.findall(r"^\s*(\S+) ([^:]+):\s+([\d.]+) µs/verify \(median ([\d.]+)\)", out.stdout, re.M)
    refusals = re.findall(r"^refused, ([^:]+): ([\d.]+) µs", out.stdout, re.M)
    parse = re.search(r"KeySet::parse of the (\d+)-key JWKS: ([\d.]+) µs", out.stdout)
    scans = re.findall(r"^scan (\S+?)\.json( repeated)?: (\d+) bytes, ([\d.]+) µs \(median ([\d.]+)\)", out.stdout, re.M)
    return {"scan": [(name + again, int(n), float(best), float(median)) for name, again, n, best, median in scans],
            "verify": [(alg, key.strip(), float(best), float(median)) for alg, key, best, median in verifies],
            "refused": [(what, float(us)) for what, us in refusals],
            "parse": (int(parse.group(1)), float(parse.group(2))) if parse else None}


def write_readme(table):
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"README.md has no {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main():
    for need in (WASM, EMPTY_WASM):
        if not need.exists():
            sys.exit(f"{need} is missing: run `make bench` (it builds both filters)")
    if not TWO_CORES:
        print("one core only: Envoy and the load generator share it", file=sys.stderr)
    # The harness itself (signer, probes) stays off Envoy's core.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    started = datetime.datetime.now(datetime.timezone.utc)
    # First: a harness that fails (its known answers, a panic) fails the run in a minute, not
    # after the rounds.
    verify = verify_times()
    procs = Processes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = None
    try:
        with tempfile.TemporaryDirectory(prefix="csg-bench-") as workdir:
            bench = Bench(procs, workdir)
            bench.start()
            for config, _ in CONFIGS:
                for size, answer in KINDS:
                    bench.check(config, size, answer)
            results = {(c, s, a): [] for c, _ in CONFIGS for s, a in KINDS}
            # Each round runs new Envoy processes, in an order of its own. With one process per
            # configuration for the whole run and a fixed order, two Envoys loading the same .wasm
            # with the same configuration differed by 12 to 29 µs per request (medians of five
            # rounds, 2026-12-01): a process (or its place in the round) kept its bias in every
            # round, and the paired differences with it. Over rounds, it becomes spread instead.
            bench.seed = int(os.environ.get("BENCH_SEED", str(time.time_ns() % 1_000_000)))
            order = random.Random(bench.seed)
            print(f"order seed {bench.seed} (BENCH_SEED)", file=sys.stderr, flush=True)
            ttfb = {(c, s): [] for c, _ in CONFIGS for s in ("1k", "130k")}
            for round_no in range(ROUNDS):
                if round_no > 0:
                    bench.start_envoys()
                    for config, _ in CONFIGS:
                        bench.check(config, "1k", "json")
                for kind, (size, answer) in enumerate(KINDS):
                    for config in order.sample([c for c, _ in CONFIGS], len(CONFIGS)):
                        # A warm-up where a process meets a body size first (its pools, its
                        # validation cache); the other cells run on processes that have just
                        # taken thousands of such requests (warming up before every cell made
                        # `make bench` run over its 15 minutes).
                        if WARMUP > 0 and (kind == 0 or KINDS[kind - 1][0] != size):
                            bench.wrk(config, size, answer, WARMUP)
                        r = bench.wrk(config, size, answer, DURATION)
                        results[(config, size, answer)].append(r)
                        print(f"round {round_no + 1}/{ROUNDS} {size:>4} {answer:<4} {config:<16} "
                              f"{r['cpu_us']:7.0f} µs/req {r['rps']:7.0f} req/s p50 {r['p50_ms']:6.2f} ms "
                              f"p99 {r['p99_ms']:6.2f} ms", file=sys.stderr, flush=True)
                # The time to the first byte, on this round's processes once they took the load: a
                # probe of one moment on one set of processes gave a p99 one stall of the machine
                # could set.
                for config in order.sample([c for c, _ in CONFIGS], len(CONFIGS)):
                    for size in ("1k", "130k"):
                        ttfb[(config, size)] += bench.ttfb(config, size, TTFB_REQUESTS)
            rss = {c: bench.envoys[c].rss_mib() for c, _ in CONFIGS}
            memory = bench.memory_per_worker(rss)
            sync = bench.sync_traffic() if not ONLY or "filter_store" in ONLY else None
            hostcalls = host_calls(bench)
            instructions = instruction_counts(bench)
            table = report(bench, results, ttfb, rss, memory, sync, hostcalls, verify, started, instructions)
    finally:
        procs.stop_all()
        if bench is not None:
            bench.signer.stop()
    print(table)
    if WRITE_README:
        write_readme(table)
        print(f"\nwritten to README.md between {BEGIN} and {END}", file=sys.stderr)
    print(f"\ntotal {time.monotonic() - START:.0f} s", file=sys.stderr)


START = time.monotonic()

if __name__ == "__main__":
    main()
