#!/usr/bin/env python3
"""Instructions Envoy executes per request, counted by Valgrind's callgrind: a measure no other
work on the machine moves.

`make bench`'s CPU times carry the machine's noise (±10 to 20 µs per request between rounds on
the 2-core VM), so a change of a few µs cannot be seen in them. Here each configuration's Envoy
runs under `valgrind --tool=callgrind`, with instrumentation off until it has started and taken
its first requests (V8 has compiled the filter by then); it is then switched on, counters are
zeroed, `N` requests are sent one after another on one keep-alive connection in three batches,
and the counters are dumped after each. Every thread of the Envoy process counts (the worker, and
the main thread's timers for the time the requests took), so a batch that a timer of Envoy's (the
stats flush every 5 s) fell into counts more: the least of the three batches is the count (runs
then differ by about 2k instructions per request; a mean over all requests was once 13k off).

Instructions are not time: a data cache miss costs no more instructions than a hit, so the
cold-cache cost of a filter that runs once per request between Envoy's own work is not in them.
What they show exactly is how much work each configuration adds, and so what one change of the
filter saves.

    python3 bench/instructions.py        # every configuration below, the four body/answer kinds
    INSTRUCTIONS_REQUESTS=200 python3 bench/instructions.py   # more requests counted (default 60)

`make bench` runs it (bench.py's `instruction_counts`) and writes its table into README.md.
"""
import glob
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "bench")]

# The configurations counted, as bench.py names them. `wasm_calls_read` (the floor's host calls
# and one header read more: what one host call that hands the filter data costs) and
# `filter_rotating` (an RS256 verification every request, whatever the body) with the 1 KiB JSON
# request only.
CONFIGS = ["passthrough", "native", "wasm_rewrite", "wasm_calls", "filter_cached", "filter_rotating", "wasm_calls_read"]
ONE_KIND_ONLY = {"wasm_calls_read", "filter_rotating"}
REQUESTS = int(os.environ.get("INSTRUCTIONS_REQUESTS", "60"))
# Requests before counting: V8 compiles the filter and Envoy fills its pools (not instrumented),
# then Valgrind translates the code they run (instrumented, not counted).
WARMUP, TRANSLATE = 20, 10
# Batches the counted requests are sent in; the least batch's count per request is taken.
BATCHES = 3


def valgrind() -> str | None:
    return shutil.which("valgrind")


def turn_bodies(body: bytes, turns: int) -> list[bytes]:
    """The load script's turns of a body with turn marks (bench.py's LUA_SCRIPT builds the same):
    each its own prompt and billing suffix, the rest byte for byte the same. A body without marks
    is its only turn."""
    a, b = body.find(b"@@@@@@@@"), body.find(b"~~~")
    if a < 0 or b < a:
        return [body]
    head, middle, tail = body[:a], body[a + 8:b], body[b + 3:]
    return [head + b"0" * (t % 61) + b"%08d" % t + middle + b"%03x" % (t % 4096) + tail for t in range(1, turns + 1)]


class Counted:
    """One configuration's Envoy under callgrind, instrumentation off until `count` switches it on."""

    def __init__(self, bench, config, outdir: Path):
        import bench as b

        self.config, self.outdir = config, outdir
        out = outdir / f"{config}.%p.out"
        wrap = [valgrind() or "valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
                f"--callgrind-out-file={out}"]
        http_filters, extra = bench.filters[config]
        self.envoy = b.EnvoyProcess(bench.procs, bench.workdir, f"counted-{config}", http_filters,
                                    bench.clusters_of[config], b.ENVOY_CPU, wrap=wrap, **extra)

    def control(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.envoy.process.pid)], check=True, capture_output=True,
                       timeout=120)

    def dump(self) -> int:
        """Dumps the counters and returns their total (every thread's) since they were zeroed."""
        before = set(self.files())
        self.control("-d")
        deadline = time.monotonic() + 60
        while not (new := set(self.files()) - before):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.config}: callgrind wrote no dump in {self.outdir}: {sorted(before)}")
            time.sleep(0.1)
        (path,) = new
        for _ in range(100):
            for line in Path(path).read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
            time.sleep(0.1)  # still being written
        raise RuntimeError(f"{self.config}: no totals in {path}")

    def files(self) -> list[str]:
        return glob.glob(str(self.outdir / f"{self.config}.{self.envoy.process.pid}.out*"))


def send(conn, bench, config, body, answer, token):
    conn.request("POST", "/v1/messages?beta=true", body=body,
                 headers={**bench.headers(config, token), "x-bench-answer": answer})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200 or b"msg_stub" not in data:
        raise RuntimeError(f"{config}: {resp.status} {data[:300]!r}")


def measure(bench, configs=None, kinds=None, requests=REQUESTS) -> dict:
    """Instructions per request by (configuration, size, answer), for `configs` (default: all of
    CONFIGS) as `bench` (a `bench.Bench` already started) configures them, and `kinds` (default:
    every body and answer)."""
    configs = [c for c in (configs or CONFIGS) if c in bench.filters]
    out = {}
    outdir = Path(tempfile.mkdtemp(prefix="counted-", dir=bench.workdir))
    # All start at once (under Valgrind, V8's compile of the filter takes seconds); each is
    # counted alone, then stopped.
    started = {config: Counted(bench, config, outdir) for config in configs}
    try:
        for config, counted in started.items():
            counted.envoy.wait_ready(timeout=600)
        time.sleep(1.0)  # the filter fetches the JWKS on its first ticks
        for config, counted in started.items():
            out.update(count(bench, config, counted, kinds, requests))
            bench.procs.stop(counted.envoy.process)
    finally:
        for counted in started.values():
            bench.procs.stop(counted.envoy.process)
    return out


