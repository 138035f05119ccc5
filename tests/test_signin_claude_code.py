"""Real Claude Code (`claude -p`) running claude-sso-signin as its apiKeyHelper on a machine with no
browser (as on SSH), against the real OpenID Provider. The "gateway" is a small stand-in that records
the credential it gets and refuses: 401 without one, else 400 (which Claude Code does not retry), so no
Envoy is needed."""
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness.claude import ROOT, run_claude
from tests.harness.idp import LOGIN, OpenIdProvider

HELPER = ROOT / "target" / "debug" / "claude-sso-signin"


class Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        credential = self.headers.get("authorization", "").removeprefix("Bearer").strip()
        Recorder.seen.append(credential)
        # As a gateway would: 401 without a credential, else a 400 that Claude Code does not retry.
        status, kind, message = ((401, "authentication_error", "stand-in: no credential") if not credential
                                 else (400, "invalid_request_error", "stand-in: credential recorded"))
        body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def recorder():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def idp():
    p = OpenIdProvider()
    yield p
    p.stop()


def device_login(idp, env, user):
    """`claude-sso-signin login --device` as typed in a terminal; the code is approved elsewhere."""
    login = subprocess.Popen([str(HELPER), "login", "--device"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    first = login.stderr.readline()
    code = first.split("enter the code ", 1)[1].strip()
    subprocess.run(["node", str(LOGIN), "--issuer", idp.issuer, "--device", code, "--user", user],
                   check=True, timeout=30, capture_output=True)
    _, rest = login.communicate(timeout=60)
    assert login.returncode == 0, first + rest


def test_headless_helper_says_what_to_run_then_works_after_device_login(idp, recorder, tmp_path):
    assert HELPER.exists(), "build it first: cargo build -p claude-sso-signin (make does)"
    env = {"CLAUDE_SSO_ISSUER": idp.issuer, "CLAUDE_SSO_CACHE_DIR": str(tmp_path / "cache")}
    port = recorder.server_address[1]

    run = run_claude(tmp_path, port, helper=str(HELPER), settings_env=env, timeout=90)
    assert run.code == 1
    assert run.seconds < 30, f"took {run.seconds:.1f} s"
    assert "Your apiKeyHelper script is failing" in run.stdout
    exe = HELPER.resolve()  # the helper names itself by its resolved path (`target` may be a symlink)
    want = (f"apiKeyHelper failed: exited 1: claude-sso-signin: not signed in to {idp.issuer}.\n"
            f"Run `{exe} login` in a terminal (on SSH or without a browser: `{exe} login --device`), "
            "then try again.")
    assert want in run.stderr, run.stderr
    assert idp.logins() == 0

    # The person types the command from the message; it finds the issuer in Claude Code's settings.
    device_login(idp, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, "alice")
    started = time.monotonic()
    run = run_claude(tmp_path, port, helper=str(HELPER), settings_env=env, timeout=90)
    assert "stand-in: credential recorded" in run.stdout, run.stdout + run.stderr
    assert time.monotonic() - started < 30
    assert Recorder.seen[-1].startswith("eyJ"), Recorder.seen
    assert idp.logins() == 1
