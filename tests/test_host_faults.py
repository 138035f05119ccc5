"""The built filter under a host that is neither Envoy nor nginx and misbehaves (tests/hosts/faults.mjs,
a minimal Proxy-Wasm host in Node's V8, the engine Envoy embeds): every fault fails closed, nothing is
forwarded unchecked, no configuration takes another's keys, and the provider key never reaches a log."""
import json
import subprocess
from pathlib import Path

from tests.harness.envoy import WASM

HOST = Path(__file__).parent / "hosts" / "faults.mjs"


def run(scenario: str) -> dict:
    out = subprocess.run(["node", "--no-warnings", str(HOST), str(WASM), scenario],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "trap" not in result, result["trap"]
    assert result["unimplemented"] == [], "the filter called a host function the host lacks"
    assert not result["secrets_logged"], "the provider key reached a log line"
    return result


def forwarded(request: dict) -> bool:
    return request.get("reply") is None and request.get("upstream_x_api_key") == "sk-provider"


def test_a_clock_that_cannot_be_read_admits_nobody():
    # The clock read as 0 once: every expiry passed, and an expired token was forwarded.
    r = run("clock")["request"]
    assert r["reply"].startswith("503 ") and "could not tell the time" in r["reply"]
    assert not forwarded(r)


def test_request_header_writes_refused_by_the_host_refuse_the_request():
    # They were only logged: the request went on without the provider key, identity or length.
    r = run("headersgone")
    assert r["request"]["reply"].startswith("500 ") and "could not rewrite the request headers" in r["request"]["reply"]
    assert not forwarded(r["request"])
    assert not r["client_authorization_left"]


def test_a_host_without_the_usage_property_gets_the_record_as_a_log_line():
    r = run("noprop")
    assert r["property_attempts"] == 4
    assert r["usage_lines"] == 4, "a usage record was lost"


def test_a_body_ended_by_an_empty_callback_is_read_whole():
    # A host that ends the body with an empty callback of size 0 (the size of that callback, not
    # the running total as Envoy gives) got a 400 "not valid JSON".
    assert forwarded(run("emptyeos")["request"])


def test_nginx_that_does_not_give_the_uri_it_forwards_forwards_nothing():
    # The request was classified by nginx's normalised `:path` (`/v1/messages/batches/..%2F..%2Fmessages`
    # is listed as `/v1/messages`) while nginx forwards the raw URI.
    r = run("ngxnouri")
    assert r["request"]["reply"].startswith("404 "), r["request"]
    assert not forwarded(r["request"])
    assert any("ngx.request_uri" in w for w in r["warnings"]), r["warnings"]
    assert forwarded(r["with_uri"]), "the same request with the URI goes through"
    # nginx answers a refusal known at the headers once the body is in, without copying it into the VM.
    assert r["refused"]["reply"].startswith("400 ") and "not a JWT" in r["refused"]["reply"], r["refused"]
    assert r["refused_body_reads"] == 0


def test_a_host_answering_empty_for_unknown_properties_is_not_taken_for_nginx():
    # The nginx semantics let request headers go on before the body is decided.
    r = run("emptyprop")["request"]
    assert r["headers_action"] == 1, "request headers held until the body is decided"
    assert forwarded(r)


def test_two_configurations_in_one_vm_never_take_each_others_keys():
    # Kong's filter chains, Envoy listeners sharing a VM id: the shared key record had no issuer, so
    # one IdP's keys verified tokens claiming the other's issuer.
    r = run("tworoots")
    assert r["b_forged"]["reply"].startswith("401 ") and not forwarded(r["b_forged"])
    assert r["a_forged"]["reply"].startswith("401 ") and not forwarded(r["a_forged"])
    # The refetch a signature the keys cannot verify may take goes to the configuration's own IdP.
    assert all(c.startswith("idp-b.example") for c in r["b_forged_callouts"]), r["b_forged_callouts"]
    assert all(c.startswith("idp-a.example") for c in r["a_forged_callouts"]), r["a_forged_callouts"]
    assert forwarded(r["b_own"]) and r["b_own"]["upstream_user"] == "bob"
    assert forwarded(r["a_own"]) and r["a_own"]["upstream_user"] == "alice"
    assert r["fetched_by_a"] and all(c.startswith("idp-a.example") for c in r["fetched_by_a"])


def test_a_key_fetch_of_the_old_configuration_does_not_land_in_the_new_one():
    r = run("reconfigure")
    assert r["pending"] == ["idp-a.example/keys"] and r["reconfigured"] == 1
    assert not forwarded(r["b_forged"])
    assert r["b_next_callouts"] and all(c.startswith("idp-b.example") for c in r["b_next_callouts"])


def test_a_host_without_a_timer_still_gets_the_metrics():
    # The per-tier counters are handed over at each tick: a host with no timer never saw them.
    r = run("notick")
    assert r["configured"] == 1
    assert r["forwarded"] == 20
    assert r["requests_counted"] == 21, "every forwarded request is counted"


def test_a_huge_callout_answer_is_refused_without_being_copied_into_the_vm():
    # The whole answer was copied into the VM before its size was checked: 64 MiB of discovery grew
    # the VM by 64 MiB for good (Wasm memory never shrinks), and a large enough one trapped it.
    r = run("hugekeys")
    assert r["grown_mib"] < 4, f"the VM grew by {r['grown_mib']} MiB"
    assert any("over the 524288 bytes a key document may have" in w for w in r["warnings"]), r["warnings"]
    assert forwarded(r["request"]), "the keys load once the IdP answers sanely"