def count(bench, config, counted, kinds, requests) -> dict:
    """One configuration's instructions per request, for each kind."""
    import bench as b

    out = {}
    conn = http.client.HTTPConnection("127.0.0.1", counted.envoy.port, timeout=120)
    tokens = iter(bench.rotating * 100) if config == "filter_rotating" else None
    for size, answer in (kinds or (b.KINDS[:1] if config in ONE_KIND_ONLY else b.KINDS)):
        bodies = turn_bodies(bench.bodies[(size, answer)], WARMUP + TRANSLATE + requests)
        at = iter(bodies * ((WARMUP + TRANSLATE + requests) // len(bodies) + 1))

        def one():
            send(conn, bench, config, next(at), answer, next(tokens) if tokens else bench.same)

        for _ in range(WARMUP):
            one()
        counted.control("-i", "on")
        for _ in range(TRANSLATE):
            one()
        per_batch = -(-requests // BATCHES)
        batches = []
        for _ in range(BATCHES):
            counted.control("-z")
            for _ in range(per_batch):
                one()
            batches.append(counted.dump() / per_batch)
        counted.control("-i", "off")
        out[(config, size, answer)] = min(batches)
        print(f"instructions {config:<16} {size:>4} {answer:<4} {out[(config, size, answer)]:>10,.0f} per request",
              file=sys.stderr, flush=True)
    conn.close()
    return out


def report_lines(counts: dict) -> list[str]:
    """The README's section: instructions per request, what the floor, the host calls and the
    filter's own code add, and what one host call that hands data to the filter costs."""
    import bench as b

    def k(n):
        return f"{n / 1000:,.0f}k" if n is not None else "–"

    def signed(n):
        return f"{'+' if n >= 0 else '−'}{k(abs(n))}" if n is not None else "–"

    names = dict(b.ALL_CONFIGS)
    # `wasm_calls_read` is reported below the table, as one call's cost.
    present = [c for c in CONFIGS if c != "wasm_calls_read" and any(key[0] == c for key in counts)]
    lines = ["", "**Instructions per request** (bench/instructions.py: Envoy under Valgrind's callgrind, the "
                 "same configurations and bodies, one request after another on one connection; every thread of "
                 "the process, user space only; they do not move with the machine's load, but count no cache "
                 "miss, and a copy counts one instruction per byte)", "",
             "| body, answer | " + " | ".join(names[c].split(" ", 1)[0] for c in present)
             + " | host calls: (5a) − (5) | own code: (6) − (5a) | (6) − (5) |",
             "|---" * (len(present) + 4) + "|"]
    for size, answer in b.KINDS:
        row = {c: counts.get((c, size, answer)) for c in present}

        def diff(x, y, row=row):
            return row[x] - row[y] if row.get(x) and row.get(y) else None

        lines.append(f"| {b.BODY_NAMES[size]}, {answer.upper()} | " + " | ".join(k(row[c]) for c in present)
                     + f" | {signed(diff('wasm_calls', 'wasm_rewrite'))} | {signed(diff('filter_cached', 'wasm_calls'))}"
                     + f" | {signed(diff('filter_cached', 'wasm_rewrite'))} |")
    read, calls = counts.get(("wasm_calls_read", *b.KINDS[0])), counts.get(("wasm_calls", *b.KINDS[0]))
    if read and calls:
        lines += ["", f"One host call more that hands the filter data (a request header read, with (5a)'s calls; "
                      f"{b.BODY_NAMES[b.KINDS[0][0]]}, JSON): {signed(read - calls)} instructions. For each such call "
                      "(header reads, body reads, shared-data reads) Envoy calls into the VM to have the filter "
                      "allocate the memory for the answer. At 130 KB the floor's rewrite copies the body into the "
                      "VM and out again; (6) rewrites nothing here (the alias is the model id), so its own code "
                      "shows below zero there."]
    return lines


def counted_run(configs=None, kinds=None, requests=REQUESTS) -> dict:
    """`measure` on a `bench.Bench` of its own (the upstream, the IdP and the plain Envoys of
    bench.CONFIGS), stopped before it returns."""
    import bench as b

    procs = b.Processes()
    with tempfile.TemporaryDirectory(prefix="csg-instructions-") as workdir:
        runner = None
        try:
            runner = b.Bench(procs, workdir)
            runner.start()
            return measure(runner, configs, kinds, requests)
        finally:
            procs.stop_all()
            if runner is not None:
                runner.signer.stop()


def main():
    if not valgrind():
        sys.exit("valgrind is missing: `make bench` installs it")
    os.environ.setdefault("BENCH_ONLY", ",".join(c for c in CONFIGS if c not in ONE_KIND_ONLY))
    print("\n".join(report_lines(counted_run())))


if __name__ == "__main__":
    main()
