"""`make bench`'s own parts that need no quiet machine: a broken harness must fail here, in CI, and
not after a quarter of an hour of rounds."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tools")]

import bench  # noqa: E402

EMPTY = ROOT / "target" / "empty-filter" / "wasm32-wasip1" / "release" / "bench_empty_filter.wasm"


def test_the_signature_and_scan_timer_checks_its_known_answers_and_times_every_algorithm():
    """bench/verify-wasm under V8: every known-answer vector right (it raises otherwise), a time for
    each algorithm and cheap refusal, and the body scan of the captured Claude Code body."""
    assert bench.VERIFY.joinpath("target", "wasm32-wasip1", "release", "verify-wasm.wasm").exists(), \
        "make bench-harness builds it"
    times = bench.verify_times()
    algorithms = {alg for alg, _key, _best, _median in times["verify"]}
    assert {"RS256", "PS256", "ES256", "ES384", "EdDSA"} <= algorithms, times["verify"]
    assert all(best > 0 for _alg, _key, best, _median in times["verify"])
    assert len(times["refused"]) >= 4, times["refused"]
    assert len(times["scan"]) == 4 and all(n > 100_000 for _name, n, _best, _median in times["scan"]), times["scan"]


def test_the_benchmarks_filters_are_built():
    assert EMPTY.exists(), "make bench-harness builds the empty and floor filters"


def test_instruction_counts_see_the_filter_and_one_host_call_more(monkeypatch):
    """bench/instructions.py counts what Envoy executes under callgrind: the gateway does more than
    the host calls it makes, and one header read more shows (a harness that counted nothing, or
    another process, or the wrong configuration, would not see them)."""
    import instructions

    assert instructions.valgrind(), "make tools installs valgrind"
    # Only the upstream and one plain Envoy besides the counted ones.
    monkeypatch.setattr(bench, "CONFIGS", [c for c in bench.ALL_CONFIGS if c[0] == "passthrough"])
    counts = instructions.counted_run(["wasm_calls", "wasm_calls_read", "filter_cached"], [("1k", "json")],
                                      requests=30)
    calls, read, gateway = (counts[(c, "1k", "json")] for c in ("wasm_calls", "wasm_calls_read", "filter_cached"))
    # Envoy's own request handling alone is some 200k instructions; the spread between runs a few thousand.
    assert calls > 150_000, counts
    assert read - calls > 4_000, counts
    assert gateway - calls > 20_000, counts
    lines = instructions.report_lines(counts)
    assert any("1 KiB body, JSON" in line for line in lines), lines
